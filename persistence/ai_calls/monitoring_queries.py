"""Seed 000's monitoring queries as typed functions: rows today, ledger size, quiet hours, recent reports.

Two deliberate differences from the seed's SQL: "today" is the UTC day (the seed's `CURRENT_DATE`
follows the session time zone), and quiet hours include hours with no calls at all (the seed's
`GROUP BY ... HAVING COUNT(*) < 10` cannot see an hour with zero rows, which is the outage it is
meant to catch). The size counts every partition (`pg_total_relation_size` of a partitioned parent is 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Executable, Table, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.sources import check_period
from persistence.errors import InvalidRequestError, raise_translated
from persistence.models import AICall, ReconciliationReport

_AI_CALLS: Table = AICall.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class LedgerHealth:
    """Seed 000's "database health" row."""

    rows_today: int
    table_size_bytes: int
    table_size: str  # pg_size_pretty


@dataclass(frozen=True, slots=True)
class HourlyCount:
    hour: datetime  # start of the UTC hour
    calls: int


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidRequestError(f"now must be timezone-aware (UTC), got {now!r}")
    return now.astimezone(UTC)


async def _fetch(engine: AsyncEngine, stmt: Executable) -> list[tuple[Any, ...]]:
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(stmt)]
    except Exception as exc:
        raise_translated(exc)


async def rows_today(engine: AsyncEngine, *, now: datetime | None = None) -> int:
    """Calls logged since 00:00 UTC of `now`'s day (default: the current time), up to `now`."""
    current = _now(now)
    midnight = current.replace(hour=0, minute=0, second=0, microsecond=0)
    stmt = select(func.count()).where(_AI_CALLS.c.created_at >= midnight, _AI_CALLS.c.created_at <= current)
    [(count,)] = await _fetch(engine, stmt)
    return int(count)


async def table_size_bytes(engine: AsyncEngine) -> int:
    """Bytes on disk of the ledger: heap, indexes and TOAST of every partition."""
    # pg_partition_tree() is empty for a plain table, and a partitioned parent itself has size 0.
    stmt = text(
        "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)"
        " FROM pg_partition_tree(c.oid) AS t) ELSE pg_total_relation_size(c.oid) END"
        " FROM pg_class AS c WHERE c.oid = CAST(:t AS regclass)"
    ).bindparams(t=_AI_CALLS.name)
    [(size,)] = await _fetch(engine, stmt)
    return int(size)


async def ledger_health(engine: AsyncEngine, *, now: datetime | None = None) -> LedgerHealth:
    """Seed 000's health query: rows today and the ledger's size (bytes and human-readable)."""
    rows = await rows_today(engine, now=now)
    size = await table_size_bytes(engine)
    [(pretty,)] = await _fetch(engine, select(func.pg_size_pretty(literal(size, BigInteger))))
    return LedgerHealth(rows_today=rows, table_size_bytes=size, table_size=str(pretty))


async def quiet_hours(
    engine: AsyncEngine, *, min_calls: int = 10, hours: int = 24, now: datetime | None = None
) -> list[HourlyCount]:
    """UTC hours in the last `hours` (whole hours before `now`'s hour) with fewer than `min_calls` calls.

    Hours with no calls at all are included with `calls=0`. The current, unfinished hour is left out
    so that it does not raise a false alarm every morning.
    """
    if min_calls < 1 or not 1 <= hours <= 24 * 366:
        raise InvalidRequestError("min_calls must be >= 1 and hours between 1 and 8784")
    end = _now(now).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=hours)
    check_period(start, end)
    stmt = text(
        """
        SELECT h.hour, count(c.created_at) AS calls
          FROM generate_series(CAST(:start AS timestamptz), CAST(:last AS timestamptz), interval '1 hour') AS h(hour)
          LEFT JOIN ai_calls c ON c.created_at >= h.hour AND c.created_at < h.hour + interval '1 hour'
         GROUP BY h.hour
        HAVING count(c.created_at) < :min_calls
         ORDER BY h.hour
        """
    ).bindparams(start=start, last=end - timedelta(hours=1), min_calls=min_calls)
    rows = await _fetch(engine, stmt)
    return [HourlyCount(hour=row[0].astimezone(UTC), calls=int(row[1])) for row in rows]


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """One row of seed 000's "recent reconciliation status"."""

    report_date: date
    period_start: datetime
    period_end: datetime
    source: str
    status: str | None
    total_calls: int
    vendor_calls: int | None
    variance_pct: Decimal | None
    cost_variance_pct: Decimal | None
    coverage_pct: Decimal | None
    generated_at: datetime


async def recent_reports(engine: AsyncEngine, *, limit: int = 7) -> list[ReportSummary]:
    """The newest reports (seed 000: `ORDER BY report_date DESC LIMIT 7`), newest period first."""
    if not 1 <= limit <= 1000:
        raise InvalidRequestError("limit must be between 1 and 1000")
    r = ReconciliationReport
    stmt = (
        select(
            r.report_date,
            r.period_start,
            r.period_end,
            r.source,
            r.status,
            r.total_calls,
            r.revenium_calls,
            r.variance_pct,
            r.cost_variance_pct,
            r.coverage_pct,
            r.generated_at,
        )
        .order_by(r.report_date.desc(), r.period_end.desc(), r.source)
        .limit(limit)
    )
    rows = await _fetch(engine, stmt)
    return [ReportSummary(*row) for row in rows]
