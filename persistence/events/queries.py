"""Seed 004's two questions, one statement each (so one snapshot), exact at every moment.

Whole UTC hours come from the hourly rollups plus the deltas no fold has reached yet
(`events.rollups`: every committed event is in exactly one of them); the partial hours at the
edges (a local day in a zone whose offset is not a whole number of hours, the start of a
last-N-hours window) come from the raw rows. That equals a scan of the raw rows (`RAW_DAILY_COST`,
`RAW_AGENT_RUNS`, kept for the tests and the benchmark), reading a day's few hundred rollup rows
instead of its events. After retention dropped a window's raw partitions only its edges are
missing: a day there is exact in zones with whole-hour offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import asyncpg

from persistence.ai_calls.tenant_cost import TenantDay, tenant_day
from persistence.errors import ValidationError

__all__ = [
    "AGENT_RUNS",
    "DAILY_COST",
    "RAW_AGENT_RUNS",
    "RAW_DAILY_COST",
    "AgentRuns",
    "agent_runs",
    "agent_runs_scan",
    "daily_cost",
    "daily_cost_scan",
    "tenant_day",
]

# ($1 tenant, $2/$3 the local day's first and last instants [start, end), $4/$5 its whole UTC hours
# [first_hour, end_hour): `TenantDay.arguments`). The raw edges take their bounds from a
# MATERIALIZED CTE: the planner cannot prune partitions by them, so a prepared statement keeps one
# generic plan (pruned when it runs) instead of planning every partition at every call (0.2 vs ~1 ms).
DAILY_COST = """
WITH w AS MATERIALIZED (SELECT $2::timestamptz AS lo, $3::timestamptz AS hi, $4::timestamptz AS h0,
                               $5::timestamptz AS h1)
SELECT coalesce(sum(cost), 0) FROM (
    SELECT sum(cost_usd) AS cost FROM analytics.tenant_cost_hourly
     WHERE tenant_id = $1 AND hour >= $4 AND hour < $5
    UNION ALL
    SELECT sum(cost_usd) FROM analytics.tenant_cost_hourly_deltas
     WHERE tenant_id = $1 AND hour >= $4 AND hour < $5
    UNION ALL
    SELECT sum(cost_usd) FROM analytics.tenant_cost_events
     WHERE tenant_id = $1 AND time >= (SELECT lo FROM w) AND time < (SELECT h0 FROM w)
    UNION ALL
    SELECT sum(cost_usd) FROM analytics.tenant_cost_events
     WHERE tenant_id = $1 AND time >= (SELECT h1 FROM w) AND time < (SELECT hi FROM w)
) parts
"""

# ($1 tenant, $2/$3 the local day [start, end)): what DAILY_COST must equal.
RAW_DAILY_COST = """
SELECT coalesce(sum(cost_usd), 0) FROM analytics.tenant_cost_events
 WHERE tenant_id = $1 AND time >= $2 AND time < $3
"""

# ($1 tenant, $2 agent, $3 hours): the database's clock sets the window [now() - hours, ...). Its
# start `lo` falls inside an hour [hf, hc): the hours from the nearer boundary come from the
# rollups, and the raw rows between `lo` and that boundary are added (from `hc`: [lo, hc)) or
# subtracted (from `hf`: [hf, lo)), so at most half an hour of raw rows is read (a quarter on
# average). The covering index (tenant, agent, time) INCLUDE (success) of revision 0022 reads them
# without the heap once vacuum has marked their pages, which a window's start, hours old, usually
# has. Computed once in a MATERIALIZED CTE, for the same reason as in DAILY_COST. The rollup ranges
# end at `h1` (infinity: the raw scan counts future rows too) so the generic plan sees a two-sided
# range and keeps the primary-key index; with `hour >= h0` alone it read a tenant's whole rollup
# history by a sequential scan once one tenant and agent held most rows (0.25 -> 0.10 ms).
_START = "now() - $3::float8 * interval '1 hour'"
AGENT_RUNS = f"""
WITH w AS MATERIALIZED (
    SELECT CASE WHEN back THEN hf ELSE hc END AS h0, 'infinity'::timestamptz AS h1,
           CASE WHEN back THEN hf ELSE lo END AS e0,
           CASE WHEN back THEN lo ELSE hc END AS e1, CASE WHEN back THEN -1 ELSE 1 END AS sign
      FROM (SELECT lo, hf, hc, lo - hf < hc - lo AS back
              FROM (SELECT lo, date_trunc('hour', lo AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hf,
                           date_trunc('hour', (lo + interval '1 hour' - interval '1 microsecond') AT TIME ZONE 'UTC')
                               AT TIME ZONE 'UTC' AS hc
                      FROM (SELECT {_START} AS lo) start) bounds) nearer
)
SELECT coalesce(sum(successes), 0), coalesce(sum(runs), 0) FROM (
    SELECT sum(successes) AS successes, sum(runs) AS runs FROM analytics.agent_execution_hourly
     WHERE tenant_id = $1 AND agent_id = $2 AND hour >= (SELECT h0 FROM w) AND hour < (SELECT h1 FROM w)
    UNION ALL
    SELECT sum(successes), sum(runs) FROM analytics.agent_execution_hourly_deltas
     WHERE tenant_id = $1 AND agent_id = $2 AND hour >= (SELECT h0 FROM w) AND hour < (SELECT h1 FROM w)
    UNION ALL
    SELECT (SELECT sign FROM w) * count(*) FILTER (WHERE success), (SELECT sign FROM w) * count(*)
      FROM analytics.agent_executions
     WHERE tenant_id = $1 AND agent_id = $2 AND time >= (SELECT e0 FROM w) AND time < (SELECT e1 FROM w)
) parts
"""  # noqa: S608 (constant SQL only)

# What AGENT_RUNS must equal.
RAW_AGENT_RUNS = f"""
SELECT count(*) FILTER (WHERE success), count(*) FROM analytics.agent_executions
 WHERE tenant_id = $1 AND agent_id = $2 AND time >= {_START}
"""  # noqa: S608

MAX_HOURS = 24 * 366 * 10


@dataclass(frozen=True, slots=True)
class AgentRuns:
    """An agent's runs in a window: counts, so rates stay mergeable (a ratio of sums)."""

    successes: int
    runs: int

    @property
    def success_rate(self) -> float:
        """Percent (0-100) of runs that succeeded; 0.0 when there were none (the seed's display)."""
        return 100.0 * self.successes / self.runs if self.runs else 0.0


def window_hours(hours: object) -> float:
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not math.isfinite(hours):
        raise ValidationError(f"hours must be a number, got {hours!r}")
    if not 0 < hours <= MAX_HOURS:
        raise ValidationError(f"hours must be in (0, {MAX_HOURS}], got {hours!r}")
    return float(hours)


def _id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 100:
        raise ValidationError(f"{name} must be a non-empty string of at most 100 characters, got {value!r}")
    return value


def cost_day(tenant_id: str, day: date | None, time_zone: str) -> TenantDay:
    """The tenant's local day (a date, an aware datetime, or None for today in `time_zone`)."""
    return tenant_day(tenant_id, day, time_zone)


async def daily_cost(raw: asyncpg.Connection, day: TenantDay) -> Decimal:
    """The tenant's cost on `day`: rollups + unfolded deltas for whole hours, raw rows at the edges."""
    value = await raw.fetchval(DAILY_COST, *day.arguments)
    return Decimal(value)


async def daily_cost_scan(raw: asyncpg.Connection, day: TenantDay) -> Decimal:
    """The same answer from a scan of the raw rows (what `daily_cost` must equal)."""
    value = await raw.fetchval(RAW_DAILY_COST, day.tenant_id, day.start, day.end)
    return Decimal(value)


async def agent_runs(raw: asyncpg.Connection, agent_id: str, tenant_id: str, hours: float) -> AgentRuns:
    """The agent's runs in the last `hours`: rollups + deltas for whole hours, raw rows at the start."""
    return await _runs(raw, AGENT_RUNS, agent_id, tenant_id, hours)


async def agent_runs_scan(raw: asyncpg.Connection, agent_id: str, tenant_id: str, hours: float) -> AgentRuns:
    """The same counts from a scan of the raw rows (what `agent_runs` must equal)."""
    return await _runs(raw, RAW_AGENT_RUNS, agent_id, tenant_id, hours)


async def _runs(raw: asyncpg.Connection, sql: str, agent_id: str, tenant_id: str, hours: float) -> AgentRuns:
    row = await raw.fetchrow(sql, _id("tenant_id", tenant_id), _id("agent_id", agent_id), window_hours(hours))
    assert row is not None
    return AgentRuns(int(row[0]), int(row[1]))
