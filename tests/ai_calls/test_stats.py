"""get_stats and the hourly rollups: exactly what a raw scan of the ledger gives, to the micro-dollar."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger, fold_rollups, rebuild_rollups
from persistence.errors import ValidationError
from tests.ai_calls.conftest import T0, call, counts, scalar

PROVIDERS = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-20250514", "google": "gemini-1.5-pro"}


def random_calls(
    n: int, seed: int, start: datetime = T0, span: timedelta = timedelta(days=3)
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        provider = rng.choice(list(PROVIDERS))
        out.append(
            {
                "provider": provider,
                "model": PROVIDERS[provider],
                "input_tokens": rng.randint(0, 5000),
                "output_tokens": rng.randint(0, 900),
                "cache_read_tokens": rng.choice((0, 0, 1024)),
                "reasoning_tokens": rng.choice((0, 128)),
                "cost_usd": Decimal(rng.randint(0, 90_000)) / 1_000_000,
                "latency_ms": rng.choice((None, rng.randint(50, 9000))),
                "status": rng.choice(("success",) * 9 + ("error",)),
                "customer_id": f"c{rng.randint(1, 9)}",
                "organization_id": rng.choice(("acme", None)),
                "environment": "production",
                "request_id": f"{seed}-{i}",
                "created_at": start + timedelta(microseconds=rng.randint(0, int(span.total_seconds() * 1e6))),
            }
        )
    return out


async def raw_stats(engine: AsyncEngine, start: datetime, end: datetime) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT provider, count(*), coalesce(sum(cost_usd), 0), sum(total_tokens), "
                    "coalesce(sum(latency_ms), 0), count(latency_ms), count(*) FILTER (WHERE cost_usd IS NULL), "
                    "coalesce(sum(total_tokens) FILTER (WHERE cost_usd IS NULL), 0) "
                    "FROM ai_calls WHERE created_at >= :s AND created_at < :e GROUP BY provider ORDER BY provider"
                ),
                {"s": start, "e": end},
            )
        ).all()
    lat_sum, lat_n = sum(int(r[4]) for r in rows), sum(int(r[5]) for r in rows)
    return {
        "total_calls": sum(int(r[1]) for r in rows),
        "total_cost_usd": sum((Decimal(r[2]) for r in rows), Decimal(0)),
        "total_tokens": sum(int(r[3]) for r in rows),
        "avg_latency_ms": float(Decimal(lat_sum) / Decimal(lat_n)) if lat_n else 0.0,
        "unpriced_calls": sum(int(r[6]) for r in rows),
        "unpriced_tokens": sum(int(r[7]) for r in rows),
        "by_provider": {
            r[0]: {
                "calls": int(r[1]),
                "cost": Decimal(r[2]),
                "tokens": int(r[3]),
                "unpriced_calls": int(r[6]),
                "unpriced_tokens": int(r[7]),
            }
            for r in rows
        },
    }


WINDOWS = [
    (T0, T0 + timedelta(days=3)),  # whole hours only
    (
        T0 + timedelta(hours=5, minutes=17, seconds=3, microseconds=5),
        T0 + timedelta(days=2, hours=3, minutes=42),
    ),
    (T0 + timedelta(hours=7, minutes=5), T0 + timedelta(hours=7, minutes=55)),  # inside one hour
    (T0 + timedelta(hours=7, minutes=59), T0 + timedelta(hours=8, minutes=1)),  # across one boundary
    (T0 - timedelta(days=30), T0 + timedelta(days=30)),
    (T0 + timedelta(hours=1), T0 + timedelta(hours=1)),  # empty
]


async def test_get_stats_equals_a_raw_scan_to_the_cent(engine: AsyncEngine, logger: AICallLogger) -> None:
    calls = random_calls(3000, seed=1)
    for chunk in range(0, 2000, 500):
        assert await logger.log_batch(calls[chunk : chunk + 500]) == 500
    assert await logger.fold_rollups() > 0
    for c in calls[2000:2200]:  # unfolded per-call deltas
        await logger.log_call(**c)
    await logger.log_batch(calls[2200:])
    for start, end in WINDOWS:
        stats = await logger.get_stats(start, end)
        assert stats == await raw_stats(engine, start, end), (start, end)
        assert isinstance(stats["total_cost_usd"], Decimal)
        assert all(isinstance(p["cost"], Decimal) for p in stats["by_provider"].values())
    whole = await logger.get_stats(*WINDOWS[0])
    assert whole["total_calls"] == 3000
    assert whole["total_cost_usd"] == sum((c["cost_usd"] for c in calls), Decimal(0))
    assert set(whole) == {
        "total_calls",
        "total_cost_usd",
        "total_tokens",
        "avg_latency_ms",
        "unpriced_calls",
        "unpriced_tokens",
        "by_provider",
    }


async def test_get_stats_of_an_empty_ledger_and_bad_periods(logger: AICallLogger) -> None:
    assert await logger.get_stats(T0, T0 + timedelta(days=1)) == {
        "total_calls": 0,
        "total_cost_usd": Decimal(0),
        "total_tokens": 0,
        "avg_latency_ms": 0.0,
        "unpriced_calls": 0,
        "unpriced_tokens": 0,
        "by_provider": {},
    }
    with pytest.raises(ValidationError, match="timezone-aware"):
        await logger.get_stats(datetime(2026, 1, 1), T0)  # noqa: DTZ001
    with pytest.raises(ValidationError, match="before"):
        await logger.get_stats(T0, T0 - timedelta(seconds=1))


_ROLLED = ("hour, provider, model, organization_id, customer_id, product_id, environment, calls, error_calls, "
           "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, "
           "cost_usd, computed_cost_usd, latency_ms_sum, latency_count")  # fmt: skip
_GROUPED = """SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, provider, model,
           organization_id, customer_id, product_id, environment, count(*) AS calls,
           count(*) FILTER (WHERE status <> 'success') AS error_calls, sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens,
           sum(cache_write_tokens) AS cache_write_tokens, sum(reasoning_tokens) AS reasoning_tokens,
           sum(total_tokens) AS total_tokens, sum(cost_usd) AS cost_usd, sum(computed_cost_usd) AS computed_cost_usd,
           coalesce(sum(latency_ms), 0) AS latency_ms_sum, count(latency_ms) AS latency_count
  FROM {source} GROUP BY 1, 2, 3, 4, 5, 6, 7"""
_PENDING_ROWS = (
    "ai_call_pending_batches b "
    "CROSS JOIN LATERAL (SELECT * FROM ai_calls WHERE id BETWEEN b.first_id AND b.last_id) c"
)
# The ledger regrouped vs the rollups + deltas + rows of pending batches: (full mismatches, model
# mismatches, groups).
ROLLUP_VS_LEDGER = f"""
WITH ledger AS (
{_GROUPED.format(source="ai_calls")}
), pending AS (
{_GROUPED.format(source=_PENDING_ROWS)}
), rolled AS (
    SELECT hour, provider, model, organization_id, customer_id, product_id, environment, sum(calls) AS calls,
           sum(error_calls) AS error_calls, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
           sum(reasoning_tokens) AS reasoning_tokens, sum(total_tokens) AS total_tokens, sum(cost_usd) AS cost_usd,
           sum(computed_cost_usd) AS computed_cost_usd, sum(latency_ms_sum) AS latency_ms_sum,
           sum(latency_count) AS latency_count
      FROM (SELECT {_ROLLED} FROM ai_call_usage_hourly UNION ALL SELECT {_ROLLED} FROM ai_call_usage_deltas
            UNION ALL TABLE pending) u
     GROUP BY 1, 2, 3, 4, 5, 6, 7
), models AS (
    SELECT hour, provider, model, sum(calls) AS calls, sum(cost_usd) AS cost_usd, sum(total_tokens) AS total_tokens,
           sum(latency_ms_sum) AS latency_ms_sum, sum(latency_count) AS latency_count
      FROM (SELECT hour, provider, model, calls, cost_usd, total_tokens, latency_ms_sum, latency_count
              FROM ai_call_model_hourly
            UNION ALL
            SELECT hour, provider, model, calls, cost_usd, total_tokens, latency_ms_sum, latency_count
              FROM ai_call_usage_deltas
            UNION ALL
            SELECT hour, provider, model, calls, cost_usd, total_tokens, latency_ms_sum, latency_count
              FROM pending) u
     GROUP BY 1, 2, 3
)
SELECT (SELECT count(*) FROM ((TABLE ledger EXCEPT TABLE rolled) UNION ALL (TABLE rolled EXCEPT TABLE ledger)) d),
       (SELECT count(*) FROM (
            (SELECT hour, provider, model, sum(calls), sum(cost_usd), sum(total_tokens), sum(latency_ms_sum),
                    sum(latency_count) FROM ledger GROUP BY 1, 2, 3 EXCEPT TABLE models)
            UNION ALL
            (TABLE models EXCEPT SELECT hour, provider, model, sum(calls), sum(cost_usd), sum(total_tokens),
                    sum(latency_ms_sum), sum(latency_count) FROM ledger GROUP BY 1, 2, 3)) d),
       (SELECT count(*) FROM ledger)
"""


async def rollup_mismatches(engine: AsyncEngine) -> tuple[int, int, int]:
    async with engine.connect() as conn:
        a, b, groups = (await conn.execute(text(ROLLUP_VS_LEDGER))).one()
    return int(a), int(b), int(groups)


@pytest.mark.commits
async def test_rollups_stay_exact_under_concurrent_writers_and_folds(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    calls = random_calls(2400, seed=2)
    async with AICallLogger(engine, connections=8, fold_every=None) as many:

        async def writer(w: int) -> None:
            mine = calls[w * 300 : (w + 1) * 300]
            for c in mine[:40]:
                await many.log_call(**c)
            for i in range(40, 300, 65):
                await many.log_batch(mine[i : i + 65])

        async def folder() -> None:
            for _ in range(10):
                await fold_rollups(engine)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(writer(w) for w in range(8)), folder())
    a, b, groups = await rollup_mismatches(engine)
    assert (a, b) == (0, 0) and groups > 100
    await fold_rollups(engine)
    assert await rollup_mismatches(engine) == (0, 0, groups)


async def test_rebuild_repairs_a_window_and_leaves_the_rest(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    await logger.log_batch(random_calls(1500, seed=3))
    await logger.fold_rollups()
    # Rows written behind the logger's back (plain SQL) are not in the rollups until a rebuild.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO ai_calls (created_at, provider, model, input_tokens, output_tokens, cost_usd) "
                "VALUES (:t, 'openai', 'gpt-4o', 10, 10, 0.5)"
            ),
            {"t": T0 + timedelta(hours=30, minutes=30)},
        )
        await conn.execute(text("UPDATE ai_call_model_hourly SET calls = calls + 1 WHERE hour = :h"),
                           {"h": T0 + timedelta(hours=2)})  # fmt: skip
    assert (await rollup_mismatches(engine))[:2] != (0, 0)
    lo, hi = await rebuild_rollups(engine, T0 + timedelta(hours=1, minutes=30), T0 + timedelta(hours=31))
    assert (lo, hi) == (T0 + timedelta(hours=1), T0 + timedelta(hours=31))
    assert (await rollup_mismatches(engine))[:2] == (0, 0)
    whole = (T0, T0 + timedelta(days=3))
    assert await logger.get_stats(*whole) == await raw_stats(engine, *whole)
    with pytest.raises(ValidationError):
        await rebuild_rollups(engine, T0, T0)


async def test_migration_rolls_up_rows_that_existed_before_it(engine: AsyncEngine) -> None:
    # Seeded and migrated rows are rebuilt into the rollups; the template database has none, so the
    # check is that an empty ledger has empty rollups, and a rebuild of everything changes nothing.
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM ai_call_usage_hourly"))).scalar() == 0
    await rebuild_rollups(engine, datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
    assert await rollup_mismatches(engine) == (0, 0, 0)


async def test_batches_are_pending_until_a_fold_and_a_rebuild_never_counts_them_twice(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    calls = random_calls(1200, seed=4)
    await logger.log_batch(calls[:600])
    await logger.log_batch(calls[600:])
    pending = "SELECT count(*) FROM ai_call_pending_batches"
    async with engine.connect() as conn:
        assert (await conn.execute(text(pending))).scalar() == 2
        assert (await conn.execute(text("SELECT count(*) FROM ai_call_usage_hourly"))).scalar() == 0
    whole = (T0, T0 + timedelta(days=3))
    assert await logger.get_stats(*whole) == await raw_stats(engine, *whole)
    # A rebuild of part of the period folds the pending batches first: the window is recomputed from
    # the ledger, the rest stays as deltas, and nothing is left for a later fold to count again.
    await rebuild_rollups(engine, T0 + timedelta(hours=10), T0 + timedelta(hours=40))
    async with engine.connect() as conn:
        assert (await conn.execute(text(pending))).scalar() == 0
    assert await logger.fold_rollups() > 0
    mismatched, mismatched_models, groups = await rollup_mismatches(engine)
    assert (mismatched, mismatched_models) == (0, 0) and groups > 100
    assert await logger.get_stats(*whole) == await raw_stats(engine, *whole)
    assert await logger.fold_rollups() == 0


async def test_a_logger_folds_on_close_and_after_fold_interval(engine: AsyncEngine) -> None:
    # Far below fold_every: a short-lived logger (a script, the sync facade) still leaves no work.
    async with AICallLogger(engine) as log:
        await log.log_call(**call(1))
        assert await log.log_batch([call(i) for i in range(2, 12)]) == 10
        assert (await counts(engine))[2] > 0  # a delta row and a pending batch
    assert await counts(engine) == (11, 11, 0)
    assert await scalar(engine, "SELECT sum(calls) FROM ai_call_model_hourly") == 11

    # A long-lived one folds once fold_interval has passed since its last fold, at its next write.
    async with AICallLogger(engine, fold_interval=0.2) as log:
        await log.log_call(**call(20))
        await asyncio.sleep(0.3)
        await log.log_call(**call(21))
        for _ in range(100):
            if (await counts(engine))[2] == 0:
                break
            await asyncio.sleep(0.05)
        assert await counts(engine) == (13, 13, 0)  # folded while the logger is still open


async def test_fold_every_none_leaves_folding_to_the_caller(engine: AsyncEngine) -> None:
    async with AICallLogger(engine, fold_every=None) as log:
        await log.log_call(**call(1))
    assert await counts(engine) == (1, 1, 1)
