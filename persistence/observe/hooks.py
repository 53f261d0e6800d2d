"""Typed events for every query, pool change and transaction, and the fan-out that feeds them to sinks.

The engine emits events only when hooks were attached to it (`build_engine(config, hooks=[...])`);
an engine without hooks has no event listeners at all, so it pays nothing.

A sink is any object with `on_query`, `on_pool` and `on_transaction` (see `Hook`; `BaseHook` has
no-op defaults). A sink that raises never breaks the query: `Hooks` logs its first failure (per sink
and method) and keeps going.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.observe.loggers import get_logger

log = get_logger("persistence.observe")

PoolEventKind = Literal["checkout", "checkin", "connect", "invalidate", "close"]
TransactionOutcome = Literal["commit", "rollback", "retried", "failed"]


# Events are plain slotted dataclasses (not frozen: a frozen __init__ costs several times more on this
# hot path). Treat them as read-only; one event object goes to every sink.


@dataclass(slots=True)
class QueryEvent:
    """One statement sent to the server.

    `operation` is the SQL keyword (`SELECT`, `INSERT`, ...; for a `WITH` statement the first
    data-modifying one), `table` the main table (None when none is named), `statement` the SQL
    with literals replaced by `?` (never parameter values). `sqlstate` is None on success; `error`
    is the `persistence.errors` class name of a failure. `rows` is the driver's row count (None
    when it does not know).
    """

    operation: str
    table: str | None
    statement: str
    duration: float
    success: bool
    sqlstate: str | None
    error: str | None
    rows: int | None
    executemany: bool
    database: str | None
    trace_id: str | None
    request_id: str | None


@dataclass(slots=True)
class PoolStats:
    """Connections of one pool: `size` configured, `in_use` checked out, `idle` ready in the pool,
    `overflow` opened beyond `size`."""

    size: int
    in_use: int
    idle: int
    overflow: int

    @property
    def open(self) -> int:
        return self.in_use + self.idle


@dataclass(slots=True)
class PoolEvent:
    """A pool change. `wait` is set for `checkout`: seconds the caller waited for a usable connection
    (queueing for a free one, opening a new one, and the pre-ping), measured around the checkout.

    `stats` are exact after `checkout` and `checkin`; for `connect`, `invalidate` and `close` they are
    the pool's numbers mid-change (a connection being closed still counts as checked out)."""

    kind: PoolEventKind
    stats: PoolStats
    wait: float | None = None
    database: str | None = None


@dataclass(slots=True)
class TransactionStart:
    """A transaction (depth 0) or savepoint (depth >= 1) began on the server."""

    depth: int
    attempt: int
    database: str | None


@dataclass(slots=True)
class TransactionEvent:
    """A transaction (depth 0) or savepoint (depth >= 1) ended.

    outcome: `commit` (committed or released), `rollback` (an exception left the block),
    `retried` (rolled back on 40001/40P01 and the `@transaction(retries=...)` function runs again),
    `failed` (the database refused: an error with a SQLSTATE ended the block, the COMMIT failed,
    or the retries ran out). `attempts` counts runs of a retried function, `max_depth` the deepest
    savepoint the block used, `duration` seconds from the first statement to the end.
    """

    outcome: TransactionOutcome
    duration: float
    attempts: int
    depth: int
    max_depth: int
    sqlstate: str | None
    database: str | None


ReplicaOutcome = Literal["routed", "waited", "fallback"]
ReplicaRole = Literal["replica", "primary", "unreachable", "unknown"]


@dataclass(slots=True)
class ReplicaEvent:
    """Where an outermost read-only block (or an opted-in read outside blocks) ran.

    `routed`: on `replica` at once; `waited`: on `replica` after waiting `wait` seconds for it to
    replay the caller's last commit; `fallback`: on the primary, for `reason` (`no replica`,
    `behind`, `lagging`, `promoted`, `unreachable`, `lost`). `lag_s` is the replica's last measured
    replay lag (None: unknown), `replica` its `user@host:port/database` (None: none was available),
    `role` what it was last seen as (`primary`: promoted; `unreachable`: failed).
    """

    outcome: ReplicaOutcome
    replica: str | None
    reason: str | None
    lag_s: float | None
    wait: float
    database: str | None
    role: ReplicaRole = "unknown"


@runtime_checkable
class Hook(Protocol):
    """A sink for database events. Methods are called on the event loop's thread, synchronously, so
    they must be quick (record and return; export elsewhere)."""

    def on_query(self, event: QueryEvent) -> None: ...

    def on_pool(self, event: PoolEvent) -> None: ...

    def on_transaction(self, event: TransactionEvent) -> None: ...


class BaseHook:
    """No-op `Hook` to subclass when a sink cares about one kind of event only.

    `on_transaction_start` is optional for sinks: tracing sinks use it to open a span that the
    statements of the transaction nest under. `on_replica` (optional too) sees read-replica routing.
    """

    def on_query(self, event: QueryEvent) -> None:
        return None

    def on_pool(self, event: PoolEvent) -> None:
        return None

    def on_transaction_start(self, event: TransactionStart) -> None:
        return None

    def on_transaction(self, event: TransactionEvent) -> None:
        return None

    def on_replica(self, event: ReplicaEvent) -> None:
        return None


class Hooks:
    """Fans each event out to every sink; a raising sink is logged once (per sink and method) and skipped."""

    __slots__ = (
        "_failed",
        "_pool",
        "_query",
        "_replica",
        "_start",
        "_transaction",
        "database",
        "sinks",
        "wants_replica",
        "wants_transaction_start",
    )

    def __init__(self, sinks: Iterable[Hook], *, database: str | None = None) -> None:
        self.sinks: tuple[Hook, ...] = tuple(sinks)
        self.database = database  # of the engine these hooks are attached to
        for sink in self.sinks:
            if not isinstance(sink, Hook):
                raise TypeError(
                    f"{type(sink).__name__} is not a hook: it needs on_query, on_pool and on_transaction"
                )
        self._query = tuple(s.on_query for s in self.sinks)
        self._pool = tuple(s.on_pool for s in self.sinks)
        self._transaction = tuple(s.on_transaction for s in self.sinks)
        # Only sinks that really implement it (BaseHook's default does nothing).
        self._start = tuple(
            getattr(s, "on_transaction_start")  # noqa: B009
            for s in self.sinks
            if getattr(type(s), "on_transaction_start", BaseHook.on_transaction_start)
            is not BaseHook.on_transaction_start
        )
        self.wants_transaction_start = bool(self._start)
        self._replica = tuple(
            getattr(s, "on_replica")  # noqa: B009
            for s in self.sinks
            if getattr(type(s), "on_replica", BaseHook.on_replica) is not BaseHook.on_replica
        )
        self.wants_replica = bool(self._replica)
        self._failed: set[tuple[int, str]] = set()

    def query(self, event: QueryEvent) -> None:
        for fn in self._query:
            try:
                fn(event)
            except Exception as exc:
                self._sink_failed(fn, exc)

    def pool(self, event: PoolEvent) -> None:
        for fn in self._pool:
            try:
                fn(event)
            except Exception as exc:
                self._sink_failed(fn, exc)

    def transaction_start(self, event: TransactionStart) -> None:
        for fn in self._start:
            try:
                fn(event)
            except Exception as exc:
                self._sink_failed(fn, exc)

    def transaction(self, event: TransactionEvent) -> None:
        for fn in self._transaction:
            try:
                fn(event)
            except Exception as exc:
                self._sink_failed(fn, exc)

    def replica(self, event: ReplicaEvent) -> None:
        for fn in self._replica:
            try:
                fn(event)
            except Exception as exc:
                self._sink_failed(fn, exc)

    def _sink_failed(self, fn: object, exc: Exception) -> None:
        owner = getattr(fn, "__self__", fn)
        method = getattr(fn, "__name__", "?")
        key = (id(owner), method)
        if key in self._failed:
            return
        self._failed.add(key)
        log.error(
            "metrics sink failed; its later failures are not logged",
            sink=type(owner).__name__,
            method=method,
            error=type(exc).__name__,
            exc_info=exc,
        )


# Engine -> its hooks. Keyed by the sync engine (what SQLAlchemy's events see), weakly.
_ENGINE_HOOKS: weakref.WeakKeyDictionary[Engine, Hooks] = weakref.WeakKeyDictionary()


def register(engine: Engine, hooks: Hooks) -> None:
    _ENGINE_HOOKS[engine] = hooks


def hooks_of(engine: AsyncEngine) -> Hooks | None:
    """The hooks attached to `engine`, None when there are none (the common, free case)."""
    if not _ENGINE_HOOKS:
        return None
    sync = engine.sync_engine
    hooks = _ENGINE_HOOKS.get(sync)
    if hooks is None:
        # `engine.execution_options(...)` makes an option engine that proxies the hooked one.
        proxied = getattr(sync, "_proxied", None)
        if isinstance(proxied, Engine):
            hooks = _ENGINE_HOOKS.get(proxied)
    return hooks
