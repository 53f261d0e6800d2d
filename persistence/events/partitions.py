"""Partitions of the event tables: days (platform events) and months (cost events, executions)
created ahead, each table's default partition, retention by DROP, and an alert (a warning log line
and the report's `default_rows`) when rows sit in a default partition.

Retention drops whole partitions past the cutoff (seed 004 keeps platform events 3 years, cost
events 7: `retention_days=1096, retention_months=84`); None (the default) keeps everything. Cost
events and agent executions have hourly rollups (`events.rollups`), which are never dropped, and a
retention guard: a partition is dropped only if every (tenant, hour) bucket of its range agrees
with the rollups + unfolded deltas (a row that reached it without the trigger, e.g. under
`session_replication_role = replica`, makes it skipped, with a `SkippedDrop` in the report and a
warning, never dropped), and the drop's own transaction locks the partition, then folds every
delta, then drops, as the ledger's retention does. The queries keep their answers for the dropped
range (see `events.queries` for zones whose offset is not a whole number of hours). A run folds
the rollups first.

The ledger's pattern (`ai_calls.partitions`), shared rather than copied: each DDL step is its own
short transaction under `lock_timeout` (`_step`), months are counted by `add_months`, and the SQL
function (`analytics.ensure_partition`, revision 0020: the ledger's `ai_calls_ensure_partition` for
any table) moves a new range's rows out of the default partition before creating it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.partitions import _step, add_months
from persistence.ai_calls.rollups import _on_raw
from persistence.errors import ValidationError
from persistence.events.rollups import (
    EVENT_ROLLUP_LOCK,
    FOLD_AGENT,
    FOLD_COST,
    UNROLLED,
    fold_event_rollups,
    unrolled_buckets_raw,
)
from persistence.observe.loggers import get_logger

__all__ = [
    "EVENT_TABLES",
    "EventPartitionReport",
    "SkippedDrop",
    "event_partitions",
    "maintain_event_partitions",
]

Grain = Literal["day", "month"]
# table -> its partitions' grain
EVENT_TABLES: dict[str, Grain] = {
    "platform_events": "day",
    "tenant_cost_events": "month",
    "agent_executions": "month",
}
log = get_logger("persistence.events")
_NAME = re.compile(r"(?P<table>[a-z_]+)_p(?P<y>\d{4})_(?P<m>\d{2})(?:_(?P<d>\d{2}))?")


@dataclass(frozen=True, slots=True)
class SkippedDrop:
    """A partition past retention that was kept: `buckets` (tenant, hour) buckets of its range are
    not (or not exactly) in the rollups, so dropping it would lose events."""

    table: str
    start: date
    reason: Literal["not_in_rollups"]
    buckets: int


@dataclass
class EventPartitionReport:
    """What `maintain_event_partitions` did (or, with `dry_run`, would do), per table."""

    existing: dict[str, list[date]] = field(default_factory=dict)
    created: dict[str, list[date]] = field(default_factory=dict)
    dropped: dict[str, list[date]] = field(default_factory=dict)
    # Past retention but kept by the retention guard (not in `dropped`).
    skipped: list[SkippedDrop] = field(default_factory=list)
    defaults_created: list[str] = field(default_factory=list)
    # Rows found in each default partition (counted up to 10,000): they belong in a partition that
    # does not exist yet (an event far in the past or future); > 0 is worth an alert.
    default_rows: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


async def event_partitions(engine: AsyncEngine) -> tuple[dict[str, list[date]], set[str]]:
    """(each table's partition start dates, the tables that have their default partition)."""
    found: dict[str, list[date]] = {table: [] for table in EVENT_TABLES}
    defaults: set[str] = set()
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT p.relname, c.relname FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                "JOIN pg_namespace n ON n.oid = p.relnamespace "
                "WHERE n.nspname = 'analytics' AND p.relname = ANY(:tables)"
            ),
            {"tables": list(EVENT_TABLES)},
        )
        for parent, name in rows:
            if name == f"{parent}_default":
                defaults.add(parent)
            elif (match := _NAME.fullmatch(name)) and match["table"] == parent:
                found[parent].append(date(int(match["y"]), int(match["m"]), int(match["d"] or 1)))
    return {table: sorted(starts) for table, starts in found.items()}, defaults


def _ranges(grain: Grain, today: date, days_ahead: int, months_ahead: int) -> list[date]:
    if grain == "day":
        return [today + timedelta(days=k) for k in range(days_ahead + 1)]
    return [add_months(today.replace(day=1), k) for k in range(months_ahead + 1)]


def _bounds(grain: Grain, start: date) -> tuple[datetime, datetime]:
    end = start + timedelta(days=1) if grain == "day" else add_months(start, 1)
    return datetime(start.year, start.month, start.day, tzinfo=UTC), datetime(
        end.year, end.month, end.day, tzinfo=UTC
    )


async def maintain_event_partitions(
    engine: AsyncEngine,
    *,
    days_ahead: int = 7,
    months_ahead: int = 2,
    retention_days: int | None = None,
    retention_months: int | None = None,
    dry_run: bool = False,
    lock_timeout_ms: int = 5000,
    today: date | None = None,
) -> EventPartitionReport:
    """Ensure daily partitions of `platform_events` for today and the next `days_ahead` days,
    monthly ones of the other two tables for this month and the next `months_ahead`, and each
    table's default partition (UTC ranges); rows already in a default partition move to their new
    one. With `retention_days` (platform events) / `retention_months` (the others), drop the
    partitions that ended more than that long ago."""
    for name, value in (("days_ahead", days_ahead), ("months_ahead", months_ahead)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 366:
            raise ValidationError(f"{name} must be an int in [0, 366], got {value!r}")
    for name, keep in (("retention_days", retention_days), ("retention_months", retention_months)):
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValidationError(f"{name} must be a positive int or None, got {keep!r}")
    if isinstance(lock_timeout_ms, bool) or not isinstance(lock_timeout_ms, int) or lock_timeout_ms < 1:
        raise ValidationError(f"lock_timeout_ms must be a positive int, got {lock_timeout_ms!r}")
    now = today or datetime.now(UTC).date()
    existing, defaults = await event_partitions(engine)
    report = EventPartitionReport(existing=existing, dry_run=dry_run)
    for table, grain in EVENT_TABLES.items():
        report.created[table] = [
            start for start in _ranges(grain, now, days_ahead, months_ahead) if start not in existing[table]
        ]
    report.defaults_created = [table for table in EVENT_TABLES if table not in defaults]
    for table, grain in EVENT_TABLES.items():
        keep = retention_days if grain == "day" else retention_months
        if keep is None:
            report.dropped[table] = []
            continue
        cutoff = now - timedelta(days=keep) if grain == "day" else add_months(now.replace(day=1), -keep)
        past = [start for start in existing[table] if _bounds(grain, start)[1].date() <= cutoff]
        report.dropped[table] = await _guarded(engine, table, grain, past, report.skipped)
    report.default_rows = await _default_rows(engine, [t for t in EVENT_TABLES if t in defaults])
    for table, rows in report.default_rows.items():
        if rows:
            log.warning("rows in a default partition: create the partitions they belong to",
                        table=f"analytics.{table}_default", rows=rows)  # fmt: skip
    if dry_run:
        return report
    await fold_event_rollups(engine)
    for table, starts in report.created.items():
        grain = EVENT_TABLES[table]
        for start in starts:
            lo, hi = _bounds(grain, start)
            suffix = f"{start:%Y_%m_%d}" if grain == "day" else f"{start:%Y_%m}"
            await _step(
                engine,
                lock_timeout_ms,
                "SELECT analytics.ensure_partition(CAST(:parent AS regclass), :part, :lo, :hi)",
                {"parent": f"analytics.{table}", "part": f"{table}_p{suffix}", "lo": lo, "hi": hi},
            )
    for table, starts in report.dropped.items():
        for start in starts:
            suffix = f"{start:%Y_%m_%d}" if EVENT_TABLES[table] == "day" else f"{start:%Y_%m}"
            name = f'analytics."{table}_p{suffix}"'
            # Once the partition is locked no writer is still adding to it, so the fold takes every
            # delta of its rows. The rollup lock comes first, in a fold's own order.
            fold_first = (
                (f"SELECT pg_advisory_xact_lock({EVENT_ROLLUP_LOCK})", f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE",
                 FOLD_COST, FOLD_AGENT)
                if table in UNROLLED
                else ()
            )  # fmt: skip
            await _step(engine, lock_timeout_ms, f"DROP TABLE IF EXISTS {name}", {}, before=fold_first)
    for table in report.defaults_created:
        create = (
            f"CREATE TABLE IF NOT EXISTS analytics.{table}_default PARTITION OF analytics.{table} DEFAULT"
        )
        if table in UNROLLED:
            # As revision 0022 does: ensure_partition's move out of it (DELETE here, INSERT into the
            # parent) must net to zero in the rollups' deltas.
            await _step(engine, lock_timeout_ms, _DEFAULT_TRIGGER.format(table=table), {}, before=(create,))
        else:
            await _step(engine, lock_timeout_ms, create, {})
    return report


_DEFAULT_TRIGGER = (
    "CREATE TRIGGER {table}_hourly_delete AFTER DELETE ON analytics.{table}_default "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION analytics.{table}_to_hourly()"
)


async def _guarded(
    engine: AsyncEngine, table: str, grain: Grain, starts: list[date], skipped: list[SkippedDrop]
) -> list[date]:
    """The partitions of `starts` whose rows are all in the rollups (all of them for a table without
    rollups); the others are added to `skipped` and logged."""
    if table not in UNROLLED:
        return starts
    keep: list[date] = []
    for start in starts:
        lo, hi = _bounds(grain, start)
        buckets = await _on_raw(engine, lambda raw: unrolled_buckets_raw(raw, table, lo, hi))  # noqa: B023 (awaited here)
        if buckets:
            skipped.append(SkippedDrop(table, start, "not_in_rollups", buckets))
            log.warning("partition past retention kept: its rows are not all in the rollups",
                        table=f"analytics.{table}", start=start.isoformat(), buckets=buckets)  # fmt: skip
        else:
            keep.append(start)
    return keep


async def _default_rows(engine: AsyncEngine, tables: list[str]) -> dict[str, int]:
    if not tables:
        return {}
    parts = " UNION ALL ".join(
        f"SELECT '{t}', (SELECT count(*) FROM (SELECT 1 FROM analytics.{t}_default LIMIT 10000) s)"  # noqa: S608 (constant names)
        for t in tables
    )
    async with engine.connect() as conn:
        return {str(table): int(rows) for table, rows in await conn.execute(text(parts))}
