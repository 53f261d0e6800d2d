"""Seed 001's partitioning and archiving as typed operations: months detached or dropped, rollups kept."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.requests import (
    Requests,
    Worker,
    archive_requests,
    ensure_request_partitions,
    request_partition_months,
)

JAN = datetime(2025, 1, 20, 9, tzinfo=UTC)
FEB = datetime(2025, 2, 20, 9, tzinfo=UTC)
MAR = datetime(2025, 3, 20, 9, tzinfo=UTC)


async def _completed(requests: Requests, when: datetime) -> None:
    await requests.create("acme", "u1", "m1", "p", now=when)
    [claim] = await requests.claim(Worker("w"), 1, now=when)
    await requests.complete(claim, total_tokens=5, now=when + timedelta(seconds=1))


async def _partition_of(conn: AsyncConnection, when: datetime) -> list[str]:
    rows = await conn.execute(
        text("SELECT tableoid::regclass::text FROM request_history WHERE created_at = :t"), {"t": when}
    )
    return list(rows.scalars())


async def test_months_are_created_ahead_and_stranded_rows_move_in(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    requests = Requests(engine)
    await _completed(requests, JAN)
    assert await _partition_of(connection, JAN) == ["request_history_default"]
    created = await ensure_request_partitions(engine, ahead=2, today=date(2025, 1, 5))
    assert created == [date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)]
    assert await _partition_of(connection, JAN) == ["request_history_p2025_01"]
    assert await ensure_request_partitions(engine, ahead=2, today=date(2025, 1, 5)) == []
    assert set(created) <= set(await request_partition_months(engine))


async def test_archiving_detaches_or_drops_whole_old_months_and_keeps_the_stats(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    requests = Requests(engine)
    await ensure_request_partitions(engine, ahead=2, today=date(2025, 1, 5))
    for when in (JAN, FEB, MAR):
        await _completed(requests, when)
    # Still in flight when its month is archived: it finishes later, into the default partition.
    late = await requests.create("acme", "u1", "m1", "late", now=JAN)

    planned = await archive_requests(engine, today=date(2025, 3, 15), dry_run=True)
    assert planned.months == [date(2025, 1, 1)] and planned.dry_run
    assert await _partition_of(connection, JAN) == ["request_history_p2025_01"]  # nothing happened

    detached = await archive_requests(engine, today=date(2025, 3, 15))  # 30 days: January ended Feb 1
    assert detached.months == [date(2025, 1, 1)] and detached.archived == ["requests_archive_p2025_01"]
    seen = await connection.execute(text("SELECT count(*) FROM requests WHERE created_at = :t"), {"t": JAN})
    assert seen.scalar() == 1  # only the late one, still in flight
    kept = await connection.execute(text("SELECT count(*), min(status) FROM requests_archive_p2025_01"))
    assert tuple(kept.one()) == (1, "completed")

    [claim] = await requests.claim(Worker("w"), 1, now=MAR)
    assert claim.request_id == late.request_id
    await requests.complete(claim, now=MAR)
    assert (await requests.status("acme", late.request_id)).status == "completed"

    dropped = await archive_requests(engine, today=date(2025, 4, 15), mode="drop")
    assert dropped.months == [date(2025, 2, 1)] and dropped.archived == []
    assert date(2025, 2, 1) not in await request_partition_months(engine)
    gone = await connection.execute(text("SELECT to_regclass('request_history_p2025_02') IS NULL"))
    assert gone.scalar() is True

    # The rollup still has every month: January's two requests, February's, March's.
    stats = await requests.stats("acme", date(2025, 1, 1), date(2025, 4, 1))
    assert [(row.day, row.request_count) for row in stats] == [
        (date(2025, 1, 20), 2),
        (date(2025, 2, 20), 1),
        (date(2025, 3, 20), 1),
    ]
