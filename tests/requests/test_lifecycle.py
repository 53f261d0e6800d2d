"""The request lifecycle against a real PostgreSQL: every transition, every refusal, leases."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.errors import ConflictError, InvalidRequestError, NotFoundError, PersistenceError
from persistence.requests import (
    Claim,
    HistoryCursor,
    InvalidTransitionError,
    LeaseLostError,
    RequestRecord,
    Requests,
    SweepReport,
    Worker,
)

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
SHA = hashlib.sha256(b"Le texte traduit").digest()
README = Path(__file__).resolve().parents[2] / "README.md"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _queued(
    requests: Requests, n: int = 1, *, user: str = "u1", when: datetime = T0
) -> list[uuid.UUID]:
    ids = []
    for k in range(n):
        record = await requests.create(
            "acme", user, "gpt-4o", f"prompt {k}", estimated_tokens=150, now=when + timedelta(milliseconds=k)
        )
        ids.append(record.request_id)
    return ids


async def _claimed(requests: Requests, worker: Worker | None = None, *, now: datetime = T0) -> Claim:
    [claim] = await requests.claim(worker or Worker("w1"), 1, lease=LEASE, now=now)
    return claim


async def _table_of(conn: AsyncConnection, request_id: uuid.UUID) -> list[str]:
    rows = await conn.execute(
        text(
            "SELECT 'inflight' FROM request_inflight WHERE request_id = :r "
            "UNION ALL SELECT 'history' FROM request_history WHERE request_id = :r"
        ),
        {"r": request_id},
    )
    return list(rows.scalars())


# -- the happy path (seed 001's lifecycle) ------------------------------------------------------------


async def test_queued_processing_completed_moves_the_row_to_the_history(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    requests = Requests(engine)
    created = await requests.create("acme", "u1", "gpt-4o", "Translate...", estimated_tokens=150, now=T0)
    assert (created.status, created.queued_at, created.processing_at) == ("queued", T0, None)
    assert await _table_of(connection, created.request_id) == ["inflight"]

    claim = await _claimed(requests, now=at(1))
    assert claim.request_id == created.request_id and claim.attempts == 1
    assert claim.lease_until == at(31) and claim.worker_id.startswith("w1/")
    assert (await requests.status("acme", created.request_id)).status == "processing"

    done = await requests.complete(
        claim, prompt_tokens=120, completion_tokens=80, result_sha256=SHA, now=at(2.5)
    )
    assert done.status == "completed"
    assert (done.queued_at, done.processing_at, done.completed_at) == (T0, at(1), at(2.5))
    assert (done.failed_at, done.cancelled_at, done.expired_at) == (None, None, None)
    assert (done.prompt_tokens, done.completion_tokens, done.total_tokens) == (120, 80, 200)
    assert done.processing_time_ms == 1500 and done.result_sha256 == SHA and done.error_message is None
    assert await _table_of(connection, created.request_id) == ["history"]
    assert await requests.status("acme", created.request_id) == done


async def test_status_of_an_unknown_request_or_another_tenants_is_not_found(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    [rid] = await _queued(requests)
    with pytest.raises(NotFoundError):
        await requests.status("acme", uuid.uuid4())
    with pytest.raises(NotFoundError):
        await requests.status("other-co", rid)


async def test_fail_records_the_error_and_its_timestamp(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    await _queued(requests)
    claim = await _claimed(requests)
    failed = await requests.fail(claim, "model overloaded", prompt_tokens=120, completion_tokens=0, now=at(2))
    assert (failed.status, failed.failed_at, failed.completed_at) == ("failed", at(2), None)
    assert failed.error_message == "model overloaded" and failed.total_tokens == 120
    assert failed.processing_time_ms == 2000


async def test_cancel_a_queued_request_finishes_it_at_once(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    [rid] = await _queued(requests)
    outcome = await requests.cancel("acme", rid, now=at(1))
    assert outcome.outcome == "cancelled" and outcome.record is not None
    assert (outcome.record.status, outcome.record.cancelled_at) == ("cancelled", at(1))
    assert await requests.claim(Worker("w1"), 10, now=at(2)) == []  # nothing left to claim


async def test_cancel_while_processing_is_a_flag_the_worker_sees_on_heartbeat(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    [rid] = await _queued(requests)
    claim = await _claimed(requests)
    assert (await requests.heartbeat(claim, lease=LEASE, now=at(5))).cancel_requested is False
    assert (await requests.cancel("acme", rid, now=at(6))).outcome == "requested"
    assert (await requests.status("acme", rid)).status == "processing"  # not overwritten
    beat = await requests.heartbeat(claim, lease=LEASE, now=at(7))
    assert beat.cancel_requested and beat.lease_until == at(37)
    cancelled = await requests.acknowledge_cancel(claim, now=at(8))
    assert (cancelled.status, cancelled.cancel_requested_at, cancelled.cancelled_at) == (
        "cancelled",
        at(6),
        at(8),
    )


async def test_expire_queued_only_takes_requests_queued_too_long(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    [started] = await _queued(requests, when=T0 - timedelta(seconds=1))
    await requests.start("acme", started, Worker("w"), lease=timedelta(hours=1), now=T0)
    [old] = await _queued(requests, when=T0)
    [new] = await _queued(requests, when=at(50))
    expired = await requests.expire_queued(timedelta(seconds=60), now=at(70))
    assert [r.request_id for r in expired] == [old] and expired[0].expired_at == at(70)
    assert (await requests.status("acme", new)).status == "queued"
    assert (await requests.status("acme", started)).status == "processing"  # only queued ones expire


# -- invalid transitions: refused in the statement, naming the current state ---------------------------


async def test_every_transition_out_of_a_finished_request_is_refused(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    [rid] = await _queued(requests)
    claim = await _claimed(requests)
    done = await requests.complete(claim, now=at(1))
    attempts = {
        "complete": requests.complete(claim, now=at(2)),
        "fail": requests.fail(claim, "late", now=at(2)),
        "be cancelled": requests.acknowledge_cancel(claim, now=at(2)),
        "heartbeat": requests.heartbeat(claim, now=at(2)),
        "be released": requests.release(claim, now=at(2)),
    }
    for transition, attempt in attempts.items():
        with pytest.raises(LeaseLostError) as lost:
            await attempt
        assert (lost.value.transition, lost.value.current) == (transition, "completed")
    with pytest.raises(InvalidTransitionError) as refused:
        await requests.start("acme", rid, Worker("w2"), now=at(2))
    assert refused.value.current == "completed" and not isinstance(refused.value, LeaseLostError)
    with pytest.raises(InvalidTransitionError, match="is completed"):
        await requests.cancel("acme", rid, now=at(2))
    assert await requests.status("acme", rid) == done  # nothing was overwritten


async def test_a_request_id_cannot_be_created_twice(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    [rid] = await _queued(requests)
    with pytest.raises(ConflictError, match="pk_request_inflight"):
        await requests.create("acme", "u1", "gpt-4o", "again", request_id=rid, now=at(1))
    await requests.complete(await _claimed(requests), now=at(2))
    with pytest.raises(InvalidTransitionError, match="is completed") as refused:
        await requests.create("acme", "u1", "gpt-4o", "again", request_id=rid, now=at(3))
    assert refused.value.transition == "be created again"
    assert (await requests.recent("acme", "u1")).items[0].prompt == "prompt 0"


async def test_start_refuses_a_request_already_processing(engine: AsyncEngine) -> None:
    """A duplicate delivery from the external queue must not take the request from its worker."""
    requests = Requests(engine)
    [rid] = await _queued(requests)
    first = await requests.start("acme", rid, Worker("w1"), lease=LEASE, now=at(1))
    with pytest.raises(InvalidTransitionError) as refused:
        await requests.start("acme", rid, Worker("w2"), lease=LEASE, now=at(2))
    assert refused.value.current == "processing"
    assert (await requests.complete(first, now=at(3))).worker_id == first.worker_id


async def test_a_queued_request_cannot_be_completed_with_a_made_up_lease(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    [rid] = await _queued(requests)
    claim = await _claimed(requests)
    forged = Claim(**{**claim.__dict__, "lease_id": uuid.uuid4()})
    with pytest.raises(LeaseLostError, match="another worker"):
        await requests.complete(forged, now=at(1))
    await requests.release(claim, now=at(2))
    with pytest.raises(LeaseLostError, match="re-queued") as lost:
        await requests.complete(claim, now=at(3))
    assert lost.value.current == "queued"
    with pytest.raises(NotFoundError):
        await requests.complete(Claim(**{**claim.__dict__, "request_id": uuid.uuid4()}), now=at(3))
    assert (await requests.status("acme", rid)).status == "queued"


async def test_the_status_check_constraint_rejects_unknown_states(connection: AsyncConnection) -> None:
    with pytest.raises(Exception, match="ck_request_inflight_status_known"):
        async with connection.begin_nested():
            await connection.execute(
                text(
                    "INSERT INTO request_inflight (company_id, request_id, user_id, model_id, prompt, status) "
                    "VALUES ('acme', gen_random_uuid(), 'u1', 'm', 'p', 'done')"
                )
            )


async def test_bad_arguments_are_refused_before_any_sql(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    await _queued(requests)
    claim = await _claimed(requests)
    with pytest.raises(InvalidRequestError):
        await requests.complete(claim, result_sha256=b"short")
    with pytest.raises(InvalidRequestError):
        await requests.complete(claim, prompt_tokens=-1)
    with pytest.raises(InvalidRequestError):
        await requests.claim(Worker("w"), 0)
    with pytest.raises(InvalidRequestError):
        await requests.create("acme", "u1", "m", "p", now=T0.replace(tzinfo=None))  # naive


# -- leases and fencing -----------------------------------------------------------------------------


async def test_an_expired_lease_cannot_finish_even_before_the_sweeper_runs(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    [rid] = await _queued(requests)
    claim = await _claimed(requests)
    with pytest.raises(LeaseLostError, match="lease expired at") as lost:
        await requests.complete(claim, now=at(31))
    assert lost.value.current == "processing"
    with pytest.raises(LeaseLostError):
        await requests.heartbeat(claim, now=at(31))
    # A heartbeat in time keeps it: the deadline moves.
    again = await _claimed_after_sweep(requests, at(40))
    await requests.heartbeat(again, lease=LEASE, now=at(65))
    assert (await requests.sweep(now=at(80))).requeued == []  # past the first deadline, not the renewed one
    assert (await requests.complete(again, now=at(90))).status == "completed"
    # A finished request is out of the sweeper's reach (River #1302: a rescuer moved completions back).
    assert await requests.sweep(now=at(10_000)) == SweepReport([], [], [])
    assert (await requests.status("acme", rid)).attempts == 2


async def _claimed_after_sweep(requests: Requests, now: datetime) -> Claim:
    report = await requests.sweep(now=now)
    assert len(report.requeued) == 1
    return await _claimed(requests, Worker("w2"), now=now)


async def test_a_killed_worker_is_requeued_once_completed_once_and_its_late_finish_refused(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    """Must-show 2: worker 1 dies mid-request (it stops heartbeating); its lease expires, the sweeper
    re-queues the request once, worker 2 completes it once, and worker 1's late finish is refused."""
    requests = Requests(engine)
    [rid] = await _queued(requests)
    dead = await _claimed(requests, Worker("node-a"), now=at(1))

    assert (await requests.sweep(now=at(30))).requeued == []  # lease still live: left alone
    report = await requests.sweep(now=at(32))
    assert report.requeued == [rid] and report.failed == []
    assert (await requests.sweep(now=at(33))).requeued == []  # once

    # The replacement has the same node name (a restarted pod): the boot id tells them apart.
    alive = await _claimed(requests, Worker("node-a"), now=at(34))
    assert alive.lease_id != dead.lease_id and alive.worker_id != dead.worker_id and alive.attempts == 2
    with pytest.raises(LeaseLostError) as lost:
        await requests.complete(dead, result_sha256=SHA, now=at(35))
    assert lost.value.current == "processing"
    done = await requests.complete(alive, prompt_tokens=1, completion_tokens=2, now=at(36))
    with pytest.raises(LeaseLostError):
        await requests.complete(dead, now=at(37))
    assert done.worker_id == alive.worker_id and done.result_sha256 is None
    history = (
        await connection.execute(
            text("SELECT count(*) FROM request_history WHERE request_id = :r"), {"r": rid}
        )
    ).scalar()
    assert history == 1


async def test_the_sweeper_fails_a_request_after_max_attempts_and_honours_cancellation(
    engine: AsyncEngine,
) -> None:
    requests = Requests(engine, max_attempts=2)
    [rid] = await _queued(requests)
    [flagged] = await _queued(requests, when=at(0.5))
    await requests.claim(Worker("w"), 2, lease=LEASE, now=at(1))
    await requests.cancel("acme", flagged, now=at(2))
    first = await requests.sweep(now=at(40))
    assert first.requeued == [rid] and first.cancelled == [flagged]
    await _claimed(requests, now=at(41))
    second = await requests.sweep(now=at(80))
    assert second.failed == [rid] and second.requeued == []
    record = await requests.status("acme", rid)
    assert (record.status, record.failed_at, record.attempts) == ("failed", at(80), 2)
    assert record.error_message is not None and "lease expired on attempt 2 of 2" in record.error_message
    assert (await requests.status("acme", flagged)).status == "cancelled"


async def test_claim_takes_the_oldest_first_in_batches_with_distinct_leases(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    ids = await _queued(requests, 5)
    first = await requests.claim(Worker("w"), 3, lease=LEASE, now=at(1))
    assert [c.request_id for c in first] == ids[:3]
    assert len({c.lease_id for c in first}) == 3
    rest = await requests.claim(Worker("w"), 10, lease=LEASE, now=at(1))
    assert [c.request_id for c in rest] == ids[3:]


async def test_kept_connections_give_the_same_answers_and_refusals(engine: AsyncEngine) -> None:
    async with Requests(engine, connections=2) as requests:
        [rid] = await _queued(requests)
        claim = await _claimed(requests)
        assert (await requests.complete(claim, now=at(1))).status == "completed"
        with pytest.raises(LeaseLostError):
            await requests.complete(claim, now=at(2))
        assert (await requests.status("acme", rid)).status == "completed"
    with pytest.raises(PersistenceError):
        await requests.status("acme", rid)  # closed


# -- history and stats --------------------------------------------------------------------------------


async def test_a_users_recent_requests_by_keyset_span_both_tables(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    ids = await _queued(requests, 5)
    await _queued(requests, 2, user="someone-else", when=at(0.5))
    for _ in range(3):
        claim = await _claimed(requests, now=at(1))
        await requests.complete(claim, now=at(2))
    page = await requests.recent("acme", "u1", limit=2)
    assert [r.request_id for r in page.items] == [ids[4], ids[3]] and page.next is not None
    page2 = await requests.recent("acme", "u1", limit=2, after=page.next)
    page3 = await requests.recent("acme", "u1", limit=2, after=page2.next)
    assert [r.request_id for r in page2.items + page3.items] == [ids[2], ids[1], ids[0]]
    assert [r.status for r in page.items + page2.items + page3.items] == ["queued"] * 2 + ["completed"] * 3
    assert page3.next is None
    assert (await requests.recent("acme", "u1", after=HistoryCursor(T0, ids[0]))).items == []


async def test_request_stats_come_from_the_rollup_kept_by_the_finishing_statements(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    requests = Requests(engine, max_attempts=1)
    await _queued(requests, 4)
    claims = await requests.claim(Worker("w"), 4, lease=LEASE, now=at(1))
    await requests.complete(claims[0], total_tokens=10, now=at(2))
    await requests.complete(claims[1], total_tokens=20, now=at(4))
    await requests.fail(claims[2], "boom", now=at(1.5))
    assert (await requests.sweep(now=at(100))).failed == [claims[3].request_id]
    [row] = await requests.stats("acme", date(2026, 3, 10), date(2026, 3, 11))
    assert (row.user_id, row.model_id, row.request_count, row.failure_count) == ("u1", "gpt-4o", 4, 2)
    assert row.completed_count == 2 and row.total_tokens == 30
    assert str(row.avg_processing_time) == "1500.000"  # (1000 + 3000 + 500) / 3; the swept one has none
    assert await requests.stats("acme", date(2026, 3, 11), date(2026, 3, 12)) == []
    raw = (
        await connection.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE status = 'failed'), avg(processing_time_ms) "
                "FROM request_history WHERE company_id = 'acme'"
            )
        )
    ).one()
    assert (raw[0], raw[1], round(raw[2], 3)) == (4, 2, row.avg_processing_time)
    seed = (await connection.execute(text("SELECT request_count, failure_count FROM request_stats"))).one()
    assert tuple(seed) == (4, 2)


async def test_hooks_run_in_the_transition_transaction_and_roll_it_back(engine: AsyncEngine) -> None:
    """The quota seam: hooks share the transition's transaction (one that raises undoes it), and the
    reservation id given at creation reaches the finishing hook."""
    seen: list[tuple[str, str]] = []

    class Hooks:
        async def queued(self, raw: asyncpg.Connection, record: RequestRecord) -> None:
            assert raw.is_in_transaction()
            seen.append(("queued", record.status))

        async def finished(self, raw: asyncpg.Connection, record: RequestRecord) -> None:
            seen.append(("finished", record.status))
            if record.status == "failed":
                raise RuntimeError("quota settle failed")

    requests = Requests(engine, hooks=Hooks())
    reservation = uuid.uuid4()
    rid = (await requests.create("acme", "u1", "gpt-4o", "p", reservation_id=reservation, now=T0)).request_id
    claim = await _claimed(requests)
    assert claim.reservation_id == reservation
    with pytest.raises(RuntimeError):
        await requests.fail(claim, "x", now=at(1))
    assert (await requests.status("acme", rid)).status == "processing"
    done = await requests.complete(claim, now=at(2))
    assert seen == [("queued", "queued"), ("finished", "failed"), ("finished", "completed")]
    assert done.reservation_id == reservation  # what the settle hook needs


async def test_the_readme_example_runs_as_written(engine: AsyncEngine, connection: AsyncConnection) -> None:
    """README's "Inference requests" block, as written (its top-level awaits inside a coroutine)."""
    section = README.read_text().split("## Inference requests\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec("async def snippet(engine):\n" + "".join(f"    {line}\n" for line in code.splitlines()), namespace)  # noqa: S102 (our README)
    await namespace["snippet"](engine)
    row = (
        await connection.execute(
            text(
                "SELECT r.status, r.total_tokens, s.request_count "
                "FROM requests r JOIN request_stats s USING (company_id, user_id)"
            )
        )
    ).one()
    assert tuple(row) == ("completed", 200, 1)
