"""Seed 001's request lifecycle: queued -> processing -> completed / failed / cancelled / expired.

`Requests(engine)` is both the queue (`claim`: FOR UPDATE SKIP LOCKED in batches) and the source
of truth behind an external one (`start` a request a message from RabbitMQ named). Each transition
is one statement that names the states it may start from; a worker's transitions also name its
lease (the fencing token a claim hands out), so a worker whose lease expired, or whose request was
re-queued and claimed by another, is refused with `LeaseLostError` instead of overwriting. `sweep`
re-queues requests whose lease expired (failing them after `max_attempts`) with the same guard.

Statements run on raw asyncpg connections: by default one checked out of the engine's pool per
call; with `connections=n`, up to n connections kept checked out for the object's lifetime (close
it, or use `async with`), which saves the pool's checkout on every call (a worker's hot path).
With `hooks`, a transition and its hook share one transaction (the quota seam). Every method takes `now` for tests that drive time;
by default the database server's clock decides.

Ties to the rest. The audit: every status change (and a cancellation request) appends its
`request_transitions` row in the transition's own statement (`transitions` reads them), so a
refused transition writes none. The ledger: the request is the authority on which model call
answered it. `complete` / `fail` / `acknowledge_cancel` take `ai_call_id` (what
`AICallLogger.log_call` returned) and store it in the finishing statement; `ai_call` follows it to
the ledger row, `requests_for_ai_call` comes back from a call. The ledger's own `request_id` stays
the provider's request id: it is half of the ledger's idempotency key, so a second attempt's call
carrying our request id would be taken for a retry of the first attempt's call.

Row-level security (revision 0026). Every call that names a company (`create`, `cancel`, `start`,
the reads) or holds a claim on one company's request (`heartbeat`, `release`, `complete`, `fail`,
`acknowledge_cancel`) acts as that company's tenant (`tenancy.as_tenant`), so a service login
(`persistence_service`) can run it; inside another company's `tenant()` context it is refused
before any statement. `claim`, `sweep`, `expire_queued`, `fold_stats` and `health` span tenants:
platform work, run as the owner or as `persistence_operator` (a service login sees no queue).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.leases import Leases
from persistence.ai_calls.rollups import _on_raw
from persistence.audit import current_audit
from persistence.errors import Endpoint, InvalidRequestError, NotFoundError
from persistence.requests import sql
from persistence.requests.errors import InvalidTransitionError, LeaseLostError
from persistence.requests.types import (
    CancelOutcome,
    Claim,
    Heartbeat,
    HistoryCursor,
    HistoryPage,
    LedgerCall,
    QueueHealth,
    RequestHooks,
    RequestRecord,
    RequestResult,
    RequestStatsRow,
    SweepReport,
    TransitionRecord,
    Worker,
)
from persistence.results.store import STREAMED, inline_content
from persistence.tenancy import as_tenant, check_tenant

__all__ = ["Requests"]

T = TypeVar("T")
_RECORD_FIELDS = [name.strip() for name in sql.RECORD_COLUMNS.split(",")]
_CANCEL_ATTEMPTS = 5
_MAX_BIGINT = 2**63 - 1


def _record(row: asyncpg.Record) -> RequestRecord:
    return RequestRecord(**{name: row[name] for name in _RECORD_FIELDS})


def _claim(row: asyncpg.Record) -> Claim:
    return Claim(
        company_id=row["company_id"],
        request_id=row["request_id"],
        user_id=row["user_id"],
        model_id=row["model_id"],
        prompt=row["prompt"],
        estimated_tokens=row["estimated_tokens"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        worker_id=row["worker_id"],
        lease_id=row["lease_id"],
        lease_until=row["lease_until"],
        created_at=row["created_at"],
        reservation_id=row["reservation_id"],
    )


def _moment(now: datetime | None) -> datetime | None:
    if now is not None and now.utcoffset() is None:
        raise InvalidRequestError("now must be timezone-aware")
    return now


def _seconds(name: str, span: timedelta) -> float:
    if span <= timedelta(0):
        raise InvalidRequestError(f"{name} must be positive, got {span}")
    return span.total_seconds()


def _tokens(
    prompt_tokens: int | None, completion_tokens: int | None, total_tokens: int | None
) -> tuple[int | None, int | None, int | None]:
    """Checked token counts; the total defaults to prompt + completion when both are known."""
    prompt = _count("prompt_tokens", prompt_tokens)
    completion = _count("completion_tokens", completion_tokens)
    total = _count("total_tokens", total_tokens)
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return prompt, completion, total


def _count(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidRequestError(f"{name} must be an int >= 0 or None, got {value!r}")
    return value


def _call_id(value: int | None) -> int | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_BIGINT
    ):
        raise InvalidRequestError(
            f"ai_call_id must be a ledger call id (a positive int) or None, got {value!r}"
        )
    return value


def _sha(value: bytes | None) -> bytes | None:
    if value is not None and (not isinstance(value, bytes) or len(value) != 32):
        raise InvalidRequestError("result_sha256 must be 32 bytes (a sha-256 digest)")
    return value


async def _refusal(
    raw: asyncpg.Connection, company_id: str, request_id: uuid.UUID, transition: str, lease: uuid.UUID | None
) -> InvalidTransitionError:
    """Why a transition matched no row, read right after it (the error path only)."""
    row = await raw.fetchrow(sql.CURRENT, company_id, request_id)
    if row is None:
        raise NotFoundError("request", request_id)
    current: str = row["status"]
    if lease is None:
        return InvalidTransitionError(request_id, transition, current)
    if row["lease_id"] == lease:
        detail = f"its lease expired at {row['lease_until'].isoformat()}"
    elif current == "processing":
        detail = "its lease now belongs to another worker"
    elif current == "queued":
        detail = "its lease expired and it was re-queued"
    else:
        detail = "it was finished under another lease"
    return LeaseLostError(request_id, transition, current, detail)


async def _contained(raw: asyncpg.Connection, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`work` as it is on an idle connection (each statement commits); in a savepoint when the
    connection is already in a transaction (the test fixture's), so a refused statement cannot
    abort the enclosing one."""
    if not raw.is_in_transaction():
        return await work(raw)
    async with raw.transaction():
        return await work(raw)


class Requests:
    """The lifecycle, the queue, the sweeper, status and history of seed 001's requests."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lease: timedelta = timedelta(seconds=30),
        max_attempts: int = 3,
        hooks: RequestHooks | None = None,
        connections: int | None = None,
    ) -> None:
        if max_attempts < 1:
            raise InvalidRequestError("max_attempts must be >= 1")
        if connections is not None and connections < 1:
            raise InvalidRequestError("connections must be >= 1")
        self._engine = engine
        self._lease = _seconds("lease", lease)
        self._max_attempts = max_attempts
        self._hooks = hooks
        self._leases = (
            None if connections is None else Leases(engine, connections, Endpoint.of_url(engine.url))
        )

    async def __aenter__(self) -> Requests:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Give the kept connections back to the pool (nothing to do without `connections`)."""
        if self._leases is not None:
            await self._leases.close()

    async def _run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        # No retry on a lost connection: a transition is not idempotent (the error says so).
        if self._leases is None:
            return await _on_raw(self._engine, lambda raw: _contained(raw, work))
        async with self._leases.connection() as raw:
            return await work(raw)

    async def _in_transaction(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`work` in one transaction when hooks must commit with it, else as it is (autocommit)."""
        if self._hooks is None:
            return await self._run(work)

        async def atomic(raw: asyncpg.Connection) -> T:
            async with raw.transaction():
                return await work(raw)

        return await self._run(atomic)

    async def _for(
        self, company_id: str, work: Callable[[asyncpg.Connection], Awaitable[T]], *, atomic: bool = False
    ) -> T:
        """`_run` (`atomic`: `_in_transaction`) acting for `company_id` (`tenancy.as_tenant`): every
        call that names its company, a worker's finishing calls too (their claim names it). Refused
        before any statement inside another company's `tenant()` context."""
        check_tenant(company_id)

        def tenanted(raw: asyncpg.Connection) -> Awaitable[T]:
            return as_tenant(raw, company_id, work)

        return await (self._in_transaction(tenanted) if atomic else self._run(tenanted))

    async def _finished(self, raw: asyncpg.Connection, records: list[RequestRecord]) -> None:
        if self._hooks is not None:
            for record in records:
                await self._hooks.finished(raw, record)

    # -- creating and cancelling -------------------------------------------------------------------

    async def create(
        self,
        company_id: str,
        user_id: str,
        model_id: str,
        prompt: str,
        *,
        estimated_tokens: int | None = None,
        request_id: uuid.UUID | None = None,
        max_attempts: int | None = None,
        reservation_id: uuid.UUID | None = None,
        now: datetime | None = None,
    ) -> RequestRecord:
        """A new queued request (seed 001's "create request record (status=queued)").

        `reservation_id` links the quota reservation admitted for it (carried to the history, seen
        by `RequestHooks.finished` to settle or release it). Reusing the id of a request in flight
        raises `ConflictError`; of a finished one, `InvalidTransitionError` naming its state."""
        attempts = self._max_attempts if max_attempts is None else max_attempts
        if attempts < 1:
            raise InvalidRequestError("max_attempts must be >= 1")
        request_id_ = request_id or uuid.uuid4()
        args = (
            company_id,
            request_id_,
            user_id,
            model_id,
            prompt,
            _count("estimated_tokens", estimated_tokens),
            attempts,
            _moment(now),
            reservation_id,
            current_audit().user_id,
        )

        async def work(raw: asyncpg.Connection) -> RequestRecord:
            row = await raw.fetchrow(sql.CREATE, *args)
            if row is None:
                raise await _refusal(raw, company_id, request_id_, "be created again", None)
            record = _record(row)
            if self._hooks is not None:
                await self._hooks.queued(raw, record)
            return record

        return await self._for(company_id, work, atomic=True)

    async def cancel(
        self, company_id: str, request_id: uuid.UUID, *, now: datetime | None = None
    ) -> CancelOutcome:
        """Cancel a queued request now, or flag a processing one for its worker; a finished
        request raises `InvalidTransitionError` naming its state."""
        at = _moment(now)
        actor = current_audit().user_id

        async def work(raw: asyncpg.Connection) -> CancelOutcome | None:
            row = await raw.fetchrow(sql.CANCEL, company_id, request_id, at, actor)
            assert row is not None
            if row["status"] is not None:
                record = _record(row)
                await self._finished(raw, [record])
                return CancelOutcome("cancelled", record)
            if row["flagged"]:
                return CancelOutcome("requested", None)
            return None

        for _ in range(_CANCEL_ATTEMPTS):
            outcome = await self._for(company_id, work, atomic=True)
            if outcome is not None:
                return outcome
            # Neither branch matched: finished, missing, or claimed between snapshot and lock.
            refusal = await self._for(
                company_id, lambda raw: _refusal(raw, company_id, request_id, "be cancelled", None)
            )
            if refusal.current not in ("queued", "processing"):
                raise refusal
        raise refusal

    # -- workers -------------------------------------------------------------------------------------

    async def claim(
        self, worker: Worker, limit: int = 1, *, lease: timedelta | None = None, now: datetime | None = None
    ) -> list[Claim]:
        """Up to `limit` queued requests, oldest first, each with a fresh lease; requests other
        workers are claiming at the same moment are skipped, never waited for. Any company's:
        platform work (the owner or `persistence_operator`); `start` claims one company's by id."""
        if limit < 1:
            raise InvalidRequestError("limit must be >= 1")
        seconds = self._lease if lease is None else _seconds("lease", lease)
        args = (worker.id, limit, seconds, _moment(now))

        async def work(raw: asyncpg.Connection) -> list[Claim]:
            return [_claim(row) for row in await raw.fetch(sql.CLAIM, *args)]

        return await self._run(work)

    async def start(
        self,
        company_id: str,
        request_id: uuid.UUID,
        worker: Worker,
        *,
        lease: timedelta | None = None,
        now: datetime | None = None,
    ) -> Claim:
        """Claim one queued request by id (delivered by an external queue). A duplicate delivery
        of a request already processing or finished raises `InvalidTransitionError`."""
        seconds = self._lease if lease is None else _seconds("lease", lease)
        args = (company_id, request_id, worker.id, seconds, _moment(now))

        async def work(raw: asyncpg.Connection) -> Claim:
            row = await raw.fetchrow(sql.START, *args)
            if row is None:
                raise await _refusal(raw, company_id, request_id, "start", None)
            return _claim(row)

        return await self._for(company_id, work)

    async def heartbeat(
        self, claim: Claim, *, lease: timedelta | None = None, now: datetime | None = None
    ) -> Heartbeat:
        """Extend the lease; tells whether cancellation was requested. `LeaseLostError` if the
        lease is no longer this worker's (stop working on it)."""
        seconds = self._lease if lease is None else _seconds("lease", lease)
        args = (claim.company_id, claim.request_id, claim.lease_id, seconds, _moment(now))

        async def work(raw: asyncpg.Connection) -> Heartbeat:
            row = await raw.fetchrow(sql.HEARTBEAT, *args)
            if row is None:
                raise await _refusal(raw, claim.company_id, claim.request_id, "heartbeat", claim.lease_id)
            return Heartbeat(row["lease_until"], row["cancel_requested_at"] is not None)

        return await self._for(claim.company_id, work)

    async def release(self, claim: Claim, *, now: datetime | None = None) -> None:
        """Put a held request back in the queue (a worker shutting down); the attempt counts."""
        args = (claim.company_id, claim.request_id, claim.lease_id, _moment(now), claim.worker_id)

        async def work(raw: asyncpg.Connection) -> None:
            if await raw.fetchrow(sql.RELEASE, *args) is None:
                raise await _refusal(raw, claim.company_id, claim.request_id, "be released", claim.lease_id)

        await self._for(claim.company_id, work)

    async def _finish(self, claim: Claim, statement: str, transition: str, *extra: object) -> RequestRecord:
        args = (claim.company_id, claim.request_id, claim.lease_id, *extra)

        async def work(raw: asyncpg.Connection) -> RequestRecord:
            row = await raw.fetchrow(statement, *args)
            if row is None:
                raise await _refusal(raw, claim.company_id, claim.request_id, transition, claim.lease_id)
            record = _record(row)
            await self._finished(raw, [record])
            return record

        return await self._for(claim.company_id, work, atomic=True)

    async def complete(
        self,
        claim: Claim,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        total_tokens: int | None = None,
        result_sha256: bytes | None = None,
        ai_call_id: int | None = None,
        now: datetime | None = None,
    ) -> RequestRecord:
        """processing -> completed under the claim's lease; the row moves to the history and the
        rollup counts it, in one statement. `total_tokens` defaults to prompt + completion.
        `ai_call_id` links the ledger row of the model call (`AICallLogger.log_call`'s id)."""
        prompt, completion, total = _tokens(prompt_tokens, completion_tokens, total_tokens)
        return await self._finish(
            claim,
            sql.COMPLETE,
            "complete",
            _moment(now),
            prompt,
            completion,
            total,
            _sha(result_sha256),
            _call_id(ai_call_id),
        )

    async def fail(
        self,
        claim: Claim,
        error: str,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        total_tokens: int | None = None,
        ai_call_id: int | None = None,
        now: datetime | None = None,
    ) -> RequestRecord:
        """processing -> failed under the claim's lease, with the error message (and the ledger
        row of the model call, when one was made and logged)."""
        prompt, completion, total = _tokens(prompt_tokens, completion_tokens, total_tokens)
        return await self._finish(
            claim, sql.FAIL, "fail", _moment(now), error, prompt, completion, total, _call_id(ai_call_id)
        )

    async def acknowledge_cancel(
        self, claim: Claim, *, ai_call_id: int | None = None, now: datetime | None = None
    ) -> RequestRecord:
        """processing -> cancelled under the claim's lease: the worker stopped (after a heartbeat
        reported a cancellation request); `ai_call_id` as for `complete`, if a call was made."""
        return await self._finish(
            claim, sql.ACKNOWLEDGE_CANCEL, "be cancelled", _moment(now), _call_id(ai_call_id)
        )

    # -- recovery -------------------------------------------------------------------------------------

    async def sweep(self, *, limit: int = 1000, now: datetime | None = None) -> SweepReport:
        """Requests whose lease expired: re-queued while attempts remain, else failed (cancelled if
        cancellation was requested). A lease renewed or finished first is left alone. Spans
        tenants: platform work (the owner or `persistence_operator`)."""
        if limit < 1:
            raise InvalidRequestError("limit must be >= 1")
        at = _moment(now)

        async def work(raw: asyncpg.Connection) -> SweepReport:
            rows = await raw.fetch(sql.SWEEP, limit, at)
            report = SweepReport(requeued=[], failed=[], cancelled=[])
            finished = []
            for row in rows:
                if row["outcome"] == "requeued":
                    report.requeued.append(row["request_id"])
                else:
                    (report.failed if row["status"] == "failed" else report.cancelled).append(
                        row["request_id"]
                    )
                    finished.append((row["company_id"], row["request_id"]))
            if self._hooks is not None and finished:
                for company_id, request_id in finished:
                    record = await raw.fetchrow(sql.STATUS, company_id, request_id)
                    assert record is not None
                    await self._hooks.finished(raw, _record(record))
            return report

        report = await self._in_transaction(work)
        await self.fold_stats()  # a sweeper runs every few seconds: the rollup's fold rides along
        return report

    async def fold_stats(self, *, limit: int = 10_000) -> int:
        """Add the finishing statements' deltas to `request_stats_daily` (up to `limit` per
        statement, until none is left); returns how many deltas were folded. `sweep` calls it;
        `request_stats` is exact either way (it adds the unfolded deltas). Concurrent folds take
        disjoint deltas. Spans tenants: platform work."""
        if limit < 1:
            raise InvalidRequestError("limit must be >= 1")
        folded = 0
        while True:
            row = await self._run(lambda raw: raw.fetchrow(sql.FOLD_STATS, limit))
            assert row is not None
            deltas: int = row["deltas"]
            folded += deltas
            if deltas < limit:
                return folded

    async def expire_queued(
        self, older_than: timedelta, *, limit: int = 1000, now: datetime | None = None
    ) -> list[RequestRecord]:
        """Queued requests nobody started within `older_than`: queued -> expired. Spans tenants:
        platform work."""
        if limit < 1:
            raise InvalidRequestError("limit must be >= 1")
        args = (_seconds("older_than", older_than), limit, _moment(now))

        async def work(raw: asyncpg.Connection) -> list[RequestRecord]:
            records = [_record(row) for row in await raw.fetch(sql.EXPIRE_QUEUED, *args)]
            await self._finished(raw, records)
            return records

        return await self._in_transaction(work)

    # -- reading ----------------------------------------------------------------------------------------

    async def status(self, company_id: str, request_id: uuid.UUID) -> RequestRecord:
        """Seed 001's status check: one query by id (in flight or finished), joined to its result."""

        async def work(raw: asyncpg.Connection) -> RequestRecord:
            row = await raw.fetchrow(sql.STATUS, company_id, request_id)
            if row is None:
                raise NotFoundError("request", request_id)
            record = _record(row)
            if row["result_kind"] is None:
                return record
            content = inline_content(row["result_kind"], row["result_text"], row["result_bytes"])
            streamed = content is STREAMED
            result = RequestResult(
                sha256=row["result_sha256"],
                kind=row["result_kind"],
                mime_type=row["result_mime_type"],
                size_bytes=row["result_size_bytes"],
                content=None if streamed else content,
                streamed=streamed,
            )
            return dataclasses.replace(record, result=result)

        return await self._for(company_id, work)

    async def transitions(self, company_id: str, request_id: uuid.UUID) -> list[TransitionRecord]:
        """The audit of a request's status changes, oldest first (empty for an unknown request)."""

        async def work(raw: asyncpg.Connection) -> list[TransitionRecord]:
            return [
                TransitionRecord(
                    at=r["at"],
                    action=r["action"],
                    from_status=r["from_status"],
                    to_status=r["to_status"],
                    attempt=r["attempt"],
                    worker_id=r["worker_id"],
                    lease_id=r["lease_id"],
                    actor=r["actor"],
                )
                for r in await raw.fetch(sql.TRANSITIONS, company_id, request_id)
            ]

        return await self._for(company_id, work)

    async def ai_call(self, company_id: str, request_id: uuid.UUID) -> LedgerCall | None:
        """The ledger row of the model call the request recorded, in one query; None when it
        links none. `NotFoundError` for an unknown request, or when the linked call is not (or no
        longer, after the ledger's retention) in the ledger."""

        async def work(raw: asyncpg.Connection) -> LedgerCall | None:
            row = await raw.fetchrow(sql.AI_CALL, company_id, request_id)
            if row is None:
                raise NotFoundError("request", request_id)
            if row["linked"] is None:
                return None
            if row["id"] is None:
                raise NotFoundError("AI call", row["linked"])
            return LedgerCall(
                id=row["id"],
                created_at=row["created_at"],
                provider=row["provider"],
                model=row["model"],
                status=row["status"],
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                total_tokens=row["total_tokens"],
                cost_usd=row["cost_usd"],
                cost_source=row["cost_source"],
                latency_ms=row["latency_ms"],
                request_id=row["request_id"],
                trace_id=row["trace_id"],
            )

        return await self._for(company_id, work)

    async def requests_for_ai_call(self, company_id: str, ai_call_id: int) -> list[RequestRecord]:
        """The requests of `company_id` that recorded ledger call `ai_call_id` (one index lookup;
        several when one call answered several requests), oldest first."""
        call = _call_id(ai_call_id)

        async def work(raw: asyncpg.Connection) -> list[RequestRecord]:
            return [_record(row) for row in await raw.fetch(sql.FOR_AI_CALL, company_id, call)]

        return await self._for(company_id, work)

    async def recent(
        self, company_id: str, user_id: str, *, limit: int = 10, after: HistoryCursor | None = None
    ) -> HistoryPage:
        """A user's requests, newest first, a keyset page at a time (pass `page.next` back)."""
        if limit < 1:
            raise InvalidRequestError("limit must be >= 1")

        async def work(raw: asyncpg.Connection) -> HistoryPage:
            if after is None:
                rows = await raw.fetch(sql.RECENT_FIRST, company_id, user_id, limit)
            else:
                rows = await raw.fetch(
                    sql.RECENT_AFTER, company_id, user_id, limit, after.created_at, after.request_id
                )
            items = [_record(row) for row in rows]
            last = items[-1] if len(items) == limit else None
            return HistoryPage(
                items, None if last is None else HistoryCursor(last.created_at, last.request_id)
            )

        return await self._for(company_id, work)

    async def stats(
        self,
        company_id: str,
        start: date,
        end: date,
        *,
        user_id: str | None = None,
        model_id: str | None = None,
    ) -> list[RequestStatsRow]:
        """Seed 001's `request_stats` for days in [start, end), from the rollup plus the deltas not
        folded into it yet (always current)."""
        args = (company_id, start, end, user_id, model_id)

        async def work(raw: asyncpg.Connection) -> list[RequestStatsRow]:
            return [
                RequestStatsRow(
                    day=r["day"],
                    user_id=r["user_id"],
                    model_id=r["model_id"],
                    request_count=r["request_count"],
                    avg_processing_time=r["avg_processing_time"],
                    failure_count=r["failure_count"],
                    completed_count=r["completed_count"],
                    cancelled_count=r["cancelled_count"],
                    expired_count=r["expired_count"],
                    total_tokens=r["total_tokens"],
                )
                for r in await raw.fetch(sql.STATS, *args)
            ]

        return await self._for(company_id, work)

    async def health(self) -> QueueHealth:
        """Backlog, dead tuples of the in-flight table, and the oldest open snapshot (platform work:
        under row-level security a service login counts nothing)."""

        async def work(raw: asyncpg.Connection) -> QueueHealth:
            r = await raw.fetchrow(sql.HEALTH)
            assert r is not None
            return QueueHealth(
                queued=r["queued"],
                processing=r["processing"],
                oldest_queued_at=r["oldest_queued_at"],
                live_tuples=r["live_tuples"],
                dead_tuples=r["dead_tuples"],
                last_autovacuum=r["last_autovacuum"],
                last_vacuum=r["last_vacuum"],
                autovacuum_count=r["autovacuum_count"],
                oldest_snapshot_pid=r["oldest_snapshot_pid"],
                oldest_snapshot_xid_age=r["oldest_snapshot_xid_age"],
                oldest_snapshot_age=r["oldest_snapshot_xact_age"],
                oldest_snapshot_state=r["oldest_snapshot_state"],
                server_now=r["server_now"],
            )

        return await self._run(work)
