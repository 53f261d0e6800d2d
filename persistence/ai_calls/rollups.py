"""Folding pending batches and deltas into the hourly rollups, and rebuilding a window from the ledger.

Both take advisory locks so folds and rebuilds never interleave; writers never wait for either
(they only append deltas and pending batches). See `persistence.models.rollups` for the design.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.advisory import advisory_key
from persistence.ai_calls.record import _utc, hour_ceil, hour_floor
from persistence.errors import (
    Endpoint,
    TenantIsolationError,
    ValidationError,
    is_connection_failure,
    raise_translated,
)
from persistence.models.rollups import DIMENSIONS, MEASURES
from persistence.tenancy import row_security_binds

T = TypeVar("T")

__all__ = [
    "PENDING_ROWS",
    "PENDING_TO_DELTAS",
    "RECORD_PENDING",
    "fold_rollups",
    "fold_rollups_raw",
    "id_runs",
    "rebuild_rollups",
    "rebuild_rollups_raw",
]

ROLLUP_LOCK = advisory_key("persistence.ai_calls.rollups")

_DIMS = ", ".join(DIMENSIONS)
_MEASURES = ", ".join(MEASURES)
_SUMS = ", ".join(f"sum({m})" for m in MEASURES)


def _merge(table: str) -> str:
    # computed_cost_usd is NULL when no call of the group had a price: NULL + x must stay x.
    parts = []
    for m in MEASURES:
        if m == "computed_cost_usd":
            parts.append(
                f"{m} = CASE WHEN {table}.{m} IS NULL THEN EXCLUDED.{m} "
                f"WHEN EXCLUDED.{m} IS NULL THEN {table}.{m} ELSE {table}.{m} + EXCLUDED.{m} END"
            )
        else:
            parts.append(f"{m} = {table}.{m} + EXCLUDED.{m}")
    return ", ".join(parts)


_FROM_LEDGER = """
SELECT date_trunc('hour', c.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', {dims},
       count(*), count(*) FILTER (WHERE c.status <> 'success'), sum(c.input_tokens), sum(c.output_tokens),
       sum(c.cache_read_tokens), sum(c.cache_write_tokens), sum(c.cache_write_1h_tokens), sum(c.reasoning_tokens),
       sum(c.total_tokens),
       coalesce(sum(c.cost_usd), 0), sum(c.computed_cost_usd), coalesce(sum(c.latency_ms), 0), count(c.latency_ms),
       count(*) FILTER (WHERE c.cost_source = 'unpriced'),
       coalesce(sum(c.total_tokens) FILTER (WHERE c.cost_source = 'unpriced'), 0)
  FROM {source}
 GROUP BY 1, {dims}
"""


def _from_ledger(dims: tuple[str, ...], source: str) -> str:
    return _FROM_LEDGER.format(dims=", ".join(f"c.{d}" for d in dims), source=source)


# The ledger rows of the batches a `log_batch` recorded as pending (the LATERAL makes each id range
# a primary-key range scan, whatever the planner thinks of the CTE's size).
PENDING_ROWS = "b CROSS JOIN LATERAL (SELECT * FROM ai_calls WHERE id BETWEEN b.first_id AND b.last_id) c"

# What a writer of ledger rows adds in its transaction, for the fold: ($1 first ids, $2 last ids).
RECORD_PENDING = (
    "INSERT INTO ai_call_pending_batches (first_id, last_id) SELECT * FROM unnest($1::bigint[], $2::bigint[])"
)


def id_runs(ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """`ids` as runs of consecutive values, (first ids, last ids): the ranges `RECORD_PENDING` takes."""
    firsts: list[int] = []
    lasts: list[int] = []
    for i in sorted(ids):
        if lasts and i == lasts[-1] + 1:
            lasts[-1] = i
        else:
            firsts.append(i)
            lasts.append(i)
    return firsts, lasts


# Built from constant column names only. Turns every committed pending batch into deltas (for a
# rebuild); the DELETE .. RETURNING claims each batch once, even against a concurrent fold.
_CLAIM_PENDING = "b AS (DELETE FROM ai_call_pending_batches RETURNING first_id, last_id)"
PENDING_TO_DELTAS = (
    f"WITH {_CLAIM_PENDING} "
    + f"INSERT INTO ai_call_usage_deltas (hour, {_DIMS}, {_MEASURES}) "
    + _from_ledger(DIMENSIONS, PENDING_ROWS)
)
# One statement: pending batches are aggregated straight from the ledger (no delta rows written
# and deleted again) and added with the unfolded deltas.
FOLD = f"""
WITH {_CLAIM_PENDING}, deltas AS (
    DELETE FROM ai_call_usage_deltas RETURNING hour, {_DIMS}, {_MEASURES}
), moved AS (
    SELECT hour, {_DIMS}, {_MEASURES} FROM deltas
    UNION ALL
    {_from_ledger(DIMENSIONS, PENDING_ROWS)}
), full_ AS (
    INSERT INTO ai_call_usage_hourly AS h (hour, {_DIMS}, {_MEASURES})
    SELECT hour, {_DIMS}, {_SUMS} FROM moved GROUP BY hour, {_DIMS} ORDER BY hour, {_DIMS}
    ON CONFLICT ON CONSTRAINT uq_ai_call_usage_hourly_key DO UPDATE SET {_merge("h")}
), models AS (
    INSERT INTO ai_call_model_hourly AS m (hour, provider, model, {_MEASURES})
    SELECT hour, provider, model, {_SUMS} FROM moved GROUP BY hour, provider, model
     ORDER BY hour, provider, model
    ON CONFLICT (hour, provider, model) DO UPDATE SET {_merge("m")}
)
SELECT coalesce(sum(calls), 0)::bigint FROM moved
"""  # noqa: S608

_WINDOW = "ai_calls c WHERE c.created_at >= $1 AND c.created_at < $2"
REBUILD = (
    "DELETE FROM ai_call_usage_deltas WHERE hour >= $1 AND hour < $2",
    "DELETE FROM ai_call_usage_hourly WHERE hour >= $1 AND hour < $2",
    "DELETE FROM ai_call_model_hourly WHERE hour >= $1 AND hour < $2",
    f"INSERT INTO ai_call_usage_hourly (hour, {_DIMS}, {_MEASURES}) " + _from_ledger(DIMENSIONS, _WINDOW),
    f"INSERT INTO ai_call_model_hourly (hour, provider, model, {_MEASURES}) "
    + _from_ledger(("provider", "model"), _WINDOW),
)


async def _platform_only(raw: asyncpg.Connection, what: str) -> None:
    """Folds and rebuilds are platform work: under row-level security a fold would claim every
    tenant's pending batches (a platform table) and see none of their calls, losing them from the
    rollups. Refused where RLS binds the login (the owner: one cached lookup)."""
    if await row_security_binds(raw):
        raise TenantIsolationError(
            f"{what} the ledger's rollups is platform work: run it as the tables' owner (or an operator)"
        )


async def fold_rollups_raw(raw: asyncpg.Connection) -> int:
    """Fold every committed pending batch and delta (one transaction); returns the calls folded.
    Platform work: refused (`TenantIsolationError`) where row-level security binds the login."""
    await _platform_only(raw, "folding")
    async with raw.transaction():
        await raw.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_LOCK)
        folded: int = await raw.fetchval(FOLD)
    return folded


async def _rebuild_window(raw: asyncpg.Connection, lo: datetime, hi: datetime) -> None:
    """The statements of a rebuild of the whole hours [lo, hi): only exact in one snapshot
    (REPEATABLE READ) under `ROLLUP_LOCK`, as `rebuild_rollups_raw` runs them.

    Pending batches become deltas first, so the window's share of them is recomputed from the
    ledger with everything else and cannot be counted again by a later fold.
    """
    await raw.execute(PENDING_TO_DELTAS)
    for statement in REBUILD:
        await raw.execute(statement, lo, hi)


async def rebuild_rollups_raw(
    raw: asyncpg.Connection, start: datetime, end: datetime
) -> tuple[datetime, datetime]:
    """Recompute the rollups of the whole UTC hours covering [start, end) from the ledger.

    One REPEATABLE READ snapshot: a call committed after it keeps its delta and is not counted, a
    call committed before it is counted and its delta removed, so nothing is counted twice or lost.
    The lock is session-level and taken before the snapshot, so a fold that finished while we
    waited is already visible.
    """
    lo, hi = hour_floor(_utc("start", start)), hour_ceil(_utc("end", end))
    if hi <= lo:
        raise ValidationError("invalid window: end must be after start")
    await _platform_only(raw, "rebuilding")
    await raw.execute("SELECT pg_advisory_lock($1)", ROLLUP_LOCK)
    try:
        # Already in a transaction only on a test's pinned connection: a savepoint keeps its isolation.
        nested = raw.is_in_transaction()
        async with raw.transaction(isolation=None if nested else "repeatable_read"):
            await _rebuild_window(raw, lo, hi)
    finally:
        await raw.execute("SELECT pg_advisory_unlock($1)", ROLLUP_LOCK)
    return lo, hi


async def _on_raw(engine: AsyncEngine, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`work` on the raw asyncpg connection of one pooled connection of `engine`, with our errors.

    A connection that failed under it is invalidated, so the pool never hands it out again.
    """
    async with engine.connect() as conn:
        try:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, asyncpg.Connection)
            return await work(raw)
        except Exception as exc:
            if is_connection_failure(exc):
                with contextlib.suppress(Exception):
                    await conn.invalidate()
            raise_translated(exc, Endpoint.of_url(engine.url))


async def fold_rollups(engine: AsyncEngine) -> int:
    """`fold_rollups_raw` on a connection of `engine`."""
    return await _on_raw(engine, fold_rollups_raw)


async def rebuild_rollups(engine: AsyncEngine, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """`rebuild_rollups_raw` on a connection of `engine`; returns the hour-aligned window rebuilt."""
    return await _on_raw(engine, lambda raw: rebuild_rollups_raw(raw, start, end))
