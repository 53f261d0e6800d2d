"""Values of the request lifecycle: worker identity, claims, records, reports, and the hooks seam."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal, Protocol

import asyncpg

__all__ = [
    "CancelOutcome",
    "Claim",
    "Heartbeat",
    "HistoryCursor",
    "HistoryPage",
    "LedgerCall",
    "QueueHealth",
    "RequestHooks",
    "RequestRecord",
    "RequestResult",
    "RequestStatsRow",
    "SweepReport",
    "TransitionRecord",
    "Worker",
]

RequestStatus = Literal["queued", "processing", "completed", "failed", "cancelled", "expired"]
TransitionAction = Literal[
    "create",
    "claim",
    "start",
    "release",
    "complete",
    "fail",
    "acknowledge_cancel",
    "cancel",
    "request_cancel",
    "sweep",
    "expire",
]


@dataclass(frozen=True)
class Worker:
    """Who holds a lease: a name and the boot id of this process, so a restarted worker under the
    same name (a reused node or pod name) is a different holder and cannot hide orphans."""

    name: str
    boot_id: uuid.UUID = field(default_factory=uuid.uuid4)

    @classmethod
    def local(cls, name: str | None = None) -> Worker:
        """`host:pid` (or `name`) with a fresh boot id."""
        return cls(name or f"{socket.gethostname()}:{os.getpid()}")

    @property
    def id(self) -> str:
        return f"{self.name}/{self.boot_id}"


@dataclass(frozen=True)
class Claim:
    """A request a worker holds: present it (its `lease_id` is the fencing token) to heartbeat,
    complete, fail or release it."""

    company_id: str
    request_id: uuid.UUID
    user_id: str
    model_id: str
    prompt: str
    estimated_tokens: int | None
    attempts: int
    max_attempts: int
    worker_id: str
    lease_id: uuid.UUID
    lease_until: datetime
    created_at: datetime
    reservation_id: uuid.UUID | None


@dataclass(frozen=True)
class Heartbeat:
    """The extended lease, and whether someone asked to cancel the request meanwhile."""

    lease_until: datetime
    cancel_requested: bool


@dataclass(frozen=True)
class RequestRecord:
    """One request as seed 001's `requests` shows it: status, one timestamp per state, tokens,
    error, the result's sha-256 (a row of the result store) and `ai_call_id`, the ledger row
    (`ai_calls.id`) of the model call whose outcome the request recorded (None while in flight,
    or when the worker passed none)."""

    company_id: str
    request_id: uuid.UUID
    created_at: datetime
    user_id: str
    model_id: str
    prompt: str
    status: RequestStatus
    updated_at: datetime
    queued_at: datetime
    processing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    expired_at: datetime | None
    cancel_requested_at: datetime | None
    processing_time_ms: int | None
    estimated_tokens: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    error_message: str | None
    result_sha256: bytes | None
    attempts: int
    worker_id: str | None
    reservation_id: uuid.UUID | None
    ai_call_id: int | None
    result: RequestResult | None = None
    """The stored result, read by `Requests.status`'s join (None elsewhere, or without a result)."""

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled", "expired")


@dataclass(frozen=True)
class RequestResult:
    """A request's result as the status check returns it: text as `str`, JSON parsed, binary as
    `bytes`; `streamed` (and `content` None) when it is stored in chunks: read it with
    `ResultStore.stream(company_id, sha256)`."""

    sha256: bytes
    kind: Literal["text", "json", "binary"]
    mime_type: str
    size_bytes: int
    content: object
    streamed: bool


@dataclass(frozen=True)
class TransitionRecord:
    """One audited status change of a request (a row of `request_transitions`).

    `action` is the transition (`sweep` for the sweeper's re-queue, fail or cancel), `from_status`
    None on creation; `request_cancel` keeps the status (processing) and records the flag.
    `worker_id` / `lease_id` name the lease it was made under or, for `sweep`, the lease that
    expired; `attempt` is the attempt count after it; `actor` the `audit_context` user of a
    client's `create` or `cancel`; `at` the server's clock when it was written."""

    at: datetime
    action: TransitionAction
    from_status: RequestStatus | None
    to_status: RequestStatus
    attempt: int
    worker_id: str | None
    lease_id: uuid.UUID | None
    actor: str | None


@dataclass(frozen=True)
class LedgerCall:
    """The AI-call ledger's row (`ai_calls`) a request links by its `ai_call_id`: the model call's
    tokens, cost and outcome. `request_id` is the provider's request id (the ledger's own column)."""

    id: int
    created_at: datetime
    provider: str
    model: str
    status: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: Decimal | None
    cost_source: str
    latency_ms: int | None
    request_id: str | None
    trace_id: str | None


@dataclass(frozen=True)
class CancelOutcome:
    """`cancelled`: the request was queued and is now cancelled (`record`); `requested`: it is
    processing and its worker will see the request on its next heartbeat."""

    outcome: Literal["cancelled", "requested"]
    record: RequestRecord | None


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did to requests whose lease had expired."""

    requeued: list[uuid.UUID]
    failed: list[uuid.UUID]
    cancelled: list[uuid.UUID]


@dataclass(frozen=True)
class HistoryCursor:
    """Where a page of a user's history ended (keyset: created_at, request_id, newest first)."""

    created_at: datetime
    request_id: uuid.UUID


@dataclass(frozen=True)
class HistoryPage:
    items: list[RequestRecord]
    next: HistoryCursor | None


@dataclass(frozen=True)
class RequestStatsRow:
    """A row of seed 001's `request_stats` (UTC day of creation, finished requests)."""

    day: date
    user_id: str
    model_id: str
    request_count: int
    avg_processing_time: Decimal | None
    failure_count: int
    completed_count: int
    cancelled_count: int
    expired_count: int
    total_tokens: int


@dataclass(frozen=True)
class QueueHealth:
    """The in-flight table and what keeps its dead rows from being vacuumed.

    `dead_tuples` come from the statistics system (flushed by each backend about once a second).
    The oldest snapshot is the backend holding back the xmin horizon: while it stays open, no
    vacuum can remove rows deleted after it started, and claims slow down with every finished
    request."""

    queued: int
    processing: int
    oldest_queued_at: datetime | None
    live_tuples: int
    dead_tuples: int
    last_autovacuum: datetime | None
    last_vacuum: datetime | None
    autovacuum_count: int
    oldest_snapshot_pid: int | None
    oldest_snapshot_xid_age: int | None
    oldest_snapshot_age: timedelta | None
    oldest_snapshot_state: str | None
    server_now: datetime

    def snapshot_older_than(self, limit: timedelta) -> bool:
        """Whether a snapshot older than `limit` is open (warn: the queue table is bloating)."""
        return self.oldest_snapshot_age is not None and self.oldest_snapshot_age > limit


class RequestHooks(Protocol):
    """Work that must commit with a transition (the quota tie: reserve when queued, settle when
    finished). Each hook runs on the connection and inside the transaction of the transition's
    statement, right after it; raising rolls the transition back."""

    async def queued(self, raw: asyncpg.Connection, record: RequestRecord) -> None: ...

    async def finished(self, raw: asyncpg.Connection, record: RequestRecord) -> None: ...
