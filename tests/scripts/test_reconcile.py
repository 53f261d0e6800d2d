"""`python scripts/reconcile.py` (seed 000's weekly cron) and `persistence grant-reader`, end to end."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import DatabaseConfig
from persistence.testing import ThrowawayPostgres
from tests.ai_calls.fake_vendor import API_KEY, FakeVendor, fake_vendor
from tests.ai_calls.ledger_rows import scalar, seed_ledger, vendor_payload
from tests.processes import ROOT, run_python

PERIOD = ["--end", "2026-11-04", "--days", "3"]
_OURS = ("DB_", "DATABASE_URL", "METERING_", "REVENIUM_", "RECONCILIATION_")


def run(
    url: str, *args: str, extra: dict[str, str] | None = None, script: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [str(ROOT / "scripts" / "reconcile.py")] if script else ["-m", "persistence"]
    return run_python([*command, *args], database_url=url, strip=_OURS, extra=extra)


@pytest.fixture
def vendor() -> Iterator[FakeVendor]:
    with fake_vendor() as v:
        yield v


def db_url(pg: ThrowawayPostgres, config: DatabaseConfig) -> str:
    assert config.database is not None
    return pg.server.url(config.database)


@pytest.mark.commits
async def test_script_prints_a_table_and_exits_non_zero_on_fail(
    migrated: ThrowawayPostgres, fresh_database: DatabaseConfig, fresh_engine: AsyncEngine, vendor: FakeVendor
) -> None:
    seeded = await seed_ledger(fresh_engine)
    url = db_url(migrated, fresh_database)
    env = {"METERING_API_URL": vendor.url, "METERING_API_KEY": API_KEY}

    vendor.usage = vendor_payload(seeded, short_pct=1)
    ok = run(url, *PERIOD, extra=env)
    assert ok.returncode == 0, ok.stderr
    assert "status PASS" in ok.stdout and "calls variance 1.0000%" in ok.stdout
    assert [line.split()[:2] for line in ok.stdout.splitlines() if line.startswith("provider")] == [
        ["provider", "anthropic"],
        ["provider", "openai"],
    ]
    assert API_KEY not in ok.stdout + ok.stderr
    assert "ledger: postgresql+asyncpg://" in ok.stderr and f"/{fresh_database.database}" in ok.stderr

    vendor.usage = vendor_payload(seeded, short_pct=3)
    failed = run(url, *PERIOD, extra=env)
    assert failed.returncode == 1, failed.stderr
    assert "status FAIL" in failed.stdout
    assert "RECONCILIATION FAILED: 3.0000% call variance" in failed.stderr
    assert await scalar(fresh_engine, "SELECT count(*) FROM reconciliation_reports") == 1
    assert await scalar(fresh_engine, "SELECT status FROM reconciliation_reports") == "FAIL"

    # --json, a stricter-than-default gate from the environment, and the seed's Revenium key name.
    vendor.usage = vendor_payload(seeded, short_pct=1)
    strict = run(
        url,
        *PERIOD,
        "--json",
        extra={
            "METERING_API_URL": vendor.url,
            "REVENIUM_API_KEY": API_KEY,
            "RECONCILIATION_THRESHOLD_PCT": "0.5",
        },
    )
    assert strict.returncode == 1, strict.stderr
    report = json.loads(strict.stdout)
    assert report["status"] == "FAIL" and report["threshold_pct"] == "0.5"
    assert Decimal(report["ours"]["total_cost_usd"]) == seeded.cost


@pytest.mark.commits
async def test_script_with_an_export_file_and_bad_settings(
    migrated: ThrowawayPostgres, fresh_database: DatabaseConfig, fresh_engine: AsyncEngine, tmp_path: Path
) -> None:
    seeded = await seed_ledger(fresh_engine)
    url = db_url(migrated, fresh_database)
    export = tmp_path / "usage.json"
    export.write_text(json.dumps(vendor_payload(seeded, short_pct=0), default=str))
    ok = run(url, *PERIOD, "--source-file", str(export), "--threshold", "1")
    assert ok.returncode == 0, ok.stderr
    assert "source file:usage.json" in ok.stdout

    missing = run(url, *PERIOD)
    assert missing.returncode == 2 and "METERING_API_URL" in missing.stderr
    no_key = run(url, *PERIOD, "--source-url", "http://127.0.0.1:9")
    assert no_key.returncode == 2 and "METERING_API_KEY" in no_key.stderr
    bad_threshold = run(url, *PERIOD, "--threshold", "-3")
    assert bad_threshold.returncode == 2


@pytest.mark.commits
def test_grant_reader_command(migrated: ThrowawayPostgres, fresh_database: DatabaseConfig) -> None:
    url = db_url(migrated, fresh_database)
    password = "cli-reader-pw-0b9d7a"
    refused = run(url, "grant-reader", script=False)
    assert refused.returncode == 2 and "RECONCILIATION_READER_PASSWORD" in refused.stderr
    for _ in range(2):  # idempotent
        done = run(
            url,
            "grant-reader",
            "--role",
            "recon_cli_reader",
            extra={"RECONCILIATION_READER_PASSWORD": password},
            script=False,
        )
        assert done.returncode == 0, done.stderr
        assert password not in done.stdout + done.stderr
    assert fresh_database.database is not None
    grants = migrated.server.psql(
        "SELECT table_name || ':' || privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = 'recon_cli_reader' ORDER BY 1;",
        database=fresh_database.database,
    ).split()
    assert grants == ["ai_calls:SELECT", "reconciliation_reports:SELECT"]
