"""Seed 004's `get_tenant_daily_cost(tenant_id, date)`: one tenant's spend on one local day, exact.

The tenant is the ledger's `organization_id` (the column tenant prices are matched on). The day
is a calendar day in a named IANA time zone: the UTC interval between two local midnights, so a
DST day lasts 23 or 25 hours and a day in Asia/Kolkata starts at 18:30 UTC.

One statement, so one snapshot (a concurrent fold cannot make a call count twice or never): the
whole UTC hours of the day come from the hourly rollup (an index range on (organization_id, hour))
plus the usage no fold has reached yet (deltas, and the ledger rows of pending batches); the
partial hours at the edges, where a zone's offset is not a whole number of hours, come from the
ledger (an index range on (organization_id, created_at)). That is what a scan of `ai_calls` over
the day returns, reading a day's few dozen rollup rows instead of the day's calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.alerts import _load_zone, _local_midnight
from persistence.ai_calls.record import hour_ceil, hour_floor
from persistence.ai_calls.rollups import PENDING_ROWS, _on_raw
from persistence.errors import ValidationError
from persistence.tenancy import as_tenant

__all__ = ["DAILY_COST", "TenantDay", "get_tenant_daily_cost", "tenant_daily_cost_raw", "tenant_day"]

# ($1 tenant, $2/$3 the day's first and last instants [start, end), $4/$5 its whole UTC hours [h0, h1)).
# Built from constant names only.
DAILY_COST = f"""
SELECT coalesce(sum(cost), 0) FROM (
    SELECT sum(cost_usd) AS cost FROM ai_call_usage_hourly
     WHERE organization_id = $1 AND hour >= $4 AND hour < $5
    UNION ALL
    SELECT sum(cost_usd) FROM ai_call_usage_deltas
     WHERE organization_id = $1 AND hour >= $4 AND hour < $5
    UNION ALL
    SELECT sum(c.cost_usd) FROM ai_call_pending_batches {PENDING_ROWS}
     WHERE c.organization_id = $1 AND c.created_at >= $4 AND c.created_at < $5
    UNION ALL
    SELECT sum(cost_usd) FROM ai_calls WHERE organization_id = $1 AND created_at >= $2 AND created_at < $4
    UNION ALL
    SELECT sum(cost_usd) FROM ai_calls WHERE organization_id = $1 AND created_at >= $5 AND created_at < $3
) parts
"""  # noqa: S608 (constant SQL only)


@dataclass(frozen=True, slots=True)
class TenantDay:
    """A tenant's local day as UTC instants [start, end), and the whole UTC hours [first_hour, end_hour)."""

    tenant_id: str
    start: datetime
    end: datetime
    first_hour: datetime
    end_hour: datetime

    @property
    def arguments(self) -> tuple[str, datetime, datetime, datetime, datetime]:
        """`DAILY_COST`'s parameters."""
        return self.tenant_id, self.start, self.end, self.first_hour, self.end_hour


def tenant_day(tenant_id: str, day: date | None = None, time_zone: str = "UTC") -> TenantDay:
    """Validate the arguments and compute the day's UTC interval. `day` is a date, or an aware
    datetime (its date in `time_zone`); None is today in `time_zone`."""
    if not isinstance(tenant_id, str) or not tenant_id or len(tenant_id) > 100:
        raise ValidationError(
            f"tenant_id must be a non-empty string of at most 100 characters, got {tenant_id!r}"
        )
    zone = _load_zone(time_zone)
    if day is None:
        local = datetime.now(UTC).astimezone(zone).date()
    elif isinstance(day, datetime):
        if day.tzinfo is None or day.utcoffset() is None:
            raise ValidationError(f"day must be a date or a timezone-aware datetime, got {day!r}")
        local = day.astimezone(zone).date()
    elif isinstance(day, date):
        local = day
    else:
        raise ValidationError(f"day must be a date, got {type(day).__name__}")
    try:
        start = _local_midnight(local, zone)
        end = _local_midnight(local + timedelta(days=1), zone)
    except (OverflowError, ValueError) as exc:
        raise ValidationError(f"day is out of range: {local!r}") from exc
    first, last = hour_ceil(start), hour_floor(end)
    if last < first:  # no whole hour (a day a zone skipped: Pacific/Apia, 2011-12-30): all from the ledger
        first = last = end
    return TenantDay(tenant_id, start, end, first, last)


async def tenant_daily_cost_raw(raw: asyncpg.Connection, day: TenantDay) -> Decimal:
    """`DAILY_COST` on a raw connection."""
    value = await raw.fetchval(DAILY_COST, *day.arguments)
    return Decimal(value)


async def get_tenant_daily_cost(
    engine: AsyncEngine, tenant_id: str, day: date | None = None, *, time_zone: str = "UTC"
) -> Decimal:
    """Seed 004's daily cost: the sum of `cost_usd` of `tenant_id`'s calls (`organization_id`) on
    `day` (a date; default today) in `time_zone`, in USD, exactly what a scan of the ledger gives.
    Unpriced calls add nothing. A service role under row-level security reads as `tenant_id`
    (`tenancy.as_tenant`; inside `tenant()` for another tenant: `TenantIsolationError`)."""
    window = tenant_day(tenant_id, day, time_zone)
    return await _on_raw(
        engine, lambda raw: as_tenant(raw, window.tenant_id, lambda r: tenant_daily_cost_raw(r, window))
    )
