"""A user's project with nothing but the conftest line: the README example runs as written.

Each test runs pytest in a subprocess on a throwaway project (its own test session, its own
PostgreSQL from the same `PG_BINDIR`), without any pytest-asyncio settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

ISOLATION_PAIR = """

from sqlalchemy import text


async def test_a_writes_through_every_path(engine):
    await create(ClaimFactory, external_id="leak-probe")
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO claims (external_id, content) VALUES ('leak-probe-2', 'x')"))


async def test_b_sees_nothing_of_it(engine):
    assert await ClaimRepository(engine).count(external_id__in=["leak-probe", "leak-probe-2"]) == 0
"""


def readme_example() -> tuple[str, str]:
    """The conftest.py and test module of the README's "Testing your own code" example."""
    section = README.read_text().split("## Testing your own code", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    conftest, test_module = code.split("# test_claims.py\n")
    return conftest, test_module


def test_the_readme_example_runs_with_only_the_conftest_line(pytester: pytest.Pytester) -> None:
    conftest, test_module = readme_example()
    assert conftest.strip().splitlines()[-1] == 'pytest_plugins = ["persistence.testing.pytest_plugin"]'
    pytester.makeini("[pytest]\n")  # a project root with no settings at all
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_claims=test_module + ISOLATION_PAIR)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_settings_that_cannot_work_fail_with_one_sentence(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_test_loop_scope = function\n")
    pytester.makeconftest('pytest_plugins = ["persistence.testing.pytest_plugin"]\n')
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*persistence's pytest plugin needs pytest-asyncio configured with asyncio_mode = auto*"
            "asyncio_default_test_loop_scope is set to 'function'*"
        ]
    )
