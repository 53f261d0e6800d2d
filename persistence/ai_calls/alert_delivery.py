"""Delivering cost-alert notifications from the outbox (`cost_alerts_log`) to pluggable sinks.

The evaluator writes a notification row per firing and channel in the firing's own transaction;
the `AlertDispatcher` delivers them after commit:

- **Claim**: one statement leases due notifications of the channels it has sinks for
  (`FOR UPDATE SKIP LOCKED`, `claimed_until = now() + lease`, attempt number + 1), so dispatchers in
  several processes never deliver the same notification at the same time; a dispatcher that dies
  mid-delivery loses its lease and another retries.
- **Deliver**: the sink gets an `AlertNotification` carrying an idempotency key (the same on every
  attempt: a receiver that saw an attempt succeed after our timeout can drop the repeat).
- **Record**: one statement appends the attempt (`kind = 'attempt'`: outcome, HTTP status, error,
  duration) and moves the notification to `delivered`, back to `pending` with exponential backoff
  and jitter, or to `failed` after `max_attempts` or a permanent refusal (a 4xx other than 408/425/429).

Sinks: `WebhookSink` (JSON POST with an `Idempotency-Key` header; urllib in a worker thread, no
redirects followed) and `CallableSink` (any function or coroutine function); anything with an
async `deliver(notification) -> DeliveryResult` method is a sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from time import perf_counter
from types import MappingProxyType, TracebackType
from typing import Protocol, runtime_checkable

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.record import positive_int, positive_seconds
from persistence.ai_calls.rollups import _on_raw
from persistence.errors import ConfigurationError, PersistenceError, ValidationError
from persistence.observe.loggers import get_logger

__all__ = [
    "AlertDispatcher",
    "AlertNotification",
    "AlertSink",
    "CallableSink",
    "DeliveryResult",
    "WebhookSink",
]

_log = get_logger("persistence.ai_calls.alert_delivery")

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]


@dataclass(frozen=True, slots=True)
class AlertNotification:
    """One notification to deliver: the firing's JSON payload (money as strings, times as UTC ISO
    8601), its channel, the attempt number (1, 2, ...) and the idempotency key of every attempt."""

    id: int
    firing_id: int
    channel: str
    attempt: int
    idempotency_key: str
    payload: Mapping[str, JSONValue]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one attempt ended. `retryable` failures are tried again later (until `max_attempts`)."""

    delivered: bool
    status: int | None = None
    error: str | None = None
    retryable: bool = True


@runtime_checkable
class AlertSink(Protocol):
    """Where notifications go. `deliver` makes ONE attempt; the dispatcher retries."""

    async def deliver(self, notification: AlertNotification) -> DeliveryResult: ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 3xx answer is a failed delivery, not a POST turned into a GET elsewhere


_OPENER = urllib.request.build_opener(_NoRedirects)
_RETRYABLE_STATUS = frozenset({408, 425, 429})


class WebhookSink:
    """POSTs the notification's payload as JSON to `url`, with `Idempotency-Key` (and the
    notification's key in the body too). 2xx is delivered; 5xx, 408, 425, 429, timeouts and network
    errors are retried; other answers fail at once. Errors name the host only, never the URL (it may
    carry a token)."""

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("webhook URL must be an http(s) URL with a host")
        self._url = url
        self._host = parts.hostname
        self._headers = dict(headers or {})
        self.timeout = positive_seconds("timeout", timeout)

    def __repr__(self) -> str:
        return f"WebhookSink(host={self._host!r})"

    async def deliver(self, notification: AlertNotification) -> DeliveryResult:
        body = json.dumps(
            {**notification.payload, "idempotency_key": notification.idempotency_key}, sort_keys=True
        ).encode()
        return await asyncio.to_thread(self._post, body, notification.idempotency_key)

    def _post(self, body: bytes, key: str) -> DeliveryResult:
        request = urllib.request.Request(self._url, data=body, method="POST")  # noqa: S310 - scheme checked
        for name, value in self._headers.items():
            request.add_unredirected_header(name, value)
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "persistence-cost-alerts/1")
        request.add_header("Idempotency-Key", key)
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                status: int = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
            return DeliveryResult(
                False, status, f"{self._host} answered HTTP {status}",
                retryable=status >= 500 or status in _RETRYABLE_STATUS,
            )  # fmt: skip
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return DeliveryResult(False, None, f"{self._host}: network error {type(reason).__name__}")
        if 200 <= status < 300:
            return DeliveryResult(True, status)
        return DeliveryResult(False, status, f"{self._host} answered HTTP {status}", retryable=False)


class CallableSink:
    """Calls `function(notification)` (a function or coroutine function); returning is delivered,
    raising is a retryable failure recorded with the exception's type and message. A plain function
    runs in a worker thread (it may block, e.g. a pager's HTTP client), so the dispatcher's
    `attempt_timeout` can cut it off without stalling the event loop."""

    def __init__(self, function: Callable[[AlertNotification], Awaitable[None] | None]) -> None:
        if not callable(function):
            raise ConfigurationError("CallableSink needs a callable")
        self._function = function

    async def deliver(self, notification: AlertNotification) -> DeliveryResult:
        try:
            function = self._function
            outcome: Awaitable[None] | None
            if inspect.iscoroutinefunction(function):
                outcome = function(notification)
            else:
                outcome = await asyncio.to_thread(function, notification)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:
            return DeliveryResult(False, None, f"{type(exc).__name__}: {exc}"[:500])
        return DeliveryResult(True)


# A row still claimed when its lease ran out was being delivered by a dispatcher that stopped (its
# process died, or it hung past the lease): the claim that takes it over logs that lost attempt,
# which never recorded itself, so every attempt made is in the log.
_CLAIM = """
WITH claimed AS (
    UPDATE cost_alerts_log o
       SET attempt = o.attempt + 1, claimed_until = now() + make_interval(secs => $2::float8)
      FROM (SELECT id, claimed_until AS lost_lease FROM cost_alerts_log
             WHERE kind = 'outbox' AND status = 'pending' AND next_attempt_at <= now()
               AND (claimed_until IS NULL OR claimed_until <= now()) AND channel = ANY($1::varchar[])
             ORDER BY next_attempt_at
             LIMIT $3::int
               FOR UPDATE SKIP LOCKED) due
     WHERE o.id = due.id
    RETURNING o.id, o.firing_id, o.channel, o.attempt, o.idempotency_key, o.payload::text, due.lost_lease
), lost AS (
    INSERT INTO cost_alerts_log (kind, firing_id, parent_id, channel, status, attempt, error)
    SELECT 'attempt', firing_id, id, channel, 'failed', attempt - 1,
           'lease expired: the dispatcher delivering it stopped before recording the outcome'
      FROM claimed WHERE lost_lease IS NOT NULL
    ON CONFLICT (parent_id, attempt) WHERE kind = 'attempt' DO NOTHING
)
SELECT id, firing_id, channel, attempt, idempotency_key, payload FROM claimed ORDER BY id
"""
# The attempt is always recorded; the outbox row moves only if our claim still holds (attempt number).
_RECORD = """
WITH o AS (
    UPDATE cost_alerts_log
       SET status = $3::varchar, claimed_until = NULL,
           next_attempt_at = now() + make_interval(secs => $4::float8),
           delivered_at = CASE WHEN $3::varchar = 'delivered' THEN now() END
     WHERE id = $1::bigint AND kind = 'outbox' AND attempt = $2::int AND status = 'pending'
)
INSERT INTO cost_alerts_log (kind, firing_id, parent_id, channel, status, attempt, response_status, error,
                             duration_ms)
SELECT 'attempt', firing_id, id, channel, $5::varchar, $2::int, $6::int, $7::varchar, $8::int
  FROM cost_alerts_log WHERE id = $1::bigint
ON CONFLICT (parent_id, attempt) WHERE kind = 'attempt' DO NOTHING
"""


def _notification(row: asyncpg.Record) -> AlertNotification:
    return AlertNotification(
        id=row[0], firing_id=row[1], channel=row[2], attempt=row[3], idempotency_key=str(row[4]),
        payload=json.loads(row[5]),
    )  # fmt: skip


class AlertDispatcher:
    """Delivers outbox notifications to `sinks` (channel name -> sink; a plain callable is wrapped
    in `CallableSink`). `await dispatch_pending()` runs one pass; `start()` (or `async with`) keeps
    a background loop that runs a pass every `poll_interval` seconds and whenever `wake()` is called
    (the evaluator calls it after a firing commits); `close()` stops it after a last pass.

    Retries: attempt n failing is tried again after `backoff * 2**(n-1)` seconds (capped at
    `max_backoff`, with jitter), at most `max_attempts` attempts in all. `attempt_timeout` (default
    30 s, or half the lease if that is shorter) bounds every attempt (a sink that hangs is a
    retryable failure, so a pass and `close()` always end);
    `lease` is how long a claim lasts and must exceed it: a notification whose dispatcher died
    mid-delivery is claimed again once its lease runs out and redelivered with the same key.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        sinks: Mapping[str, AlertSink | Callable[[AlertNotification], Awaitable[None] | None]],
        *,
        max_attempts: int = 8,
        backoff: float = 2.0,
        max_backoff: float = 600.0,
        lease: float = 60.0,
        attempt_timeout: float | None = None,
        poll_interval: float = 5.0,
        batch_size: int = 50,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ValidationError(f"engine must be an AsyncEngine, got {type(engine).__name__}")
        if not isinstance(sinks, Mapping) or not sinks:
            raise ConfigurationError("sinks must map at least one channel name to a sink")
        wrapped: dict[str, AlertSink] = {}
        for name, sink in sinks.items():
            if isinstance(sink, AlertSink):
                wrapped[name] = sink
            elif callable(sink):
                wrapped[name] = CallableSink(sink)
            else:
                raise ConfigurationError(f"sink {name!r} is neither an AlertSink nor a callable")
        if backoff < 0 or max_backoff < 0:
            raise ValidationError("backoff and max_backoff must be >= 0")
        self.engine = engine
        self.sinks: Mapping[str, AlertSink] = MappingProxyType(wrapped)
        self.max_attempts = positive_int("max_attempts", max_attempts)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.lease = positive_seconds("lease", lease)
        self.attempt_timeout = (
            min(30.0, self.lease / 2)
            if attempt_timeout is None
            else positive_seconds("attempt_timeout", attempt_timeout)
        )
        if self.attempt_timeout >= self.lease:
            raise ValidationError(
                f"lease ({lease} s) must be longer than attempt_timeout ({attempt_timeout} s): a claim must "
                "outlive the attempt it covers"
            )
        self.poll_interval = positive_seconds("poll_interval", poll_interval)
        self.batch_size = positive_int("batch_size", batch_size)
        self._woken = asyncio.Event()
        self._pass: asyncio.Task[int] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> AlertDispatcher:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- passes ---------------------------------------------------------------------------------

    async def dispatch_pending(self) -> int:
        """Claim the due notifications of our channels, deliver them concurrently, record every
        attempt; repeat while a full batch was claimed. Returns the number of attempts made."""
        attempts = 0
        while True:
            claimed = await _on_raw(
                self.engine, lambda raw: raw.fetch(_CLAIM, list(self.sinks), self.lease, self.batch_size)
            )
            if not claimed:
                return attempts
            notifications = [_notification(row) for row in claimed]
            outcomes = await asyncio.gather(*(self._attempt(n) for n in notifications))
            await _on_raw(
                self.engine, functools.partial(self._record, notifications=notifications, outcomes=outcomes)
            )
            attempts += len(notifications)
            if len(claimed) < self.batch_size:
                return attempts

    async def _attempt(self, notification: AlertNotification) -> tuple[DeliveryResult, int]:
        started = perf_counter()
        try:
            result = await asyncio.wait_for(
                self.sinks[notification.channel].deliver(notification), self.attempt_timeout
            )
        except TimeoutError:
            result = DeliveryResult(
                False, None, f"no outcome within attempt_timeout ({self.attempt_timeout:g} s)"
            )
        except Exception as exc:  # a sink's bug must not stop the other deliveries
            result = DeliveryResult(False, None, f"sink raised {type(exc).__name__}")
        if not isinstance(result, DeliveryResult):
            result = DeliveryResult(False, None, "sink returned no DeliveryResult", retryable=False)
        return result, round((perf_counter() - started) * 1000)

    async def _record(
        self,
        raw: asyncpg.Connection,
        *,
        notifications: list[AlertNotification],
        outcomes: list[tuple[DeliveryResult, int]],
    ) -> None:
        async with raw.transaction():
            for n, (result, duration_ms) in zip(notifications, outcomes, strict=True):
                if result.delivered:
                    status, delay = "delivered", 0.0
                elif not result.retryable or n.attempt >= self.max_attempts:
                    status, delay = "failed", 0.0
                    _log.warning("cost alert notification given up", notification=n.id, channel=n.channel,
                                 attempts=n.attempt, status=result.status)  # fmt: skip
                else:
                    status, delay = "pending", self._delay(n.attempt)
                await raw.execute(
                    _RECORD, n.id, n.attempt, status, delay, "delivered" if result.delivered else "failed",
                    result.status, result.error[:500] if result.error else None, duration_ms,
                )  # fmt: skip

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # jitter, not security

    # -- background loop ------------------------------------------------------------------------

    def wake(self) -> None:
        """Run a pass soon (called after a firing commits). Without `start()`, runs one pass in the
        background; with it, wakes the loop."""
        if self._closed:
            return
        if self._loop_task is not None:
            self._woken.set()
        elif self._pass is None or self._pass.done():
            self._pass = asyncio.get_running_loop().create_task(self._safe_pass())
        else:
            self._woken.set()  # the running pass runs once more before it ends

    def start(self) -> None:
        """Start the background loop (one pass every `poll_interval` seconds, and on `wake()`)."""
        if self._loop_task is None and not self._closed:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def _safe_pass(self) -> int:
        done = 0
        while True:
            self._woken.clear()
            try:
                done += await self.dispatch_pending()
            except (PersistenceError, asyncpg.PostgresError, OSError) as exc:
                _log.warning("cost alert dispatch failed", error=type(exc).__name__,
                             sqlstate=getattr(exc, "sqlstate", None))  # fmt: skip
                return done
            if not self._woken.is_set() or self._loop_task is not None:
                return done

    async def _loop(self) -> None:
        while not self._closed:
            await self._safe_pass()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.poll_interval)

    async def close(self) -> None:
        """Stop the loop after the pass in flight, then run a last pass for what is due now. Never
        waits for ever: every attempt ends within `attempt_timeout`."""
        self._closed = True
        self._woken.set()
        for task in (self._loop_task, self._pass):
            if task is not None:
                with contextlib.suppress(Exception):
                    await task
        self._loop_task = None
        await self._safe_pass()
