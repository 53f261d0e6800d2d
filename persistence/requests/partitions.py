"""Seed 001's partitioning and archiving of `requests`, as typed operations on `request_history`.

Partitioning: one partition per UTC month (`ensure_request_partitions` creates this month and the
next `ahead`; rows that went to the default partition move into their new month). Archiving: the
seed's "INSERT INTO requests_archive ...; DELETE FROM requests ..." becomes a detach (the month's
partition becomes a standalone table, `requests_archive_pYYYY_MM`, still queryable, no longer in
`requests`) or a drop, of whole months older than the cut-off, never a DELETE (deletes bloat).
`request_stats_daily` is a separate table: the statistics of archived months stay.
`request_transitions` (the audit of status changes) is partitioned the same way and follows the
history: its months are created, detached (as `request_transitions_archive_pYYYY_MM`) or dropped
in the same step as the history's.

Each DDL step is its own short transaction under `lock_timeout`, so maintenance never queues
behind (and blocks) live writers for long; a step that cannot get its lock raises `TransientError`
and can be re-run. The history keeps a default partition (late finishers of a month already
archived land there), so DETACH ... CONCURRENTLY is not available; the plain DETACH holds its lock
for a catalog change only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.partitions import add_months
from persistence.errors import ValidationError, raise_translated

__all__ = ["ArchiveReport", "archive_requests", "ensure_request_partitions", "request_partition_months"]

_NAME = re.compile(r"request_history_p(\d{4})_(\d{2})")
_TRANSITIONS_NAME = re.compile(r"request_transitions_p(\d{4})_(\d{2})")


@dataclass
class ArchiveReport:
    """What `archive_requests` did (or, with `dry_run`, would do): months and table names."""

    mode: str
    months: list[date] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    """With mode 'detach': the standalone tables the months became (seed 001's `requests_archive`)."""
    dry_run: bool = False


async def _months(engine: AsyncEngine, parent: str, pattern: re.Pattern[str]) -> list[date]:
    async with engine.connect() as conn:
        names = (
            await conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = CAST(:parent AS regclass)"
                ),
                {"parent": parent},
            )
        ).scalars()
        return sorted(date(int(m[1]), int(m[2]), 1) for name in names if (m := pattern.fullmatch(name)))


async def request_partition_months(engine: AsyncEngine) -> list[date]:
    """Months that have a partition attached to `request_history`."""
    return await _months(engine, "request_history", _NAME)


async def _step(
    engine: AsyncEngine, lock_timeout_ms: int, statements: list[str], params: dict[str, object]
) -> None:
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{lock_timeout_ms}ms"}
            )
            for sql in statements:
                await conn.execute(text(sql), params)
    except DBAPIError as exc:
        raise_translated(exc)


async def ensure_request_partitions(
    engine: AsyncEngine, *, ahead: int = 2, today: date | None = None, lock_timeout_ms: int = 5000
) -> list[date]:
    """Create the partitions of this month and the next `ahead` months; returns the months created."""
    if ahead < 0 or lock_timeout_ms < 1:
        raise ValidationError("ahead must be >= 0 and lock_timeout_ms >= 1")
    this_month = (today or datetime.now(UTC).date()).replace(day=1)
    existing = set(await request_partition_months(engine))
    existing &= set(await _months(engine, "request_transitions", _TRANSITIONS_NAME))
    created = [m for m in (add_months(this_month, k) for k in range(ahead + 1)) if m not in existing]
    for month in created:
        await _step(
            engine,
            lock_timeout_ms,
            [
                "SELECT request_history_ensure_partition(:m)",
                "SELECT request_transitions_ensure_partition(:m)",
            ],
            {"m": month},
        )
    return created


async def archive_requests(
    engine: AsyncEngine,
    *,
    older_than: timedelta = timedelta(days=30),
    mode: Literal["detach", "drop"] = "detach",
    dry_run: bool = False,
    today: date | None = None,
    lock_timeout_ms: int = 5000,
) -> ArchiveReport:
    """Seed 001's "archive completed requests older than 30 days": every monthly partition whose
    whole month ended at least `older_than` ago is detached (kept as its own table) or dropped."""
    if mode not in ("detach", "drop") or older_than < timedelta(0) or lock_timeout_ms < 1:
        raise ValidationError("mode is 'detach' or 'drop', older_than >= 0, lock_timeout_ms >= 1")
    cutoff = datetime.combine(today or datetime.now(UTC).date(), datetime.min.time(), UTC) - older_than
    report = ArchiveReport(mode=mode, dry_run=dry_run)
    for month in await request_partition_months(engine):
        end = datetime(*add_months(month, 1).timetuple()[:3], tzinfo=UTC)
        if end <= cutoff:
            report.months.append(month)
            report.tables.append(f"request_history_p{month:%Y_%m}")
    if dry_run:
        return report
    audit_months = set(await _months(engine, "request_transitions", _TRANSITIONS_NAME))
    for month, name in zip(report.months, report.tables, strict=True):
        # Names are built from dates above (digits only), never from caller text.
        archive = f"requests_archive_p{month:%Y_%m}"
        audit, audit_archive = (
            f"request_transitions_p{month:%Y_%m}",
            f"request_transitions_archive_p{month:%Y_%m}",
        )
        statements = (
            [
                f'ALTER TABLE request_history DETACH PARTITION "{name}"',
                f'ALTER TABLE "{name}" RENAME TO "{archive}"',
            ]
            if mode == "detach"
            else [f'DROP TABLE IF EXISTS "{name}"']
        )
        if mode == "drop":
            statements.append(f'DROP TABLE IF EXISTS "{audit}"')
        elif month in audit_months:
            statements += [
                f'ALTER TABLE request_transitions DETACH PARTITION "{audit}"',
                f'ALTER TABLE "{audit}" RENAME TO "{audit_archive}"',
            ]
        await _step(engine, lock_timeout_ms, statements, {})
        if mode == "detach":
            report.archived.append(archive)
    return report
