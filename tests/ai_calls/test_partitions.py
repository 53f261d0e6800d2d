"""Monthly partitions: what the migration leaves, the maintenance command, lock_timeout."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence import cli
from persistence.ai_calls import AICallLogger
from persistence.ai_calls.partitions import add_months, maintain_partitions, partition_months
from persistence.config import DatabaseConfig
from persistence.errors import TransientError
from persistence.testing import ThrowawayPostgres


def test_add_months() -> None:
    assert add_months(date(2026, 11, 1), 2) == date(2027, 1, 1)
    assert add_months(date(2026, 1, 1), -1) == date(2025, 12, 1)


async def test_the_migration_leaves_this_and_next_month_and_a_default(engine: AsyncEngine) -> None:
    months, default = await partition_months(engine)
    this_month = datetime.now(UTC).date().replace(day=1)
    assert {this_month, add_months(this_month, 1)} <= set(months)
    assert default


async def test_rows_go_to_their_month_or_the_default(connection: AsyncConnection) -> None:
    now = datetime.now(UTC)
    far = datetime(2099, 5, 5, tzinfo=UTC)
    for at in (now, far):
        await connection.execute(
            text(
                "INSERT INTO ai_calls (created_at, provider, model, input_tokens, output_tokens, cost_usd) "
                "VALUES (:t, 'openai', 'gpt-4o', 1, 1, 0)"
            ),
            {"t": at},
        )
    result = await connection.execute(text("SELECT created_at, tableoid::regclass::text FROM ai_calls"))
    rows: dict[datetime, str] = {at: str(table) for at, table in result}
    assert rows[now] == f"ai_calls_p{now:%Y_%m}"
    assert rows[far] == "ai_calls_default"


async def test_maintenance_creates_moves_drops_and_dry_runs(engine: AsyncEngine) -> None:
    # Far in the future, so the months the migration made (around today) do not interfere.
    today = date(2099, 1, 15)
    times = [
        datetime(2098, 9, 3, tzinfo=UTC),
        datetime(2098, 12, 31, 23, tzinfo=UTC),
        datetime(2099, 2, 2, tzinfo=UTC),
        datetime(2098, 8, 15, tzinfo=UTC),  # no month is ever made for it: stays in the default
    ]
    async with AICallLogger(engine) as log:
        for i, at in enumerate(times):
            await log.log_call(provider="openai", model="gpt-4o", input_tokens=10, output_tokens=5,
                               cost_usd=Decimal("0.01"), request_id=f"r{i}", created_at=at)  # fmt: skip
        await log.fold_rollups()
    before = await partition_months(engine)
    dry = await maintain_partitions(engine, ahead=2, retention_months=3, dry_run=True, today=today)
    assert dry.created == [date(2099, 1, 1), date(2099, 2, 1), date(2099, 3, 1)]
    assert dry.dropped == [m for m in before[0] if m < date(2098, 10, 1)]
    assert await partition_months(engine) == before  # nothing changed

    await maintain_partitions(engine, ahead=2, today=today)
    await maintain_partitions(engine, ahead=0, today=date(2098, 9, 10))
    months, default = await partition_months(engine)
    assert {date(2098, 9, 1), date(2099, 1, 1), date(2099, 2, 1), date(2099, 3, 1)} <= set(months) and default

    async def where() -> dict[str, str]:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT request_id, tableoid::regclass::text FROM ai_calls"))
            return {str(r): str(t) for r, t in rows}

    # Rows that sat in the default partition moved into the months created for them.
    assert await where() == {
        "r0": "ai_calls_p2098_09", "r1": "ai_calls_default", "r2": "ai_calls_p2099_02", "r3": "ai_calls_default"
    }  # fmt: skip

    # Retention: months that ended before 2098-10 go, with their calls' keys; the rollups stay. The
    # older call still in the default partition keeps its row and its key.
    dropped = await maintain_partitions(engine, ahead=0, retention_months=3, today=today)
    assert date(2098, 9, 1) in dropped.dropped and dropped.keys_deleted == 1
    assert await where() == {"r1": "ai_calls_default", "r2": "ai_calls_p2099_02", "r3": "ai_calls_default"}
    async with engine.connect() as conn:
        keys = (await conn.execute(text("SELECT count(*) FROM ai_call_keys"))).scalar()
        rolled = (await conn.execute(text("SELECT sum(calls) FROM ai_call_model_hourly"))).scalar()
    assert keys == 3 and rolled == 4


async def test_dropping_a_month_folds_its_pending_batches_first(engine: AsyncEngine) -> None:
    await maintain_partitions(engine, ahead=0, today=date(2097, 3, 1))
    at = datetime(2097, 3, 9, 10, 30, tzinfo=UTC)
    calls = [{"provider": "openai", "model": "gpt-4o", "input_tokens": 10 + i, "output_tokens": 5,
              "cost_usd": Decimal("0.01"), "request_id": f"old-{i}", "created_at": at} for i in range(40)]  # fmt: skip
    async with AICallLogger(engine, fold_every=None) as log:
        assert await log.log_batch(calls) == 40  # pending: not in the rollups yet
    report = await maintain_partitions(engine, ahead=0, retention_months=2, today=date(2097, 7, 1))
    assert date(2097, 3, 1) in report.dropped
    async with engine.connect() as conn:
        left = (
            await conn.execute(text("SELECT count(*) FROM ai_calls WHERE created_at = :t"), {"t": at})
        ).scalar()
        rolled = (
            await conn.execute(
                text("SELECT sum(calls), sum(input_tokens) FROM ai_call_model_hourly WHERE hour = :h"),
                {"h": at.replace(minute=0)},
            )
        ).one()
    assert left == 0
    assert tuple(rolled) == (40, sum(10 + i for i in range(40)))


@pytest.mark.commits
async def test_ddl_gives_up_after_lock_timeout(engine: AsyncEngine) -> None:
    await maintain_partitions(engine, ahead=0, today=date(2024, 1, 1))
    async with engine.connect() as holder:
        await holder.execute(text("SELECT count(*) FROM ai_calls"))  # holds ACCESS SHARE until rollback
        with pytest.raises(TransientError) as info:
            await asyncio.wait_for(
                maintain_partitions(
                    engine, ahead=0, retention_months=1, lock_timeout_ms=100, today=date(2026, 1, 1)
                ),
                timeout=30,
            )
        assert info.value.sqlstate == "55P03"
        await holder.rollback()


@pytest.mark.commits
async def test_cli_partitions_dry_run(
    migrated: ThrowawayPostgres, fresh_database: DatabaseConfig, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert fresh_database.database is not None
    monkeypatch.setenv("DATABASE_URL", migrated.server.url(fresh_database.database))
    for name in ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert await asyncio.to_thread(cli.main, ["partitions", "--ahead", "24", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would create:" in out and "ai_calls partitions:" in out
    months, _ = await partition_months_of(migrated, fresh_database)
    assert len(months) < 24


async def partition_months_of(pg: ThrowawayPostgres, config: DatabaseConfig) -> tuple[list[date], bool]:
    from persistence.engine import build_engine

    engine = build_engine(config, pooled=False)
    try:
        return await partition_months(engine)
    finally:
        await engine.dispose()


@pytest.mark.commits
async def test_cli_rollups_fold_reports_the_calls_folded(
    migrated: ThrowawayPostgres, fresh_database: DatabaseConfig, engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert fresh_database.database is not None
    monkeypatch.setenv("DATABASE_URL", migrated.server.url(fresh_database.database))
    for name in ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    calls = [{"provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1,
              "cost_usd": Decimal("0.01"), "request_id": f"cli-{i}"} for i in range(7)]  # fmt: skip
    async with AICallLogger(engine, fold_every=None) as log:
        await log.log_batch(calls)
    assert await asyncio.to_thread(cli.main, ["rollups", "fold"]) == 0
    assert await asyncio.to_thread(cli.main, ["rollups", "fold"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "folded the usage of 7 calls into the hourly rollups",
        "folded the usage of 0 calls into the hourly rollups",
    ]
