"""`BatchLogger`: buffered, lossless ledger writes on top of `AICallLogger.log_batch`.

Calls are validated when logged (`log()` raises `ValidationError` at once for a call PostgreSQL could
not store: such a call is never accepted), buffered, and written by one background task every
`batch_size` calls or `flush_interval` seconds. The buffer is bounded, so memory stays flat when
PostgreSQL is slow; when it is full, `overflow` decides: `log()` waits for room ("block", the
default: backpressure), appends the call to the spool at once ("spill": the caller waits one fsync'd
append, never the database), or drops it, counted in `stats.dropped` and logged ("drop").

The machinery is `BatchWriter`, generic over the record type; `BatchLogger` is its ledger subclass
and the event recorder (`persistence.events`) another.

Two kinds of failure, handled apart (`batch_outcomes.is_refusal`):
- An outage (anything that would fail every call alike: the database is down or restarting, a lost
  connection, a wrong password, a read-only standby, a missing grant): the batch goes to the durable
  spool (`spool.py`: fsync'd JSON lines, each record with its idempotency key). While the spool is not empty the writer probes the database
  with backoff (`retry_interval` doubling up to `max_retry_interval`), with no new traffic needed, and
  replays the spool as soon as it answers, a chunk at a time. Idempotency keys make a replay of an
  already committed batch (a lost COMMIT acknowledgement, a crash mid-replay) a no-op, so every call
  lands exactly once. Without a spool directory, or when the spool itself cannot be written (disk
  full), a failed batch stays at the head of the buffer and is retried with the same backoff. A
  record that cannot be encoded as a spool line is set aside alone (`rejected.jsonl`, logged).
- A refusal (a verdict on a call: a constraint, a trigger's RAISE, a data exception, a key reused
  with another payload, a value the driver cannot encode; a call with no price is not one: it is
  written unpriced): the batch is split
  in halves until the refused calls are isolated, so every other call is written. A refused call goes to `rejected.jsonl` in the spool directory with its reason; without
  a spool directory it is kept and the next `flush()` or `close()` raises `RejectedCallsError`
  naming it (after the good calls were written).

`close(timeout=...)` returns within its timeout and returns `BatchStats`; what it could not write is
in the spool (`pending_in_spool`), never only in memory; without a spool it raises
`UnwrittenCallsError` carrying the calls. If the writer task ever stops, `log()`, `flush()` and
`close()` raise instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from persistence.ai_calls.batch_outcomes import (
    BatchStats,
    RejectedCall,
    RejectedCallsError,
    UnwrittenCallsError,
    decode_record,
    describe_error,
    encode_record,
    is_refusal,
    stable,
)
from persistence.ai_calls.logger import AICallLogger, _unique
from persistence.ai_calls.record import AICallRecord, positive_int, positive_seconds, tenant_of
from persistence.ai_calls.spool import CorruptLine, SegmentReader, Spool, SpooledRecord
from persistence.errors import (
    PersistenceError,
    TransientError,
    ValidationError,
)
from persistence.observe.loggers import get_logger
from persistence.tenancy import check_tenant, outside_scope

__all__ = [
    "BatchLogger",
    "BatchStats",
    "BatchWriter",
    "Overflow",
    "RejectedCall",
    "RejectedCallsError",
    "UnwrittenCallsError",
]

log = get_logger("persistence.ai_calls.batch")


R = TypeVar("R")

# What a producer meets when the buffer is full: wait for room ("block"), append its record to the
# durable spool at once ("spill": the caller waits one fsync'd append, never for the database), or
# drop it, counted and logged ("drop": only if the caller chose it).
Overflow = Literal["block", "spill", "drop"]
OVERFLOWS: tuple[Overflow, ...] = ("block", "spill", "drop")


class BatchWriter(Generic[R]):
    """The machinery under `BatchLogger` (and the event recorder): a bounded buffer, one writer
    task, the durable spool and its replay, refusal bisection. A subclass says how to write a batch
    (`_write`, idempotent by `_key`) and how a record becomes a spool line and back."""

    _noun = "record"  # in log lines and errors

    def __init__(
        self,
        *,
        batch_size: int = 100,
        flush_interval: float = 5.0,
        max_buffered: int = 10_000,
        spool_dir: Path | str | None = None,
        retry_interval: float = 1.0,
        max_retry_interval: float = 5.0,
        overflow: Overflow = "block",
    ) -> None:
        batch_size = positive_int("batch_size", batch_size)
        flush_interval = positive_seconds("flush_interval", flush_interval)
        max_buffered = positive_int("max_buffered", max_buffered)
        retry_interval = positive_seconds("retry_interval", retry_interval)
        max_retry_interval = positive_seconds("max_retry_interval", max_retry_interval)
        if spool_dir is not None and not isinstance(spool_dir, str | os.PathLike):
            raise ValidationError(f"spool_dir must be a str, a path or None, got {type(spool_dir).__name__}")
        if max_buffered < batch_size:
            raise ValidationError(f"max_buffered ({max_buffered}) must be at least batch_size ({batch_size})")
        if max_retry_interval < retry_interval:
            raise ValidationError(
                f"max_retry_interval ({max_retry_interval}) must be at least retry_interval ({retry_interval})"
            )
        if overflow not in OVERFLOWS:
            raise ValidationError(f"overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}")
        if overflow == "spill" and spool_dir is None:
            raise ValidationError("overflow='spill' needs a spool_dir")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.overflow: Overflow = overflow
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.spool: Spool | None = None  # opened (file I/O, off the event loop) by the first call
        self._opening = asyncio.Lock()
        self._buffer: deque[R] = deque()
        self._changed = asyncio.Condition()
        self._flush_requests = 0
        self._flushes_done = 0
        self._closing = False
        self._closed: BatchStats | None = None
        self._spooled = self._replayed = self._written = self._rejected = self._set_aside = 0
        self._queued = self._dropped = self._waited = 0
        self._spool_pending = 0
        self._refused: list[RejectedCall[R]] = []  # without a spool: raised by the next flush()/close()
        self._task: asyncio.Task[None] | None = None
        self._healthy = True  # the last attempt reached the database
        self._delay = retry_interval  # the backoff: doubles per failed attempt up to max_retry_interval
        self._next_try = 0.0  # time.monotonic() before which the spool is not replayed (probed)

    # -- what a subclass provides -----------------------------------------------------------------

    async def _write(self, batch: list[R]) -> int:
        """Write `batch` in one transaction, idempotently; returns how many rows were new."""
        raise NotImplementedError

    def _key(self, record: R) -> str:
        """The record's idempotency key (a spool line carries it)."""
        raise NotImplementedError

    def _encode(self, record: R) -> dict[str, Any]:
        raise NotImplementedError

    def _decode(self, data: Mapping[str, Any]) -> R:
        raise NotImplementedError

    def _describe(self, record: R) -> dict[str, Any]:
        """Fields of the record for a log line (never its payload)."""
        return {"key": self._key(record)}

    # -- public API -----------------------------------------------------------------------------

    async def __aenter__(self) -> BatchWriter[R]:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the spool (in a worker thread: mkdir, lock, count what an earlier run left) and start
        the writer, which replays that spool at once. `log()` and `flush()` do it when needed."""
        if self.spool is None and self.spool_dir is not None:
            async with self._opening:
                if self.spool is None:
                    spool = await asyncio.to_thread(Spool, self.spool_dir)
                    try:
                        self._spool_pending = await asyncio.to_thread(spool.pending_count)
                    except BaseException:
                        spool.close()
                        raise
                    self.spool = spool
        async with self._changed:
            if self._closing:
                raise PersistenceError(f"{type(self).__name__} is closed")
            self._start()

    @property
    def stats(self) -> BatchStats:
        return BatchStats(
            buffered=len(self._buffer),
            spooled=self._spooled,
            replayed=self._replayed,
            written=self._written,
            rejected=self._rejected,
            pending_in_spool=self._spool_pending,
            set_aside=self._set_aside,
            queued=self._queued,
            dropped=self._dropped,
            waited=self._waited,
        )

    def _append_nowait(self, record: R) -> bool:
        """Buffer `record` without suspending when that is all there is to do: the writer runs,
        there is room, and the record neither fills a batch (the writer is woken then) nor ends
        one (the caller yields then). False: nothing done, take `_put`. Saves the caller its
        coroutines for all but one record per batch."""
        task = self._task
        buffered = len(self._buffer) + 1
        if (
            task is None
            or task.done()
            or self._closing
            or buffered > self.max_buffered
            or buffered % self.batch_size == 0
            or buffered == self.batch_size
        ):
            return False
        self._buffer.append(record)
        self._queued += 1
        return True

    async def _put(self, record: R) -> None:
        """Buffer one validated record; what happens when the buffer is full is `overflow`'s choice."""
        if self._append_nowait(record):
            return
        if self._task is None:
            await self.open()
        task = self._task
        if (
            task is not None
            and not task.done()
            and not self._closing
            and len(self._buffer) < self.max_buffered
        ):
            # Room: append without the lock, which guards only sections without an await (asyncio
            # runs one of them at a time). A waiting writer waits for `batch_size` records, so it
            # is woken when the buffer reaches that (not at every record past it: it rechecks the
            # length itself before it waits again).
            self._buffer.append(record)
            self._queued += 1
            buffered = len(self._buffer)
            if buffered == self.batch_size:
                async with self._changed:
                    self._changed.notify_all()
            if buffered % self.batch_size == 0:
                # A tight logging loop never suspends, so the writer would start only once the
                # buffer is full; one yield per batch lets it send while the caller goes on.
                await asyncio.sleep(0)
            return
        # Closed, a dead writer, or no room: decided under the lock.
        spill = False
        async with self._changed:
            if self._closing:
                raise PersistenceError(f"{type(self).__name__} is closed")
            self._raise_if_writer_died()  # a record nobody would write must not be accepted
            if len(self._buffer) >= self.max_buffered:
                if self.overflow == "drop":
                    self._dropped += 1
                    if self._dropped == 1 or self._dropped % 1000 == 0:
                        log.warning(f"buffer full: {self._noun} dropped (overflow='drop')",
                                    dropped=self._dropped, **self._describe(record))  # fmt: skip
                    return
                spill = self.overflow == "spill" and self.spool is not None
                if not spill:
                    self._waited += 1
                while len(self._buffer) >= self.max_buffered and not spill:
                    self._raise_if_writer_died()
                    await self._changed.wait()
            if not spill:
                self._buffer.append(record)
                self._queued += 1
                if len(self._buffer) >= self.batch_size:
                    self._changed.notify_all()
                return
        try:
            await self._spool([record])  # the caller waits one fsync'd append, not the database
        except Exception as exc:  # the spool itself failed (disk full): wait for room instead
            log.error(f"could not spill a {self._noun}; waiting for room", **describe_error(exc))
            async with self._changed:
                self._waited += 1
                while len(self._buffer) >= self.max_buffered:
                    self._raise_if_writer_died()
                    await self._changed.wait()
                self._buffer.append(record)
        self._queued += 1

    async def flush(self) -> None:
        """Return once everything logged before the call is written, spooled or refused.

        Without `spool_dir`, calls the database refused since the last flush raise
        `RejectedCallsError` here (every other call was written).
        """
        if self._task is None:
            await self.open()
        await self._flushed()
        self._raise_refused()

    async def close(self, timeout: float | None = None) -> BatchStats:  # noqa: ASYNC109 (a bound on the whole shutdown, spooling included)
        """Flush, replay the spool if the database answers, stop the writer; returns the final stats.

        With `timeout` (seconds) it returns within it: what is still unwritten then is spooled
        (`pending_in_spool` says how many calls wait for the next run). Without a spool, such calls
        raise `UnwrittenCallsError` (they are in its `calls`), and refused calls `RejectedCallsError`.
        Without `timeout`, and without a spool, it waits until PostgreSQL answers.
        """
        if timeout is not None:
            timeout = positive_seconds("timeout", timeout)
        if self._closed is not None:
            return self._closed
        if self._closing:  # another close() is under way
            return self.stats
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Keep a little of the time for spooling what is left (one fsync'd append).
        soft = None if timeout is None or deadline is None else deadline - min(1.0, timeout / 10)
        try:
            async with asyncio.timeout_at(soft):
                if self._task is None:
                    await self.open()
                await self._flushed()
                async with self._changed:
                    self._closing = True
                    self._changed.notify_all()
                if self._task is not None:
                    await self._task
                if self.spool is not None and self._spool_pending:
                    try:
                        await self._replay(until_empty=True)
                    except Exception as exc:
                        log.warning("spool not replayed at close; it waits for the next run",
                                    pending=self._spool_pending, **describe_error(exc))  # fmt: skip
        except TimeoutError:
            log.warning(f"{type(self).__name__}.close timed out", timeout=timeout, buffered=len(self._buffer))
        finally:
            self._closing = True
            if self._task is not None and not self._task.done():  # timed out, or close() was cancelled
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            if self.spool is not None:
                if self._buffer:  # the writer stopped early: keep what it never wrote
                    try:
                        async with asyncio.timeout_at(deadline):
                            await self._spool(list(self._buffer))
                        self._buffer.clear()
                    except (Exception, TimeoutError) as exc:
                        log.error("calls left in memory at close could not be spooled",
                                  calls=len(self._buffer), **describe_error(exc))  # fmt: skip
                self.spool.close()
        stats = self._closed = self.stats
        log.info(f"{type(self).__name__} closed", **dataclasses.asdict(stats))
        if self._buffer:
            reason = "no spool_dir" if self.spool is None else "the spool could not be written"
            raise UnwrittenCallsError(list(self._buffer), stats, reason, noun=self._noun)
        self._raise_refused()
        return stats

    # -- writer ---------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None:
            # Outside any tenant() context it may have been started in: it writes every tenant's
            # records (and the tasks it starts, e.g. the ledger's cost events, inherit that).
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"{type(self).__name__} writer", context=outside_scope()
            )

    async def _flushed(self) -> None:
        async with self._changed:
            self._start()
            self._flush_requests += 1
            target = self._flush_requests
            self._changed.notify_all()
            while self._flushes_done < target:
                self._raise_if_writer_died()
                await self._changed.wait()

    def _raise_refused(self) -> None:
        if self._refused:
            refused, self._refused = self._refused, []
            raise RejectedCallsError(refused, noun=self._noun) from refused[0].error

    def _raise_if_writer_died(self) -> None:
        """A writer that stopped on a bug must fail its callers, not leave them waiting forever."""
        if self._task is None or not self._task.done():
            return
        if self._closing:
            raise PersistenceError(f"{type(self).__name__} is closed")
        error = None if self._task.cancelled() else self._task.exception()
        raise PersistenceError(
            f"{type(self).__name__}'s writer stopped ({type(error).__name__ if error else 'cancelled'}); "
            f"{len(self._buffer)} {self._noun}s are still buffered in memory"
        ) from error

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            async with self._changed:
                self._changed.notify_all()  # wake waiters, so they see the writer has stopped

    def _replay_due(self) -> bool:
        return self.spool is not None and self._spool_pending > 0 and time.monotonic() >= self._next_try

    def _wait_time(self) -> float:
        """Until the next timed flush, or the next probe of the database while the spool is not empty."""
        if self.spool is not None and self._spool_pending > 0:
            return max(0.0, min(self.flush_interval, self._next_try - time.monotonic()))
        return self.flush_interval

    async def _loop(self) -> None:
        while True:
            async with self._changed:
                wait = self._wait_time()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._changed.wait_for(
                                lambda: (
                                    self._closing
                                    or len(self._buffer) >= self.batch_size
                                    or self._flushes_done < self._flush_requests
                                )
                            ),
                            timeout=wait,
                        )
                target = self._flush_requests
                closing = self._closing
            await self._drain()
            if self._replay_due():
                try:
                    await self._replay(until_empty=False)
                except Exception as exc:  # down again: the segments wait for the next probe
                    self._failed(exc, "spool replay failed; retrying")
            async with self._changed:
                self._flushes_done = max(self._flushes_done, target)
                self._changed.notify_all()
            if closing:
                return

    def _succeeded(self) -> None:
        self._healthy = True
        self._delay = self.retry_interval
        self._next_try = 0.0

    def _failed(self, exc: BaseException, message: str) -> float:
        """Note an outage: the next attempt waits the backoff delay (returned), which then doubles."""
        self._healthy = False
        delay = self._delay
        self._next_try = time.monotonic() + delay
        self._delay = min(self._delay * 2, self.max_retry_interval)
        log.warning(message, retry_in=delay, pending_in_spool=self._spool_pending, **describe_error(exc))
        return delay

    async def _drain(self) -> None:
        """Write the buffer batch by batch; calls that could be neither written, spooled nor refused
        stay at the head of the buffer and are retried after the backoff delay."""
        while self._buffer:
            batch: list[R] = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            left = await self._settle(batch)
            async with self._changed:
                for _ in batch:
                    self._buffer.popleft()
                self._buffer.extendleft(reversed(left))  # only the unsettled calls, in order
                self._changed.notify_all()
            if left:
                await asyncio.sleep(max(self.retry_interval, self._next_try - time.monotonic()))

    async def _settle(self, batch: list[R]) -> list[R]:
        """Write `batch`; on an outage spool it, on a refusal split it until the refused calls are
        isolated. Each call is written, spooled or refused exactly once; returns the calls that are
        none of these (no spool, or the spool failed), in order."""
        try:
            written = await self._write(batch)
        except Exception as exc:
            if not is_refusal(exc):
                self._failed(exc, "database unavailable")
                return await self._keep(batch)
            return await self._split_refused(batch, exc)
        self._written += written
        self._succeeded()
        return []

    async def _split_refused(self, batch: list[R], refusal: BaseException) -> list[R]:
        """A batch the database refused as a whole: the database answered, so it is split until the
        refused calls are isolated (each written, refused or, if it went down meanwhile, kept)."""
        self._healthy = True
        if len(batch) == 1:
            await self._refuse(batch[0], refusal)
            return []
        middle = len(batch) // 2
        left = await self._settle(batch[:middle])
        if not self._healthy:  # down meanwhile: do not knock again for the other half
            return left + await self._keep(batch[middle:])
        return left + await self._settle(batch[middle:])

    async def _keep(self, batch: list[R]) -> list[R]:
        """Spool calls an outage kept from the database; returns them if they could not be spooled."""
        if self.spool is None:
            return batch
        try:
            await self._spool(batch)
        except Exception as exc:  # the spool itself failed (disk full, permissions): keep the calls
            log.error("could not spool a batch; it stays buffered", calls=len(batch), **describe_error(exc))
            return batch
        return []

    async def _spool(self, records: list[R]) -> None:
        """Append `records` to the durable spool (fsync'd when this returns) and count them.

        A record that cannot be encoded as a spool line is refused on its own (`rejected.jsonl`, with
        a log line), so it never holds back the others; a failure of the spool itself (disk full)
        raises and the caller keeps the whole batch.
        """
        assert self.spool is not None
        entries: list[SpooledRecord] = []
        for record in records:
            try:
                entry = SpooledRecord(self._key(record), self._encode(record))
                json.dumps({"key": entry.key, "record": entry.record}, ensure_ascii=False,
                           allow_nan=False).encode()  # fmt: skip
            except Exception as exc:  # this record only: set it aside, spool the rest
                log.error(f"{self._noun} could not be spooled; set aside", **self._describe(record),
                          **describe_error(exc))  # fmt: skip
                await self._refuse(record, exc)
                continue
            entries.append(entry)
        await asyncio.to_thread(self.spool.append, entries)
        self._spooled += len(entries)
        self._spool_pending += len(entries)

    async def _refuse(self, record: R, error: BaseException) -> None:
        """A call the database refused for good: kept in `rejected.jsonl` (with a spool), else kept for
        the next `flush()`/`close()` to raise; logged either way, never retried."""
        self._rejected += 1
        if self.spool is None:
            self._refused.append(RejectedCall(record, error, self._key(record)))
            log.error(f"{self._noun} refused by the database", **self._describe(record), raised_by="flush",
                      **describe_error(error))  # fmt: skip
            return
        try:
            encoded: Any = self._encode(record)
        except Exception:  # a record that does not even encode: keep what can be shown of it
            encoded = repr(record)
        # ASCII escapes and repr() of anything else: this line always serialises (a lone surrogate too).
        line = json.dumps({"key": self._key(record), "record": encoded,
                           "error": type(error).__name__, "sqlstate": getattr(error, "sqlstate", None),
                           "reason": str(error)}, default=repr)  # fmt: skip
        path = self.spool.directory / "rejected.jsonl"
        kept = False
        try:
            await asyncio.to_thread(_append_line, path, line)
            kept = True
        except OSError:
            pass
        # Refused for good: logged in full when it could not be kept in a file, never retried.
        log.error(f"{self._noun} refused by the database", **self._describe(record),
                  kept_in=str(path) if kept else None, record=None if kept else line,
                  **describe_error(error))  # fmt: skip

    async def _replay(self, *, until_empty: bool) -> None:
        """Write spooled segments oldest first, a chunk of `batch_size` lines at a time (memory stays
        bounded whatever the outage length); a segment is deleted once every line of it is settled.

        Raises on an outage (the rest waits for the next probe). Unless `until_empty`, it yields to
        the writer's buffer as soon as a batch of new calls is waiting.
        """
        assert self.spool is not None
        spool = self.spool
        for segment in await asyncio.to_thread(spool.rotate):
            reader = await asyncio.to_thread(SegmentReader, segment)
            try:
                while not reader.exhausted:
                    entries, corrupt = await asyncio.to_thread(reader.chunk, self.batch_size)
                    consumed = len(entries) + len(corrupt)
                    records: list[R] = []
                    for entry in entries:
                        try:
                            records.append(self._decode(entry.record))
                        except Exception as exc:  # whatever the reason, this line only
                            try:
                                raw = json.dumps({"key": entry.key, "record": entry.record}, default=repr)
                            except Exception:
                                raw = repr(entry)
                            corrupt.append(CorruptLine(raw.encode(errors="backslashreplace"),
                                                       f"{type(exc).__name__}: {str(exc)[:200]}"))  # fmt: skip
                    if corrupt:
                        await self._set_aside_lines(segment, corrupt)
                    if records:
                        try:
                            written = await self._write(records)
                        except Exception as exc:
                            if not is_refusal(exc):
                                raise  # this chunk stays in its segment for the next replay
                            # One refused call must not hold back the others.
                            if await self._settle(records):
                                raise TransientError(
                                    "a refused chunk could not be settled during a replay"
                                ) from exc
                        else:
                            self._written += written
                            self._succeeded()
                    await asyncio.to_thread(reader.commit)
                    self._replayed += len(records)
                    self._spool_pending = max(0, self._spool_pending - consumed)
                    if not until_empty and len(self._buffer) >= self.batch_size:
                        return  # new calls first; the replay resumes from the committed offset
            finally:
                await asyncio.to_thread(reader.close)
            await asyncio.to_thread(spool.done, segment)
        self._spool_pending = await asyncio.to_thread(spool.pending_count)

    async def _set_aside_lines(self, segment: Path, lines: list[CorruptLine]) -> None:
        """Move lines that do not decode out of the way, with a log line; they are never retried."""
        assert self.spool is not None
        path = await asyncio.to_thread(self.spool.set_aside, segment, lines)
        self._set_aside += len(lines)
        log.error("spooled lines that do not decode were set aside", segment=segment.name, lines=len(lines),
                  kept_in=str(path), reason=lines[0].reason)  # fmt: skip


class BatchLogger(BatchWriter[AICallRecord]):
    """Buffered ledger writes that survive a database outage. Use `async with` or call `close()`."""

    _noun = "AI call"

    def __init__(
        self,
        logger: AICallLogger,
        *,
        batch_size: int = 100,
        flush_interval: float = 5.0,
        max_buffered: int = 10_000,
        spool_dir: Path | str | None = None,
        retry_interval: float = 1.0,
        max_retry_interval: float = 5.0,
        overflow: Overflow = "block",
    ) -> None:
        if not isinstance(logger, AICallLogger):
            raise ValidationError(f"logger must be an AICallLogger, got {type(logger).__name__}")
        super().__init__(
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_buffered=max_buffered,
            spool_dir=spool_dir,
            retry_interval=retry_interval,
            max_retry_interval=max_retry_interval,
            overflow=overflow,
        )
        self.logger = logger

    async def __aenter__(self) -> BatchLogger:
        await self.open()
        return self

    async def log(self, call: AICallRecord | Mapping[str, Any]) -> None:
        """Validate and buffer one call; waits while the buffer is full (see `overflow`).

        A call PostgreSQL could not store raises `ValidationError` here and is not accepted (it is
        neither written nor kept in `rejected.jsonl`: the caller has it).
        """
        record = AICallRecord.coerce(call)
        check_tenant(tenant_of(record))  # inside tenant("a"), b's call is refused here, not buffered
        await self._put(stable(record))

    async def _write(self, batch: list[AICallRecord]) -> int:
        # Tenants were checked by `log()`: the writer task writes every tenant's calls, whatever
        # context it was started in (under row-level security each as its own organization).
        return await self.logger._log_records(_unique(batch))

    def _key(self, record: AICallRecord) -> str:
        return record.idempotency_key

    def _encode(self, record: AICallRecord) -> dict[str, Any]:
        return encode_record(record)

    def _decode(self, data: Mapping[str, Any]) -> AICallRecord:
        return decode_record(data)

    def _describe(self, record: AICallRecord) -> dict[str, Any]:
        return {"key": record.idempotency_key, "provider": record.provider, "model": record.model}


def _append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
