"""`BatchLogger`: buffered, lossless ledger writes on top of `AICallLogger.log_batch`.

Calls are validated when logged, buffered, and written by one background task every `batch_size`
calls or `flush_interval` seconds. The buffer is bounded: `log()` waits when it is full
(backpressure), so memory stays flat when PostgreSQL is slow.

When a batch cannot be written because PostgreSQL is down or failing (lost or refused connections,
`TransientError`), it goes to the durable spool (`spool.py`: fsync'd JSON lines, each record with
its idempotency key) and is replayed once the database answers again; segments are deleted only
after their replay committed. Idempotency keys make a replay of an already committed batch (a lost
COMMIT acknowledgement, a crash mid-replay) a no-op, so every call lands exactly once. Without a
spool directory, or when the spool itself cannot be written (disk full), a failed batch stays at the
head of the buffer and is retried (callers then wait). If the writer task ever stops, `log()`,
`flush()` and `close()` raise instead of waiting for it.
Nothing is dropped: a batch the database rejects for good (a reused key with another payload) is
kept in `rejected.jsonl` in the spool directory and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog

from persistence.ai_calls.logger import AICallLogger
from persistence.ai_calls.record import AICallRecord
from persistence.ai_calls.spool import Spool, SpooledRecord
from persistence.errors import (
    ConflictError,
    IntegrityViolation,
    InvalidRequestError,
    PersistenceError,
    TransientError,
)

log = structlog.get_logger("persistence.ai_calls.batch")
_FIELDS = [f.name for f in dataclasses.fields(AICallRecord) if f.init]


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Counters: `buffered` now in memory; the rest are totals since the logger started."""

    buffered: int
    spooled: int
    replayed: int
    written: int
    rejected: int
    pending_in_spool: int


def _stable(record: AICallRecord) -> AICallRecord:
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
    fields = dict(data)
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    return AICallRecord(**fields)


def _is_outage(exc: BaseException) -> bool:
    """Anything but a verdict on the data itself is worth spooling and retrying later.

    Only the database's judgement of a call (a key reused with another payload, a check or type
    violation, a call we cannot price) is final; every other failure (down, restarting, lost
    connections, however the driver words them) may pass, so those calls are kept and retried.
    """
    return not isinstance(exc, ConflictError | IntegrityViolation | InvalidRequestError)


class BatchLogger:
    """Buffered ledger writes that survive a database outage. Use `async with` or call `close()`."""

    def __init__(
        self,
        logger: AICallLogger,
        *,
        batch_size: int = 100,
        flush_interval: float = 5.0,
        max_buffered: int = 10_000,
        spool_dir: Path | str | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        if batch_size < 1 or flush_interval <= 0 or max_buffered < batch_size or retry_interval <= 0:
            raise InvalidRequestError(
                "batch_size >= 1, flush_interval > 0, max_buffered >= batch_size, retry_interval > 0"
            )
        self.logger = logger
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.retry_interval = retry_interval
        self.spool = Spool(spool_dir) if spool_dir is not None else None
        self._buffer: deque[AICallRecord] = deque()
        self._changed = asyncio.Condition()
        self._flush_requests = 0
        self._flushes_done = 0
        self._closing = False
        self._spooled = self._replayed = self._written = self._rejected = 0
        self._spool_pending = self.spool.pending_count() if self.spool else 0
        self._task: asyncio.Task[None] | None = None
        self._healthy = True  # the last write reached the database: worth replaying the spool

    # -- public API -----------------------------------------------------------------------------

    async def __aenter__(self) -> BatchLogger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def stats(self) -> BatchStats:
        return BatchStats(
            buffered=len(self._buffer),
            spooled=self._spooled,
            replayed=self._replayed,
            written=self._written,
            rejected=self._rejected,
            pending_in_spool=self._spool_pending,
        )

    async def log(self, call: AICallRecord | Mapping[str, Any]) -> None:
        """Validate and buffer one call; waits while the buffer is full. Raises `ValidationError` at once."""
        record = _stable(AICallRecord.coerce(call))
        async with self._changed:
            if self._closing:
                raise PersistenceError("BatchLogger is closed")
            self._start()
            self._raise_if_writer_died()  # a call nobody would write must not be accepted
            while len(self._buffer) >= self.max_buffered:
                self._raise_if_writer_died()
                await self._changed.wait()
            self._buffer.append(record)
            if len(self._buffer) >= self.batch_size:
                self._changed.notify_all()

    async def flush(self) -> None:
        """Return once everything logged before the call is written or safely spooled."""
        async with self._changed:
            self._start()
            self._flush_requests += 1
            target = self._flush_requests
            self._changed.notify_all()
            while self._flushes_done < target:
                self._raise_if_writer_died()
                await self._changed.wait()

    async def close(self) -> None:
        """Flush, replay the spool if the database answers, and stop the writer.

        If PostgreSQL is still down, the unwritten calls stay in the spool for the next run.
        """
        if self._closing:
            return
        try:
            await self.flush()
            async with self._changed:
                self._closing = True
                self._changed.notify_all()
            if self._task is not None:
                await self._task
            if self.spool is not None:
                with contextlib.suppress(Exception):
                    await self._replay()
        finally:
            self._closing = True
            if self._task is not None and not self._task.done():  # close() itself was cancelled
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            if self.spool is not None:
                if self._buffer:  # the writer stopped early: keep what it never wrote
                    with contextlib.suppress(Exception):
                        await self._spool(list(self._buffer))
                        self._buffer.clear()
                self.spool.close()

    # -- writer ---------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="BatchLogger writer")

    def _raise_if_writer_died(self) -> None:
        """A writer that stopped on a bug must fail its callers, not leave them waiting forever."""
        if self._task is None or not self._task.done():
            return
        if self._closing:
            raise PersistenceError("BatchLogger is closed")
        error = None if self._task.cancelled() else self._task.exception()
        raise PersistenceError(
            f"BatchLogger's writer stopped ({type(error).__name__ if error else 'cancelled'}); "
            f"{len(self._buffer)} calls are still buffered in memory"
        ) from error

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            async with self._changed:
                self._changed.notify_all()  # wake waiters, so they see the writer has stopped

    async def _loop(self) -> None:
        while True:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(
                            lambda: (
                                self._closing
                                or len(self._buffer) >= self.batch_size
                                or self._flushes_done < self._flush_requests
                            )
                        ),
                        timeout=self.flush_interval,
                    )
                target = self._flush_requests
                closing = self._closing
            await self._drain()
            if self.spool is not None and self._spool_pending and self._healthy:
                with contextlib.suppress(Exception):  # down again: the segments wait for the next try
                    await self._replay()
            async with self._changed:
                self._flushes_done = max(self._flushes_done, target)
                self._changed.notify_all()
            if closing:
                return

    async def _drain(self) -> None:
        """Write the buffer batch by batch; a failed batch goes to the spool (or waits and retries)."""
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            try:
                left = await self._write(batch)
            except Exception as exc:  # the spool itself failed (disk full, permissions): keep the calls
                log.error("could not write or spool a batch; it stays buffered", calls=len(batch),
                          error=type(exc).__name__, detail=str(exc))  # fmt: skip
                left = batch
            async with self._changed:
                for _ in batch:
                    self._buffer.popleft()
                self._buffer.extendleft(reversed(left))  # only the unsettled calls, in order
                self._changed.notify_all()
            if left:
                await asyncio.sleep(self.retry_interval)

    async def _write(self, batch: list[AICallRecord]) -> list[AICallRecord]:
        """Write, spool or reject `batch`; returns the calls that are none of these (retry later)."""
        try:
            self._written += await self.logger.log_batch(batch)
            self._healthy = True
            return []
        except Exception as exc:
            outage = _is_outage(exc)
            self._healthy = not outage
            if not outage:
                return await self._reject(batch)
            log.warning(
                "database unavailable", calls=len(batch), error=type(exc).__name__, spooled=bool(self.spool)
            )
            if self.spool is None:
                return batch
        await self._spool(batch)
        return []

    async def _spool(self, records: list[AICallRecord]) -> None:
        """Append `records` to the durable spool (fsync'd when this returns) and count them."""
        assert self.spool is not None
        entries = [SpooledRecord(r.idempotency_key, encode_record(r)) for r in records]
        await asyncio.to_thread(self.spool.append, entries)
        self._spooled += len(records)
        self._spool_pending += len(records)

    async def _reject(self, batch: list[AICallRecord]) -> list[AICallRecord]:
        """Settle a batch the database refused, one call at a time, so the good calls still land.

        Each call is written, spooled (an outage meanwhile) or kept aside as refused, exactly once;
        returns the calls that could be none of these (no spool, or the spool failed).
        """
        left: list[AICallRecord] = []
        for record in batch:
            try:
                self._written += await self.logger.log_batch([record])
                continue
            except Exception as exc:
                error = exc
            if _is_outage(error):
                if self.spool is not None:
                    try:
                        await self._spool([record])
                        continue
                    except Exception as exc:
                        log.error("could not spool a call; it stays buffered", error=type(exc).__name__)
                left.append(record)
                continue
            self._rejected += 1
            line = json.dumps({"key": record.idempotency_key, "record": encode_record(record),
                               "error": type(error).__name__})  # fmt: skip
            kept = False
            if self.spool is not None:
                try:
                    await asyncio.to_thread(_append_line, self.spool.directory / "rejected.jsonl", line)
                    kept = True
                except OSError:
                    pass
            # Refused for good: logged in full when it could not be kept in a file, never retried.
            log.error(
                "AI call refused by the database",
                key=record.idempotency_key,
                provider=record.provider,
                model=record.model,
                error=type(error).__name__,
                kept_in=str(self.spool.directory / "rejected.jsonl") if kept and self.spool else None,
                record=None if kept else line,
            )
        return left

    async def _replay(self) -> None:
        """Write spooled segments; each is deleted only after all its records committed."""
        assert self.spool is not None
        spool = self.spool
        for segment in await asyncio.to_thread(spool.rotate):
            entries = await asyncio.to_thread(spool.read, segment)
            records = [decode_record(e.record) for e in entries]
            for start in range(0, len(records), self.batch_size):
                chunk = records[start : start + self.batch_size]
                try:
                    self._written += await self.logger.log_batch(chunk)
                except Exception as exc:
                    if _is_outage(exc):
                        raise  # down again: this segment waits for the next replay
                    # One refused call must not hold back the others.
                    if await self._reject(chunk):
                        raise TransientError("database unavailable during a replay") from exc
            await asyncio.to_thread(spool.done, segment)
            self._replayed += len(records)
            self._spool_pending = max(0, self._spool_pending - len(records))


def _append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
