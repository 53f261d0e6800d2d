"""Monthly partitions of `ai_calls`: create the coming months, drop those past retention.

Retention by DROP, not DELETE (field notes 4: deletes bloat). Every DDL step runs in its own short
transaction under `lock_timeout`, so maintenance never queues behind (and blocks) live writers for
long: if the lock is not granted in time the step fails with `TransientError` and can be re-run.
Rollups are kept when a month is dropped (they are the long-term history): the month's pending
batches are folded in the dropping transaction, after its lock, so no call's usage goes with it.
The idempotency keys of the dropped calls are deleted with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.rollups import FOLD, ROLLUP_LOCK
from persistence.errors import ValidationError, raise_translated

__all__ = ["PartitionReport", "add_months", "maintain_partitions", "partition_months"]

_NAME = re.compile(r"ai_calls_p(\d{4})_(\d{2})")
DEFAULT_PARTITION = "ai_calls_default"


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


@dataclass
class PartitionReport:
    """What `maintain_partitions` did (or, with `dry_run`, would do)."""

    existing: list[date] = field(default_factory=list)
    created: list[date] = field(default_factory=list)
    dropped: list[date] = field(default_factory=list)
    default_created: bool = False
    keys_deleted: int = 0
    dry_run: bool = False


async def partition_months(engine: AsyncEngine) -> tuple[list[date], bool]:
    """(months that have a partition, whether the default partition exists)."""
    async with engine.connect() as conn:
        names = (
            await conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'ai_calls'::regclass"
                )
            )
        ).scalars()
        months, default = [], False
        for name in names:
            match = _NAME.fullmatch(name)
            if match:
                months.append(date(int(match[1]), int(match[2]), 1))
            default = default or name == DEFAULT_PARTITION
    return sorted(months), default


async def _step(
    engine: AsyncEngine,
    lock_timeout_ms: int,
    sql: str,
    params: dict[str, object],
    *,
    before: tuple[str, ...] = (),
) -> int:
    """`sql` in its own transaction under `lock_timeout`, after the parameterless `before` statements."""
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{lock_timeout_ms}ms"}
            )
            for statement in before:
                await conn.exec_driver_sql(statement)
            result = await conn.execute(text(sql), params)
            return result.rowcount if result.returns_rows is False else 0
    except DBAPIError as exc:
        raise_translated(exc)


# The keys of calls whose rows are gone. Not every key older than the month: older calls may still
# sit in the default partition. Also catches keys a run that stopped after its DROP left behind.
# Maintenance across tenants (each key's probe is its own tenant's primary key).
_DELETE_ORPHAN_KEYS = """
DELETE FROM ai_call_keys k
 WHERE k.call_created_at < :end
   AND NOT EXISTS (SELECT 1 FROM ai_calls c WHERE c.organization_id = k.organization_id
                      AND c.created_at = k.call_created_at AND c.id = k.call_id)
"""


async def maintain_partitions(
    engine: AsyncEngine,
    *,
    ahead: int = 2,
    retention_months: int | None = None,
    dry_run: bool = False,
    lock_timeout_ms: int = 5000,
    today: date | None = None,
) -> PartitionReport:
    """Ensure partitions for this month and the next `ahead` months (and the default partition);
    with `retention_months`, drop monthly partitions that ended more than that many months ago."""
    if ahead < 0 or (retention_months is not None and retention_months < 1) or lock_timeout_ms < 1:
        raise ValidationError("ahead must be >= 0, retention_months >= 1, lock_timeout_ms >= 1")
    now = today or datetime.now(UTC).date()
    this_month = now.replace(day=1)
    existing, has_default = await partition_months(engine)
    report = PartitionReport(existing=existing, dry_run=dry_run)
    report.created = [m for m in (add_months(this_month, k) for k in range(ahead + 1)) if m not in existing]
    report.default_created = not has_default
    if retention_months is not None:
        cutoff = add_months(this_month, -retention_months)
        report.dropped = [m for m in existing if m < cutoff]
    if dry_run:
        return report
    for month in report.created:
        await _step(engine, lock_timeout_ms, "SELECT ai_calls_ensure_partition(:m)", {"m": month})
    if report.default_created:
        await _step(
            engine,
            lock_timeout_ms,
            f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF ai_calls DEFAULT",
            {},
        )
    for month in report.dropped:
        name = f"ai_calls_p{month:%Y_%m}"
        # Once the partition is locked no writer is still adding to it, so the fold sees every
        # pending batch with rows there. The rollup lock comes first, in a fold's own order.
        fold_first = (
            f"SELECT pg_advisory_xact_lock({ROLLUP_LOCK})",
            f'LOCK TABLE "{name}" IN ACCESS EXCLUSIVE MODE',
            FOLD,
        )
        await _step(engine, lock_timeout_ms, f'DROP TABLE IF EXISTS "{name}"', {}, before=fold_first)
        end = datetime(*add_months(month, 1).timetuple()[:3], tzinfo=UTC)
        report.keys_deleted += await _step(engine, lock_timeout_ms, _DELETE_ORPHAN_KEYS, {"end": end})
    return report
