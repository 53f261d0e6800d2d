"""Folding the event rollups' deltas into the hourly rollups, and checking a range against raw rows.

The deltas are written by triggers (revision 0022, `persistence.models.event_rollups`), in the
writers' own transactions, so every committed event is either in an unfolded delta or in a rollup
row: the queries (`events.queries`) add both and are exact whether or not a fold ran. Folds only
keep the delta tables short, so the queries stay fast. They run:

- in the recorder, every `fold_interval` seconds (60 by default) while it is open; a fold already
  running elsewhere makes it skip that turn (`pg_try_advisory_xact_lock`), never wait;
- in `maintain_event_partitions` (the maintenance command), first, and again inside each retention
  drop's transaction after the partition is locked;
- on demand: `fold_event_rollups(engine)`.

One fold is one transaction under `EVENT_ROLLUP_LOCK`; `DELETE ... RETURNING` claims each delta
once, so two folds never count one twice, and a delta committed after the fold's snapshot waits
for the next fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.advisory import advisory_key
from persistence.ai_calls.rollups import _on_raw
from persistence.errors import TenantIsolationError
from persistence.tenancy import row_security_binds

__all__ = [
    "EVENT_ROLLUP_LOCK",
    "FOLD_AGENT",
    "FOLD_COST",
    "FoldResult",
    "fold_event_rollups",
    "fold_event_rollups_raw",
    "unrolled_buckets_raw",
]

EVENT_ROLLUP_LOCK = advisory_key("persistence.events.rollups")

FOLD_COST = """
WITH d AS (
    DELETE FROM analytics.tenant_cost_hourly_deltas RETURNING tenant_id, hour, cost_type, service, cost_usd, events
), merged AS (
    INSERT INTO analytics.tenant_cost_hourly AS h (tenant_id, hour, cost_type, service, cost_usd, events)
    SELECT tenant_id, hour, cost_type, service, sum(cost_usd), sum(events) FROM d
     GROUP BY tenant_id, hour, cost_type, service ORDER BY tenant_id, hour, cost_type, service
    ON CONFLICT (tenant_id, hour, cost_type, service)
    DO UPDATE SET cost_usd = h.cost_usd + EXCLUDED.cost_usd, events = h.events + EXCLUDED.events
)
SELECT count(*) FROM d
"""

FOLD_AGENT = """
WITH d AS (
    DELETE FROM analytics.agent_execution_hourly_deltas
    RETURNING tenant_id, agent_id, hour, runs, successes, quality_sum, quality_count, cost_usd
), merged AS (
    INSERT INTO analytics.agent_execution_hourly AS h
        (tenant_id, agent_id, hour, runs, successes, quality_sum, quality_count, cost_usd)
    SELECT tenant_id, agent_id, hour, sum(runs), sum(successes), sum(quality_sum), sum(quality_count),
           sum(cost_usd)
      FROM d GROUP BY tenant_id, agent_id, hour ORDER BY tenant_id, agent_id, hour
    ON CONFLICT (tenant_id, agent_id, hour)
    DO UPDATE SET runs = h.runs + EXCLUDED.runs, successes = h.successes + EXCLUDED.successes,
                  quality_sum = h.quality_sum + EXCLUDED.quality_sum,
                  quality_count = h.quality_count + EXCLUDED.quality_count,
                  cost_usd = h.cost_usd + EXCLUDED.cost_usd
)
SELECT count(*) FROM d
"""

# The (tenant, hour) buckets of [$1, $2) where raw rows and rollups + unfolded deltas disagree
# (count or money): rows that reached the table without its trigger (triggers disabled, e.g.
# `session_replication_role = replica`). {raw}/{rolled}/{deltas}: the tables, {key}: extra key columns.
_UNROLLED = """
SELECT count(*) FROM (
    SELECT tenant_id, {hour} AS hour, {count} AS n, {money} AS money
      FROM analytics.{raw} WHERE time >= $1 AND time < $2 GROUP BY 1, 2
) r FULL JOIN (
    SELECT tenant_id, hour, sum(n) AS n, sum(money) AS money FROM (
        SELECT tenant_id, hour, {rolled_count} AS n, cost_usd AS money FROM analytics.{rolled}
         WHERE hour >= $1 AND hour < $2
        UNION ALL
        SELECT tenant_id, hour, {rolled_count}, cost_usd FROM analytics.{rolled}_deltas
         WHERE hour >= $1 AND hour < $2
    ) parts GROUP BY 1, 2
) s USING (tenant_id, hour)
WHERE coalesce(r.n, 0) <> coalesce(s.n, 0) OR coalesce(r.money, 0) <> coalesce(s.money, 0)
"""
_HOUR = "date_trunc('hour', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
UNROLLED = {
    "tenant_cost_events": _UNROLLED.format(
        hour=_HOUR, count="count(*)", money="sum(cost_usd)", raw="tenant_cost_events",
        rolled="tenant_cost_hourly", rolled_count="events",
    ),
    "agent_executions": _UNROLLED.format(
        hour=_HOUR, count="count(*)", money="coalesce(sum(cost_usd), 0)", raw="agent_executions",
        rolled="agent_execution_hourly", rolled_count="runs",
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class FoldResult:
    """Delta rows moved into the rollups by one fold (0 and `skipped` when another fold held the lock)."""

    cost_deltas: int
    agent_deltas: int
    skipped: bool = False


async def fold_event_rollups_raw(raw: asyncpg.Connection, *, wait: bool = True) -> FoldResult:
    """Fold every committed delta of both rollups, in one transaction under `EVENT_ROLLUP_LOCK`.

    `wait=False` returns at once (`skipped`) if another fold holds the lock: a periodic fold
    has nothing to add to one that is running. Platform work: where row-level security binds the
    login (a service role sees no tenant's deltas) it raises `TenantIsolationError`."""
    if await row_security_binds(raw):
        raise TenantIsolationError(
            "folding the event rollups is platform work: run it as the tables' owner (or an operator)"
        )
    async with raw.transaction():
        if wait:
            await raw.execute("SELECT pg_advisory_xact_lock($1)", EVENT_ROLLUP_LOCK)
        elif not await raw.fetchval("SELECT pg_try_advisory_xact_lock($1)", EVENT_ROLLUP_LOCK):
            return FoldResult(0, 0, skipped=True)
        cost: int = await raw.fetchval(FOLD_COST)
        agent: int = await raw.fetchval(FOLD_AGENT)
    return FoldResult(cost, agent)


async def fold_event_rollups(engine: AsyncEngine, *, wait: bool = True) -> FoldResult:
    """`fold_event_rollups_raw` on a connection of `engine`."""
    return await _on_raw(engine, lambda raw: fold_event_rollups_raw(raw, wait=wait))


async def unrolled_buckets_raw(raw: asyncpg.Connection, table: str, lo: datetime, hi: datetime) -> int:
    """How many (tenant, UTC hour) buckets of `table` in [lo, hi) the rollups and unfolded deltas
    do not match (event count or money); 0 means dropping those raw rows loses nothing."""
    found: int = await raw.fetchval(UNROLLED[table], lo, hi)
    return found
