"""No call is refused for lack of a price: it is stored unpriced and counted as such everywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger, SyncAICallLogger, fold_rollups, rebuild_rollups
from persistence.ai_calls.batch import BatchLogger
from persistence.ai_calls.reconciliation import reconcile
from persistence.ai_calls.sources import UsageAmount, VendorUsage
from persistence.config import DatabaseConfig
from persistence.errors import IntegrityViolation, translate
from persistence.observe.health import health
from tests.ai_calls.conftest import T0, scalar
from tests.ai_calls.test_stats import raw_stats

# A provider/model no price row covers (not a real model: a maintained price book may know those).
NOBODY = {"provider": "acme-ai", "model": "nobody-prices-1"}
UNPRICED_COLUMNS = "cost_usd, computed_cost_usd, cost_source, price_id"
# The rollups and the ledger, summed over everything: equal whenever the rollups are exact.
SUMS = "count(*), coalesce(sum(cost_usd), 0), sum(total_tokens), count(*) FILTER (WHERE cost_usd IS NULL)"
ROLLUP_SUMS = "sum(calls), sum(cost_usd), sum(total_tokens), sum(unpriced_calls)"


def unpriced_call(i: int, **overrides: Any) -> dict[str, Any]:
    return {
        **NOBODY,
        "input_tokens": 1000 + i,
        "output_tokens": 100,
        "request_id": f"unpriced-{i}",
        "created_at": T0 + timedelta(minutes=i),
        **overrides,
    }


async def row_of(engine: AsyncEngine, call_id: int) -> tuple[Any, ...]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(f"SELECT {UNPRICED_COLUMNS} FROM ai_calls WHERE id = :id"), {"id": call_id}
            )
        ).one()
    return tuple(row)


async def rollups_equal_the_ledger(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = (await conn.execute(text(f"SELECT {SUMS} FROM ai_calls"))).one()
        for table in ("ai_call_model_hourly", "ai_call_usage_hourly"):
            folded = (await conn.execute(text(f"SELECT {ROLLUP_SUMS} FROM {table}"))).one()
            assert tuple(folded) == tuple(raw), table


async def test_log_call_stores_an_unpriced_call_and_get_stats_counts_it(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    call_id = await logger.log_call(**unpriced_call(0))
    assert await row_of(engine, call_id) == (None, None, "unpriced", None)
    # A retry of the same key is the same row, unpriced or not.
    assert await logger.log_call(**unpriced_call(0)) == call_id
    # A cost the caller gives is kept (provided), even with no price to compare it with.
    given = await logger.log_call(**unpriced_call(1, cost_usd=Decimal("0.25")))
    assert await row_of(engine, given) == (Decimal("0.25"), None, "provided", None)
    stats = await logger.get_stats(T0, T0 + timedelta(hours=1))
    assert stats == await raw_stats(engine, T0, T0 + timedelta(hours=1))
    assert (stats["total_calls"], stats["total_cost_usd"], stats["total_tokens"]) == (
        2,
        Decimal("0.25"),
        2201,
    )
    assert (stats["unpriced_calls"], stats["unpriced_tokens"]) == (1, 1100)
    assert stats["by_provider"]["acme-ai"] == {
        "calls": 2,
        "cost": Decimal("0.25"),
        "tokens": 2201,
        "unpriced_calls": 1,
        "unpriced_tokens": 1100,
    }
    # Whole hours come from the rollups once folded: still exact.
    await logger.fold_rollups()
    await rollups_equal_the_ledger(engine)
    assert await logger.get_stats(T0 - timedelta(days=1), T0 + timedelta(days=1)) == stats
    assert await scalar(engine, "SELECT count(*) FROM ai_calls") == 2


async def test_log_batch_stores_unpriced_calls_beside_priced_ones(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    priced = {
        "provider": "anthropic",
        "model": "claude-sonnet-4-20250514",
        "input_tokens": 1000,
        "output_tokens": 100,
        "request_id": "priced-0",
        "created_at": T0,
    }
    batch = [unpriced_call(i) for i in range(3)] + [priced]
    assert await logger.log_batch(batch) == 4
    assert await logger.log_batch(batch) == 0  # a retried batch: keys make it a no-op
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(f"SELECT request_id, {UNPRICED_COLUMNS} FROM ai_calls ORDER BY request_id")
            )
        ).all()
    assert [r.request_id for r in rows] == ["priced-0", "unpriced-0", "unpriced-1", "unpriced-2"]
    assert rows[0].cost_source == "computed" and rows[0].cost_usd > 0 and rows[0].price_id is not None
    assert [tuple(r[1:]) for r in rows[1:]] == [(None, None, "unpriced", None)] * 3
    # Pending (unfolded) batch rows, then folded rollups, then a rebuild: all exact.
    stats = await logger.get_stats(T0, T0 + timedelta(hours=1))
    assert stats == await raw_stats(engine, T0, T0 + timedelta(hours=1))
    assert (stats["unpriced_calls"], stats["unpriced_tokens"]) == (3, 1100 + 1101 + 1102)
    assert await fold_rollups(engine) == 4
    await rollups_equal_the_ledger(engine)
    await rebuild_rollups(engine, T0, T0 + timedelta(hours=1))
    await rollups_equal_the_ledger(engine)
    assert await logger.get_stats(T0, T0 + timedelta(hours=1)) == stats


async def test_one_hour_writes_without_a_one_hour_price_are_unpriced_not_priced_at_five_minutes(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO vendor_prices (provider, model, input_per_mtok, output_per_mtok, cache_read_per_mtok, "
                "cache_write_per_mtok, reasoning_per_mtok, effective_from) "
                "VALUES ('acme-ai', 'no-1h', 3, 15, 0.3, 3.75, 15, '2026-01-01Z')"
            )
        )
    await logger.reload_prices()
    base: dict[str, Any] = {
        "provider": "acme-ai",
        "model": "no-1h",
        "input_tokens": 100,
        "output_tokens": 10,
        "created_at": T0,
    }
    five = await logger.log_call(**base, cache_write_tokens=1000, request_id="5m")
    hour = await logger.log_call(**base, cache_write_1h_tokens=1000, request_id="1h")
    # 100*3 + 10*15 + 1000*3.75 = 4200 per million
    assert await row_of(engine, five) == (
        Decimal("0.004200"),
        Decimal("0.0042"),
        "computed",
        await price_id(engine),
    )
    assert await row_of(engine, hour) == (None, None, "unpriced", None)
    assert await logger.log_batch([{**base, "cache_write_1h_tokens": 7, "request_id": "1h-batch"}]) == 1
    assert await scalar(engine, "SELECT count(*) FROM ai_calls WHERE cost_source = 'unpriced'") == 2


async def price_id(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "SELECT id FROM vendor_prices WHERE model = 'no-1h'"))


async def test_the_ledger_refuses_a_call_without_a_cost_that_is_not_marked_unpriced(
    engine: AsyncEngine,
) -> None:
    """By hand too: NULL cost means unpriced, and unpriced means no cost, computed cost or price row."""
    insert = (
        "INSERT INTO ai_calls (provider, model, input_tokens, output_tokens, cost_usd, cost_source, price_id) "
        "VALUES ('acme-ai', 'm', 1, 1, {}, '{}', {})"
    )
    for cost, source, price in (
        ("NULL", "provided", "NULL"),
        ("0.1", "unpriced", "NULL"),
        ("NULL", "unpriced", "7"),
    ):
        with pytest.raises(DBAPIError) as caught:
            async with engine.begin() as conn:
                await conn.execute(text(insert.format(cost, source, price)))
        error = translate(caught.value)
        assert (
            isinstance(error, IntegrityViolation) and error.constraint == "ck_ai_calls_unpriced_has_no_cost"
        )
    async with engine.begin() as conn:
        await conn.execute(text(insert.format("NULL", "unpriced", "NULL")))


async def test_health_counts_the_unpriced_calls_of_the_last_day(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    before = await health(engine)
    assert (before.unpriced_calls_24h, before.unpriced_tokens_24h) == (0, 0)
    now = datetime.now(UTC)
    await logger.log_call(**unpriced_call(0, created_at=now))
    await logger.log_call(**unpriced_call(1, created_at=now - timedelta(days=2)))  # too old to count
    await logger.log_call(**unpriced_call(2, created_at=now, cost_usd=Decimal("0.1")))  # provided: priced
    report = await health(engine)
    assert report.connected
    assert (report.unpriced_calls_24h, report.unpriced_tokens_24h) == (1, 1100)
    assert report.as_dict()["unpriced_calls_24h"] == 1


class _Vendor:
    """A metering vendor that billed everything, our unpriced call included."""

    name = "unpriced-test"

    async def fetch(self, start: datetime, end: datetime) -> VendorUsage:
        return VendorUsage(2, Decimal("0.75"), {"acme-ai": UsageAmount(2, Decimal("0.75"))})


async def test_reconciliation_states_how_many_calls_and_tokens_it_could_not_price(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    await logger.log_call(**unpriced_call(0))
    await logger.log_call(**unpriced_call(1, cost_usd=Decimal("0.25")))
    result = await reconcile(engine, _Vendor(), T0, T0 + timedelta(days=1))
    assert (result.ours_calls, result.ours_cost_usd, result.ours_tokens) == (2, Decimal("0.25"), 2201)
    assert (result.unpriced_calls, result.unpriced_tokens) == (1, 1100)
    assert result.by_provider["acme-ai"]["unpriced_calls"] == 1
    total, provider = result.lines
    assert (total.ours_unpriced_calls, provider.ours_unpriced_calls) == (1, 1)
    assert provider.status == "amount_mismatch"  # the unpriced call's cost is missing from ours
    out = result.to_json()
    assert (out["ours"]["unpriced_calls"], out["ours"]["unpriced_tokens"]) == (1, 1100)
    async with engine.connect() as conn:
        saved = (
            await conn.execute(
                text("SELECT unpriced_calls, unpriced_tokens FROM reconciliation_reports WHERE id = :id"),
                {"id": result.id},
            )
        ).one()
    assert tuple(saved) == (1, 1100)


async def test_batch_logger_writes_an_unpriced_call_instead_of_rejecting_it(engine: AsyncEngine) -> None:
    async with AICallLogger(engine) as log:
        batcher = BatchLogger(log, batch_size=10, flush_interval=60)
        for i in range(3):
            await batcher.log(unpriced_call(i))
        stats = await batcher.close()
    assert (stats.written, stats.rejected) == (3, 0)
    assert await scalar(engine, "SELECT count(*) FROM ai_calls WHERE cost_source = 'unpriced'") == 3


@pytest.mark.commits
def test_the_sync_logger_logs_and_counts_an_unpriced_call(fresh_database: DatabaseConfig) -> None:
    with SyncAICallLogger(fresh_database) as log:
        call_id = log.log_call(**unpriced_call(0))
        assert log.log_call(**unpriced_call(0)) == call_id
        stats = log.get_stats(T0, T0 + timedelta(hours=1))
    assert (stats["total_calls"], stats["unpriced_calls"], stats["total_cost_usd"]) == (1, 1, Decimal(0))
