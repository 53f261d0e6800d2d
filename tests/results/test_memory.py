"""Must-show 3: a 200 MB binary result is stored and read back with peak memory under 64 MB.

Measured in a child process (`tests/results/memory_probe.py`): tracemalloc's peak of Python
allocations during the round trip, and the rise of the process's peak RSS above its RSS before
it (VmHWM). A control run that reads the content whole shows the same measurement does see it.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.testing import ThrowawayPostgres
from tests.processes import run_python

MB = 1024 * 1024
LIMIT = 64 * MB


def probe(url: str, mib: int, *flags: str) -> dict[str, object]:
    done = run_python(["-m", "tests.results.memory_probe", str(mib), *flags], database_url=url, timeout=900)
    assert done.returncode == 0, done.stderr
    measured: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


@pytest.mark.commits
async def test_a_200_mb_binary_round_trips_in_under_64_mb(
    pg: ThrowawayPostgres, fresh_database: DatabaseConfig, engine: AsyncEngine
) -> None:
    url = pg.server.url(fresh_database.database or "")
    measured = probe(url, 200)
    print("200 MiB round trip:", measured)  # the numbers, for -s runs and the report
    assert measured["size"] == measured["received"] == 200 * MB and measured["sha256_ok"] is True
    assert measured["chunked"] is True
    peak, rss = measured["tracemalloc_peak"], measured["rss_peak_growth"]
    assert isinstance(peak, int) and isinstance(rss, int)
    assert peak < LIMIT and rss < LIMIT
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT size_bytes, chunks FROM results WHERE kind = 'binary' ORDER BY size_bytes")
            )
        ).all()
        assert [tuple(r) for r in stored][-1] == (200 * MB, 200)

    # The control: the same measurement, reading 96 MiB back whole, sees it.
    whole = probe(url, 96, "--whole")
    print("96 MiB read whole:", whole)
    assert isinstance(whole["tracemalloc_peak"], int) and whole["tracemalloc_peak"] > 96 * MB
    assert isinstance(whole["rss_peak_growth"], int) and whole["rss_peak_growth"] > 96 * MB
