"""Seed 004's two questions over the raw event tables, one statement each (so one snapshot).

Correct first: each is a range scan of the (tenant_id, time[, agent_id]) btree over the partitions
of the window. Hourly rollups (whole hours from rollups, edges from raw rows) are the next step of
issue 18; these statements are the raw scan those must equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import asyncpg

from persistence.ai_calls.tenant_cost import TenantDay, tenant_day
from persistence.errors import ValidationError

__all__ = ["AGENT_RUNS", "DAILY_COST", "AgentRuns", "agent_runs", "daily_cost", "tenant_day"]

# ($1 tenant, $2/$3 the local day's first and last instants [start, end)).
DAILY_COST = """
SELECT coalesce(sum(cost_usd), 0) FROM analytics.tenant_cost_events
 WHERE tenant_id = $1 AND time >= $2 AND time < $3
"""

# ($1 tenant, $2 agent, $3 hours): the database's clock sets the window.
AGENT_RUNS = """
SELECT count(*) FILTER (WHERE success), count(*) FROM analytics.agent_executions
 WHERE tenant_id = $1 AND agent_id = $2 AND time >= now() - $3::float8 * interval '1 hour'
"""

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
    value = await raw.fetchval(DAILY_COST, day.tenant_id, day.start, day.end)
    return Decimal(value)


async def agent_runs(raw: asyncpg.Connection, agent_id: str, tenant_id: str, hours: float) -> AgentRuns:
    row = await raw.fetchrow(AGENT_RUNS, _id("tenant_id", tenant_id), _id("agent_id", agent_id), hours)
    assert row is not None
    return AgentRuns(int(row[0]), int(row[1]))
