"""`python scripts/seed_database.py` end to end: migrates, seeds, summarises, and is idempotent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from persistence.testing import ThrowawayPostgres
from tests.processes import ROOT, run_python

SIZES = ["--claims", "12", "--ai-calls", "150", "--platform-events", "400", "--agent-executions", "90",
         "--cost-events", "40", "--days", "3"]  # fmt: skip
EVENT_TABLES = ("analytics.platform_events", "analytics.tenant_cost_events", "analytics.agent_executions")
SMALL = [*SIZES, "--as-of", "2026-11-01"]


def run_script(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python([str(ROOT / "scripts" / "seed_database.py"), *args], database_url=url, timeout=300)


def summary(stdout: str) -> dict[str, tuple[int, int, int]]:
    """table -> (before, inserted, rows) from the printed summary."""
    rows: dict[str, tuple[int, int, int]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            rows[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return rows


def test_help_describes_the_options() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "seed_database.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--seed", "--claims", "--ai-calls", "--platform-events", "--agent-executions", "--cost-events",
                 "--days", "--reset", "--quiet"):  # fmt: skip
        assert flag in out.stdout
    assert "Idempotent" in out.stdout


@pytest.mark.commits
def test_migrates_an_empty_database_then_seeds_idempotently(pg: ThrowawayPostgres) -> None:
    name = pg.empty_database("seed_script_probe")
    url = pg.server.url(name)
    try:
        first = run_script(url, *SMALL)
        assert first.returncode == 0, first.stderr
        assert "schema: migrated empty -> " in first.stderr
        assert "seeded as of 2026-11-01 00:00 UTC" in first.stderr
        counts = summary(first.stdout)
        assert "total" in counts and counts["total"][1] > 0
        assert all(rows > 0 for table, (_, _, rows) in counts.items()), counts
        # Seed 004's events are in the summary: the planned ones, and one cost event per AI call.
        assert [counts[t][2] for t in EVENT_TABLES] == [400, 40 + 150, 90]

        # Without --as-of the run reuses the recorded date (not today), so nothing is new.
        second = run_script(url, *SIZES)
        assert second.returncode == 0, second.stderr
        assert "seeded as of 2026-11-01 00:00 UTC" in second.stderr
        again = summary(second.stdout)
        assert {t: c[2] for t, c in again.items()} == {t: c[2] for t, c in counts.items()}
        assert all(inserted == 0 for _, inserted, _ in again.values())

        other_seed = run_script(url, *SIZES, "--seed", "99")
        assert other_seed.returncode == 2
        assert (
            "error: database was seeded with seed=42 as_of=2026-11-01; pass --reset to reseed with seed=99"
            in other_seed.stderr
        )
        assert "Traceback" not in other_seed.stderr
        assert summary(other_seed.stdout) == {}

        reset = run_script(url, *SMALL, "--seed", "99", "--reset")
        assert reset.returncode == 0, reset.stderr
        after_reset = summary(reset.stdout)
        assert all(before == 0 for before, _, _ in after_reset.values())
        assert after_reset["claims"] == counts["claims"]
        assert after_reset["ai_calls"] == counts["ai_calls"]
        assert all(after_reset[t] == counts[t] for t in EVENT_TABLES)
    finally:
        pg.drop(name)


def test_bad_sizes_are_rejected_before_touching_the_database() -> None:
    out = run_script("postgresql://nobody@127.0.0.1:1/none", "--claims", "-5")
    assert out.returncode == 2
    assert "error:" in out.stderr and "claims" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_database_is_a_clear_error() -> None:
    out = run_script("postgresql://someone:topsecret-pw@127.0.0.1:1/none", *SMALL)
    assert out.returncode == 1
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/none" in out.stderr
    assert "topsecret-pw" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
