"""`persistence prices reprice`, run as a user would: one summary line (or JSON), nothing on stderr."""

from __future__ import annotations

import json
import subprocess

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger
from persistence.config import DatabaseConfig
from persistence.testing import ThrowawayPostgres
from tests.ai_calls.conftest import T0
from tests.ai_calls.test_unpriced import unpriced_call
from tests.processes import run_python


def persistence(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python(["-m", "persistence", *args], database_url=url)


@pytest.mark.commits
async def test_reprice_prices_what_it_can_and_says_so(
    pg: ThrowawayPostgres, fresh_database: DatabaseConfig, engine: AsyncEngine
) -> None:
    url = pg.server.url(fresh_database.database or "")
    async with AICallLogger(engine) as log:
        await log.log_call(**unpriced_call(0))
        await log.log_call(**unpriced_call(1, model="nobody-prices-2"))

    none = persistence(url, "prices", "reprice", "--since", "2026-03-10")
    assert (none.returncode, none.stderr) == (0, ""), none.stderr
    assert none.stdout == (
        "repriced 0 call(s) (0 tokens, 0 USD) since 2026-03-10T00:00:00+00:00; "
        "2 call(s) (2201 tokens) still without a price\n"
    )

    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO vendor_prices (provider, model, input_per_mtok, output_per_mtok, cache_read_per_mtok, "
                "cache_write_per_mtok, reasoning_per_mtok, effective_from) "
                "VALUES ('acme-ai', 'nobody-prices-1', 2, 8, 0, 0, 0, '2026-01-01Z')"
            )
        )
    until = (T0.replace(hour=23)).isoformat()
    done = persistence(
        url,
        "prices",
        "reprice",
        "--since",
        "2026-03-10T00:00",
        "--until",
        until,
        "--provider",
        "acme-ai",
        "--json",
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    report = json.loads(done.stdout)
    assert (report["repriced"], report["cost_usd"], report["still_unpriced"]) == (1, "0.002800", 1)
    assert (report["until"], report["provider"], report["model"]) == (until, "acme-ai", None)

    again = persistence(url, "prices", "reprice", "--since", "2026-03-10", "--model", "nobody-prices-1")
    assert (again.returncode, again.stderr) == (0, ""), again.stderr
    assert (
        again.stdout.startswith("repriced 0 call(s)") and "0 call(s) (0 tokens) still without" in again.stdout
    )


def test_reprice_refuses_a_missing_or_bad_window(pg: ThrowawayPostgres) -> None:
    url = pg.server.url("postgres")
    missing = persistence(url, "prices", "reprice")
    assert missing.returncode == 2 and "--since" in missing.stderr and missing.stdout == ""
    bad = persistence(url, "prices", "reprice", "--since", "yesterday")
    assert bad.returncode == 2 and "not an ISO date/time: 'yesterday'" in bad.stderr
    inverted = persistence(url, "prices", "reprice", "--since", "2026-03-10", "--until", "2026-03-09")
    assert (inverted.returncode, inverted.stdout, inverted.stderr) == (
        2,
        "",
        "error: --until must be after --since\n",
    )
