"""The audit of status changes: every transition appends its `request_transitions` row in its own
statement; a refused or rolled-back transition leaves none."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.audit import audit_context
from persistence.errors import ConflictError
from persistence.requests import (
    InvalidTransitionError,
    LeaseLostError,
    RequestRecord,
    Requests,
    Worker,
    archive_requests,
    ensure_request_partitions,
)

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
SHA = hashlib.sha256(b"result").digest()

Row = tuple[str, str | None, str, int, str | None, uuid.UUID | None, str | None]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _trail(requests: Requests, request_id: uuid.UUID) -> list[Row]:
    return [
        (t.action, t.from_status, t.to_status, t.attempt, t.worker_id, t.lease_id, t.actor)
        for t in await requests.transitions("acme", request_id)
    ]


async def _count(conn: AsyncConnection) -> int:
    return int((await conn.execute(text("SELECT count(*) FROM request_transitions"))).scalar_one())


async def test_the_lifecycle_leaves_one_row_per_transition_at_the_servers_clock(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    requests = Requests(engine)
    with audit_context(user_id="alice"):
        created = await requests.create("acme", "u1", "gpt-4o", "Translate", now=T0)
    rid = created.request_id
    [claim] = await requests.claim(Worker("w1"), 1, lease=LEASE, now=at(1))
    await requests.heartbeat(claim, now=at(2))  # not a status change: no row
    await requests.complete(claim, result_sha256=SHA, now=at(3))

    assert await _trail(requests, rid) == [
        ("create", None, "queued", 0, None, None, "alice"),
        ("claim", "queued", "processing", 1, claim.worker_id, claim.lease_id, None),
        ("complete", "processing", "completed", 1, claim.worker_id, claim.lease_id, None),
    ]
    times = [t.at for t in await requests.transitions("acme", rid)]
    server_now = (await connection.execute(text("SELECT clock_timestamp()"))).scalar_one()
    # The caller's `now` (March 2026) drives the lease, never the audit's time.
    assert times == sorted(times) and all(abs(t - server_now) < timedelta(minutes=5) for t in times)
    assert await requests.transitions("other-co", rid) == []


async def test_a_refused_transition_writes_no_row(engine: AsyncEngine, connection: AsyncConnection) -> None:
    requests = Requests(engine)
    created = await requests.create("acme", "u1", "gpt-4o", "p", now=T0)
    [claim] = await requests.claim(Worker("w1"), 1, lease=LEASE, now=at(1))
    before = await _count(connection)

    forged = type(claim)(**{**claim.__dict__, "lease_id": uuid.uuid4()})
    with pytest.raises(LeaseLostError):
        await requests.complete(forged, now=at(2))
    with pytest.raises(LeaseLostError):
        await requests.fail(claim, "late", now=at(40))  # its lease expired at 31
    with pytest.raises(LeaseLostError):
        await requests.release(forged, now=at(2))
    with pytest.raises(InvalidTransitionError):
        await requests.start("acme", created.request_id, Worker("w2"), now=at(2))  # already processing
    with pytest.raises(ConflictError):
        await requests.create("acme", "u1", "gpt-4o", "p", request_id=created.request_id, now=at(2))
    assert await _count(connection) == before

    await requests.complete(claim, now=at(3))
    finished = await _count(connection)
    assert finished == before + 1
    with pytest.raises(InvalidTransitionError):
        await requests.cancel("acme", created.request_id, now=at(4))
    with pytest.raises(InvalidTransitionError):
        await requests.create("acme", "u1", "gpt-4o", "p", request_id=created.request_id, now=at(4))
    with pytest.raises(LeaseLostError):
        await requests.acknowledge_cancel(claim, now=at(4))
    assert await _count(connection) == finished


async def test_a_sweeper_requeue_and_a_refused_late_finisher_leave_exactly_their_transitions(
    engine: AsyncEngine,
) -> None:
    requests = Requests(engine)
    rid = (await requests.create("acme", "u1", "gpt-4o", "p", now=T0)).request_id
    [dead] = await requests.claim(Worker("node-a"), 1, lease=LEASE, now=at(1))
    assert (await requests.sweep(now=at(30))).requeued == []  # live lease: nothing, no row
    assert (await requests.sweep(now=at(32))).requeued == [rid]
    [alive] = await requests.claim(Worker("node-a"), 1, lease=LEASE, now=at(34))
    with pytest.raises(LeaseLostError):
        await requests.complete(dead, result_sha256=SHA, now=at(35))
    await requests.complete(alive, now=at(36))
    with pytest.raises(LeaseLostError):
        await requests.complete(dead, now=at(37))

    assert await _trail(requests, rid) == [
        ("create", None, "queued", 0, None, None, None),
        ("claim", "queued", "processing", 1, dead.worker_id, dead.lease_id, None),
        # The sweeper names the lease it took away.
        ("sweep", "processing", "queued", 1, dead.worker_id, dead.lease_id, None),
        ("claim", "queued", "processing", 2, alive.worker_id, alive.lease_id, None),
        ("complete", "processing", "completed", 2, alive.worker_id, alive.lease_id, None),
    ]


async def test_cancel_release_fail_expire_and_the_sweepers_outcomes_are_audited(engine: AsyncEngine) -> None:
    requests = Requests(engine, max_attempts=1)
    ids = [
        (await requests.create("acme", "u1", "gpt-4o", f"p{k}", now=at(k / 10))).request_id for k in range(6)
    ]
    cancelled, flagged, released, failed, swept, expired = ids
    with audit_context(user_id="bob"):
        await requests.cancel("acme", cancelled, now=at(1))
    claims = {c.request_id: c for c in await requests.claim(Worker("w"), 4, lease=LEASE, now=at(2))}
    assert set(claims) == {flagged, released, failed, swept}
    with audit_context(user_id="carol"):
        assert (await requests.cancel("acme", flagged, now=at(3))).outcome == "requested"
        assert (await requests.cancel("acme", flagged, now=at(4))).outcome == "requested"  # flagged once
    await requests.acknowledge_cancel(claims[flagged], now=at(5))
    await requests.release(claims[released], now=at(5))
    await requests.fail(claims[failed], "boom", now=at(5))
    assert (await requests.expire_queued(timedelta(seconds=3), now=at(6))) != []
    assert (await requests.sweep(now=at(40))).failed == [swept]

    w, lease = claims[flagged].worker_id, claims[flagged].lease_id
    tails = {rid: (await _trail(requests, rid))[1:] for rid in ids}
    assert tails[cancelled] == [("cancel", "queued", "cancelled", 0, None, None, "bob")]
    assert tails[flagged] == [
        ("claim", "queued", "processing", 1, w, lease, None),
        ("request_cancel", "processing", "processing", 1, w, lease, "carol"),
        ("acknowledge_cancel", "processing", "cancelled", 1, w, lease, None),
    ]
    r = claims[released]
    assert tails[released][1:] == [("release", "processing", "queued", 1, r.worker_id, r.lease_id, None)]
    f = claims[failed]
    assert tails[failed][1:] == [("fail", "processing", "failed", 1, f.worker_id, f.lease_id, None)]
    s = claims[swept]
    assert tails[swept][1:] == [("sweep", "processing", "failed", 1, s.worker_id, s.lease_id, None)]
    assert tails[expired] == [("expire", "queued", "expired", 0, None, None, None)]
    # The released request was queued again at 5 s, so it is not among those expired at 6 s.
    assert [t[0] for t in tails[released]] == ["claim", "release"]


class _Refuse:
    """Hooks whose `finished` raises: the transition's statement and its row roll back together."""

    async def queued(self, raw: asyncpg.Connection, record: RequestRecord) -> None:
        return None

    async def finished(self, raw: asyncpg.Connection, record: RequestRecord) -> None:
        raise RuntimeError("settlement failed")


async def test_a_transition_rolled_back_by_its_hook_leaves_no_row(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    requests = Requests(engine, hooks=_Refuse())
    rid = (await requests.create("acme", "u1", "gpt-4o", "p", now=T0)).request_id
    [claim] = await requests.claim(Worker("w"), 1, lease=LEASE, now=at(1))
    with pytest.raises(RuntimeError):
        await requests.complete(claim, now=at(2))
    assert [t[0] for t in await _trail(requests, rid)] == ["create", "claim"]
    assert (await requests.status("acme", rid)).status == "processing"


async def test_transitions_are_partitioned_and_archived_with_their_months_history(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    jan = datetime(2025, 1, 20, 9, tzinfo=UTC)
    requests = Requests(engine)
    created = await ensure_request_partitions(engine, ahead=2, today=date(2025, 1, 5))
    assert created == [date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)]
    rid = (await requests.create("acme", "u1", "m1", "p", now=jan)).request_id
    [claim] = await requests.claim(Worker("w"), 1, now=jan)
    await requests.complete(claim, now=jan + timedelta(seconds=1))

    async def homes() -> list[str]:
        rows = await connection.execute(
            text("SELECT DISTINCT tableoid::regclass::text FROM request_transitions WHERE request_id = :r"),
            {"r": rid},
        )
        return list(rows.scalars())

    assert await homes() == ["request_transitions_p2025_01"]
    report = await archive_requests(engine, today=date(2025, 3, 15))
    assert report.archived == ["requests_archive_p2025_01"]
    assert await homes() == []
    kept = await connection.execute(text("SELECT count(*) FROM request_transitions_archive_p2025_01"))
    assert kept.scalar_one() == 3
    await archive_requests(engine, today=date(2025, 4, 15), mode="drop")
    tables = await connection.execute(
        text("SELECT to_regclass('request_transitions_p2025_02'), to_regclass('request_history_p2025_02')")
    )
    assert tables.one() == (None, None)


async def test_a_start_by_id_is_audited_as_start_and_kept_connections_audit_the_same(
    engine: AsyncEngine,
) -> None:
    async with Requests(engine, connections=1) as requests:
        rid = (await requests.create("acme", "u1", "gpt-4o", "p", now=T0)).request_id
        claim = await requests.start("acme", rid, Worker("consumer"), lease=LEASE, now=at(1))
        await requests.fail(claim, "model refused", now=at(2))
        assert await _trail(requests, rid) == [
            ("create", None, "queued", 0, None, None, None),
            ("start", "queued", "processing", 1, claim.worker_id, claim.lease_id, None),
            ("fail", "processing", "failed", 1, claim.worker_id, claim.lease_id, None),
        ]
