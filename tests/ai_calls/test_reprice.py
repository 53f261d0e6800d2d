"""`reprice_calls`: unpriced calls priced once a price exists, the rollups following exactly."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import RepriceReport, reprice_calls
from persistence.ai_calls import AICallLogger, fold_rollups, rebuild_rollups
from persistence.ai_calls.rollups import FOLD, ROLLUP_LOCK
from persistence.errors import ValidationError
from tests.ai_calls.conftest import T0, scalar
from tests.ai_calls.test_stats import raw_stats
from tests.ai_calls.test_unpriced import NOBODY, unpriced_call

# Per (hour, provider, model): the ledger's figures and the rollups' (folded) figures.
_MEASURES = "calls, cost, computed, tokens, unpriced, unpriced_tokens"
RAW_BY_HOUR = """
SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AS hour, provider, model, count(*) AS calls,
       coalesce(sum(cost_usd), 0) AS cost, sum(computed_cost_usd) AS computed, sum(total_tokens) AS tokens,
       count(*) FILTER (WHERE cost_source = 'unpriced') AS unpriced,
       coalesce(sum(total_tokens) FILTER (WHERE cost_source = 'unpriced'), 0) AS unpriced_tokens
  FROM ai_calls GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
ROLLUP_BY_HOUR = """
SELECT hour AT TIME ZONE 'UTC', provider, model, sum(calls), sum(cost_usd), sum(computed_cost_usd),
       sum(total_tokens), sum(unpriced_calls), sum(unpriced_tokens)
  FROM {table} GROUP BY 1, 2, 3 HAVING sum(calls) > 0 ORDER BY 1, 2, 3
"""


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def assert_rollups_equal_a_raw_scan(engine: AsyncEngine) -> None:
    raw = await rows(engine, RAW_BY_HOUR)
    assert raw
    for table in ("ai_call_model_hourly", "ai_call_usage_hourly"):
        assert await rows(engine, ROLLUP_BY_HOUR.format(table=table)) == raw, table


async def add_price(engine: AsyncEngine, model: str, inp: str, out: str, since: datetime, **kw: Any) -> int:
    provider = kw.pop("provider", NOBODY["provider"])
    until = kw.pop("until", None)
    async with engine.begin() as conn:
        price_id = await conn.scalar(
            text(
                "INSERT INTO vendor_prices (provider, model, input_per_mtok, output_per_mtok, cache_read_per_mtok, "
                "cache_write_per_mtok, reasoning_per_mtok, effective_from, effective_to) "
                "VALUES (:p, :m, :i, :o, 0.1, 1, :o, :f, :t) RETURNING id"
            ),
            {"p": provider, "m": model, "i": Decimal(inp), "o": Decimal(out), "f": since, "t": until},
        )
    return int(price_id)


async def test_reprice_prices_unpriced_calls_and_the_rollups_follow(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    # Unpriced calls on every path to the rollups: per-call deltas, a folded batch, a pending batch.
    await logger.log_call(**unpriced_call(0, created_at=T0 + timedelta(minutes=5), organization_id="acme"))
    await logger.log_call(**unpriced_call(1, created_at=T0 + timedelta(minutes=65)))
    assert await logger.log_batch([unpriced_call(2, created_at=T0 + timedelta(minutes=10)),
                                   unpriced_call(3, created_at=T0 + timedelta(minutes=70))]) == 2  # fmt: skip
    assert await fold_rollups(engine) == 4  # two deltas and the batch
    assert await logger.log_batch([unpriced_call(4, created_at=T0 + timedelta(minutes=20))]) == 1  # pending
    # Not repriced: a cost the caller gave, and 1-hour writes the price row has no price for.
    await logger.log_call(**unpriced_call(5, cost_usd=Decimal("0.5")))
    await logger.log_call(**unpriced_call(6, cache_write_1h_tokens=50))
    before = await logger.get_stats(T0, T0 + timedelta(hours=2))
    assert (before["unpriced_calls"], before["total_cost_usd"]) == (6, Decimal("0.5"))

    price = await add_price(engine, NOBODY["model"], "2", "8", T0 - timedelta(days=1))
    progress: list[RepriceReport] = []
    report = await reprice_calls(engine, since=T0, progress=progress.append)

    # (1000 + i) * 2 + 100 * 8 per million, for i = 0..4: 2800, 2802, 2804, 2806, 2808.
    assert (report.repriced, report.repriced_tokens, report.cost_usd) == (
        5,
        5 * 1100 + 10,
        Decimal("0.014020"),
    )
    assert (report.still_unpriced, report.still_unpriced_tokens, report.batches) == (1, 1106 + 50, 1)
    assert progress == [report]
    async with engine.connect() as conn:
        stored = {
            r.request_id: tuple(r)[1:]
            for r in await conn.execute(
                text("SELECT request_id, cost_usd, computed_cost_usd, cost_source, price_id FROM ai_calls")
            )
        }
    assert stored["unpriced-0"] == (Decimal("0.002800"), Decimal("0.0028"), "computed", price)
    assert stored["unpriced-4"] == (Decimal("0.002808"), Decimal("0.002808"), "computed", price)
    assert stored["unpriced-5"] == (Decimal("0.5"), None, "provided", None)
    assert stored["unpriced-6"] == (None, None, "unpriced", None)

    # get_stats before any fold (correction deltas, the pending batch read as priced), then folded.
    for start, end in (
        (T0, T0 + timedelta(hours=2)),
        (T0 + timedelta(minutes=7), T0 + timedelta(minutes=68)),
    ):
        assert await logger.get_stats(start, end) == await raw_stats(engine, start, end)
    after = await logger.get_stats(T0, T0 + timedelta(hours=2))
    assert (after["unpriced_calls"], after["total_cost_usd"]) == (1, Decimal("0.514020"))
    await logger.fold_rollups()
    await assert_rollups_equal_a_raw_scan(engine)
    assert await logger.get_stats(T0, T0 + timedelta(hours=2)) == after

    # Idempotent: nothing left to price, nothing changes.
    again = await reprice_calls(engine, since=T0)
    assert (again.repriced, again.cost_usd, again.still_unpriced) == (0, Decimal(0), 1)
    assert await scalar(engine, "SELECT count(*) FROM ai_call_usage_deltas") == 0
    await assert_rollups_equal_a_raw_scan(engine)
    await rebuild_rollups(engine, T0, T0 + timedelta(hours=2))
    await assert_rollups_equal_a_raw_scan(engine)
    # A retry of an unpriced call's key after the reprice is still that one (now priced) row.
    assert (
        await logger.log_call(
            **unpriced_call(0, created_at=T0 + timedelta(minutes=5), organization_id="acme")
        )
        > 0
    )
    assert await scalar(engine, "SELECT count(*) FROM ai_calls") == 7


async def test_reprice_uses_the_price_in_force_at_each_call_and_its_filters(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    old = await logger.log_call(**unpriced_call(0, created_at=T0 - timedelta(days=10)))
    new = await logger.log_call(**unpriced_call(1, created_at=T0))
    other_model = await logger.log_call(**unpriced_call(2, model="nobody-prices-2", created_at=T0))
    other_provider = await logger.log_call(**unpriced_call(3, provider="beta-ai", created_at=T0))
    current = await add_price(engine, NOBODY["model"], "2", "8", T0 - timedelta(days=1))
    await add_price(engine, "nobody-prices-2", "1", "1", T0 - timedelta(days=1))
    beta = await add_price(engine, NOBODY["model"], "3", "3", T0 - timedelta(days=1), provider="beta-ai")

    def price_of(call_id: int) -> Any:
        return scalar(engine, "SELECT price_id FROM ai_calls WHERE id = :id", id=call_id)

    since = T0 - timedelta(days=30)
    first = await reprice_calls(engine, since=since, provider="ACME-AI", model=NOBODY["model"])
    assert (first.provider, first.model, first.repriced, first.still_unpriced) == (
        "acme-ai",
        NOBODY["model"],
        1,
        1,
    )
    assert (await price_of(new), await price_of(old), await price_of(other_model)) == (current, None, None)
    # A price entered later for the older period prices the older call.
    older = await add_price(
        engine, NOBODY["model"], "4", "4", T0 - timedelta(days=20), until=T0 - timedelta(days=1)
    )
    assert (await reprice_calls(engine, since=since, until=T0, model=NOBODY["model"])).repriced == 1
    assert await price_of(old) == older
    # until is exclusive: the calls at T0 are left for a later run.
    assert (await reprice_calls(engine, since=since, until=T0, provider="beta-ai")).repriced == 0
    assert (await reprice_calls(engine, since=T0, provider="beta-ai")).repriced == 1
    assert (await price_of(other_provider), await price_of(other_model)) == (beta, None)
    rest = await reprice_calls(engine, since=since)
    assert (rest.repriced, rest.still_unpriced) == (1, 0)
    await logger.fold_rollups()
    await assert_rollups_equal_a_raw_scan(engine)


async def test_reprice_runs_in_bounded_batches_with_progress(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    assert await logger.log_batch([unpriced_call(i) for i in range(5)]) == 5
    await add_price(engine, NOBODY["model"], "2", "8", T0 - timedelta(days=1))
    seen: list[tuple[int, int]] = []
    report = await reprice_calls(
        engine, since=T0, batch_size=2, progress=lambda r: seen.append((r.batches, r.repriced))
    )
    assert seen == [(1, 2), (2, 4), (3, 5)]
    assert (report.repriced, report.batches) == (5, 3)
    await logger.fold_rollups()
    await assert_rollups_equal_a_raw_scan(engine)


async def test_reprice_refuses_a_bad_window(engine: AsyncEngine) -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        await reprice_calls(engine, since=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValidationError, match="after"):
        await reprice_calls(engine, since=T0, until=T0)
    with pytest.raises(ValidationError, match="batch_size"):
        await reprice_calls(engine, since=T0, batch_size=0)


@pytest.mark.commits
async def test_reprice_is_exact_while_loggers_write_and_fold(engine: AsyncEngine) -> None:
    """Reprice batches race folds that claim the very pending batches being repriced, plus new
    unpriced calls and their deltas: afterwards the rollups still equal a raw scan."""
    async with AICallLogger(engine, fold_every=None) as log:
        for b in range(30):  # 300 unpriced calls in 30 pending batches
            calls = [
                unpriced_call(b * 10 + i, created_at=T0 + timedelta(minutes=b * 4 + i)) for i in range(10)
            ]
            assert await log.log_batch(calls) == 10
        await add_price(engine, NOBODY["model"], "2", "8", T0 - timedelta(days=1))
        other = {"model": "nobody-prices-2"}  # keeps arriving unpriced meanwhile
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                await log.log_batch([unpriced_call(1000 + n + i, **other) for i in range(5)])
                await log.log_call(**unpriced_call(2000 + n, **other))
                await log.fold_rollups()
                n += 5

        task = asyncio.create_task(writer())
        try:
            report = await reprice_calls(engine, since=T0, model=NOBODY["model"], batch_size=7)
        finally:
            stop.set()
            await task
        await log.fold_rollups()
    assert (report.repriced, report.still_unpriced) == (300, 0)
    assert (
        await scalar(
            engine, f"SELECT count(*) FROM ai_calls WHERE model = '{NOBODY['model']}' AND cost_usd IS NULL"
        )
        == 0
    )
    await assert_rollups_equal_a_raw_scan(engine)


@pytest.mark.commits
async def test_reprice_waits_for_a_fold_that_claimed_its_pending_batch(engine: AsyncEngine) -> None:
    """The interleaving that would lose a correction: a fold has read a pending batch's calls as
    unpriced (not committed yet) when reprice prices them. Reprice waits for the fold's lock, then
    sees the batch folded and corrects the rollups."""
    async with AICallLogger(engine, fold_every=None) as log:
        assert await log.log_batch([unpriced_call(i) for i in range(3)]) == 3
    await add_price(engine, NOBODY["model"], "2", "8", T0 - timedelta(days=1))
    async with engine.connect() as fold_conn, engine.connect() as watch:
        raw = (await fold_conn.get_raw_connection()).driver_connection
        assert raw is not None
        fold = raw.transaction()
        await fold.start()
        await raw.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_LOCK)
        assert await raw.fetchval(FOLD) == 3
        task = asyncio.create_task(reprice_calls(engine, since=T0))
        waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        while not task.done() and await watch.scalar(waiting) == 0:
            await asyncio.sleep(0.01)
            await watch.rollback()  # a fresh snapshot of pg_locks each time
        await fold.commit()  # (reprice waits for it, then prices the calls it counted unpriced)
        report = await task
    assert report.repriced == 3
    await fold_rollups(engine)
    await assert_rollups_equal_a_raw_scan(engine)
