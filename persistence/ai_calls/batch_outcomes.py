"""What `BatchLogger` reports and how it judges a failed write: its stats and error types, a record as
a spool line and back, and refusal (a verdict on a call) versus outage (`is_refusal`).

Apart from `batch.py` so that the writer's state machine reads on its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from persistence.ai_calls.record import AICallRecord
from persistence.errors import (
    ConflictError,
    DatabaseError,
    IntegrityViolation,
    InvalidRequestError,
    PersistenceError,
    TenantIsolationError,
    TransientError,
)

__all__ = [
    "BatchStats",
    "RejectedCall",
    "RejectedCallsError",
    "UnwrittenCallsError",
    "decode_record",
    "describe_error",
    "encode_record",
    "is_refusal",
    "stable",
]

_FIELDS = [f.name for f in dataclasses.fields(AICallRecord) if f.init]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Counters: `buffered` now in memory, `pending_in_spool` now on disk; the rest are totals
    since the logger started (`set_aside`: spool lines that did not decode, moved to `corrupt-*.jsonl`;
    `queued`: records accepted; `dropped`: refused at a full buffer, only with overflow='drop';
    `waited`: times a producer had to wait for room in the buffer)."""

    buffered: int
    spooled: int
    replayed: int
    written: int
    rejected: int
    pending_in_spool: int
    set_aside: int = 0
    queued: int = 0
    dropped: int = 0
    waited: int = 0


@dataclass(frozen=True, slots=True)
class RejectedCall(Generic[R]):
    """A call (or event) the database refused for good, its error and its idempotency key."""

    record: R
    error: BaseException
    key: str = ""


class RejectedCallsError(DatabaseError):
    """The database refused some calls for good (not an outage); every other call was written.

    Raised by `flush()` / `close()` of a `BatchLogger` without `spool_dir` (with one, the calls are
    kept in `rejected.jsonl` instead). `rejected` holds each call and its error; the first error is
    chained as `__cause__`.
    """

    def __init__(self, rejected: Sequence[RejectedCall[Any]], *, noun: str = "AI call") -> None:
        self.rejected = list(rejected)
        shown = ", ".join(
            f"{r.key!r} ({type(r.error).__name__}"
            f"{f' SQLSTATE {code}' if (code := getattr(r.error, 'sqlstate', None)) else ''})"
            for r in self.rejected[:5]
        )
        more = f" and {len(self.rejected) - 5} more" if len(self.rejected) > 5 else ""
        super().__init__(f"{len(self.rejected)} {noun}(s) refused by the database: {shown}{more}")


class UnwrittenCallsError(TransientError):
    """`close()` ran out of time (or its writer stopped) with calls unwritten and no spool to keep them
    (no `spool_dir`, or the spool could not be written, e.g. disk full; the message says which): they
    are in `calls`, for the caller to keep or retry; nothing else holds them any more."""

    def __init__(
        self,
        calls: Sequence[object],
        stats: BatchStats,
        reason: str = "no spool_dir",
        *,
        noun: str = "AI call",
    ) -> None:
        self.calls = list(calls)
        self.stats = stats
        super().__init__(f"closed with {len(self.calls)} {noun}(s) unwritten ({reason})")


def stable(record: AICallRecord) -> AICallRecord:
    """Pin a generated event id into the record, so a spooled copy keeps the same idempotency key."""
    if record.request_id is None and record.event_id is None:
        return dataclasses.replace(record, event_id=record.idempotency_key.removeprefix("event:"))
    return record


def encode_record(record: AICallRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(record, name)
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif name == "usage" and value is not None:
            # The record's own canonical JSON (Decimals and datetimes as strings): it always
            # serialises, and decodes to a usage that hashes to the same idempotency payload.
            value = json.loads(record.usage_json or "null")
        out[name] = value
    return out


def decode_record(data: Mapping[str, Any]) -> AICallRecord:
    """The record of a spool line; `ValidationError` (or `KeyError`/`TypeError`/`ValueError`) if it is not one."""
    fields = dict(data)
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    return AICallRecord(**fields)


# SQLSTATE classes that judge the row itself: data exception, integrity constraint violation, WITH
# CHECK OPTION violation, and errors raised by a function or trigger (RAISE EXCEPTION is P0001).
_VERDICT_CLASSES = frozenset({"22", "23", "44", "P0"})


def is_refusal(exc: BaseException) -> bool:
    """A verdict on some call of the batch (found by splitting it), as opposed to an outage.

    Verdicts: our own checks (`ValidationError`, a key reused with another payload), a
    server error of a class that judges the row (`_VERDICT_CLASSES`), and a value the driver could
    not encode. Everything else would fail every call alike (down, restarting, a lost connection, a
    wrong password, a read-only standby after a failover, a missing grant): the calls are kept in the
    spool and retried with backoff until the database, or its configuration, is back.
    """
    if isinstance(exc, IntegrityViolation | ConflictError | InvalidRequestError):  # ValidationError too
        return True
    if isinstance(exc, TenantIsolationError) and exc.sqlstate is None:
        return True  # our own check on a call (no organization under row-level security), not the server's
    if isinstance(exc, DatabaseError):
        return not exc.retryable and (exc.sqlstate or "")[:2] in _VERDICT_CLASSES
    if isinstance(exc, PersistenceError):  # connection errors, a closed logger
        return False
    return not isinstance(exc, OSError | TimeoutError)


def describe_error(error: BaseException) -> dict[str, Any]:
    return {"error": type(error).__name__, "sqlstate": getattr(error, "sqlstate", None)}
