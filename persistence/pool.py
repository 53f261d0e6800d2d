"""The engine's connection pool: liveness checks without a round trip per checkout.

SQLAlchemy's `pool_pre_ping` tests every connection it hands out; over asyncpg that is `BEGIN`, an
empty query and `ROLLBACK`, three round trips before each repository call does its own work.
`PersistencePool` pings only a connection that sat idle in the pool for at least
`DatabaseConfig.pool_ping_idle_s` (HikariCP's `aliveBypassWindowMs`): a connection returned a moment
ago was alive a moment ago. What the window lets through (a connection killed in the last few
seconds) fails on its first statement; SQLAlchemy then discards it and every older pooled connection,
the error leaves as a `TransientError`, and a read outside a `transaction()` block is retried once
on a fresh connection (`persistence.repository.retry`). Writes are never retried.

The same class carries the engine's hooks when it has any (checkout timing and pool numbers), so an
engine has one pool class whatever it is configured with.
"""

from __future__ import annotations

from time import monotonic, perf_counter, time
from typing import ClassVar

import asyncpg
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.pool.base import _ConnectionRecord

from persistence.errors import ConnectionLostError, Endpoint, PoolExhaustedError
from persistence.observe.hooks import Hooks, PoolEvent, PoolStats

_RETURNED_AT = "persistence_returned_at"
"""Key in a pooled connection's `info` (cleared by SQLAlchemy when it reconnects): when it came back."""

# SQLSTATEs a server sends as it closes a session: admin shutdown / pg_terminate_backend, crash.
_CLOSING_SQLSTATES = frozenset({"57P01", "57P02"})


class PersistencePool(AsyncAdaptedQueuePool):
    """The async queue pool, pinging only connections idle longer than `ping_idle_s`, with optional hooks.

    `pool_class()` makes one subclass per engine carrying its settings, so `dispose()` (which
    recreates the pool from its class) keeps them.
    """

    ping_idle_s: ClassVar[float | None] = None
    """Ping a connection idle at least this long before handing it out; 0 pings every reuse, None never."""
    persistence_hooks: ClassVar[Hooks | None] = None
    persistence_database: ClassVar[str | None] = None
    persistence_endpoint: ClassVar[Endpoint] = Endpoint()
    """Where the pool connects (no password), for `PoolExhaustedError`."""

    def connect(self) -> PoolProxiedConnection:
        hooks = self.persistence_hooks
        if hooks is None:
            return super().connect()
        started = perf_counter()
        conn = super().connect()
        wait = perf_counter() - started
        hooks.pool(PoolEvent("checkout", self._stats(), wait, self.persistence_database))
        return conn

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            record = super()._do_get()
        except PoolTimeoutError as exc:
            # SQLAlchemy's bare TimeoutError says neither where nor which limits: ours names both.
            where = self.persistence_endpoint
            raise PoolExhaustedError(
                host=where.host,
                port=where.port,
                database=where.database,
                pool_size=self._pool.maxsize,
                max_overflow=self._max_overflow,
                pool_timeout=self._timeout,
            ) from exc
        window = self.ping_idle_s
        if window is not None:
            returned = record.info.get(_RETURNED_AT)
            # Never returned since it connected: fresh, nothing to test.
            if returned is not None and monotonic() - returned >= window:
                self._ping(record)
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED_AT] = monotonic()
        super()._do_return_conn(record)
        hooks = self.persistence_hooks
        if hooks is not None:
            hooks.pool(PoolEvent("checkin", self._stats(), None, self.persistence_database))

    def _ping(self, record: ConnectionPoolEntry) -> None:
        """Test an idle connection; a dead one is discarded (with every older one) and replaced.

        The replacement is opened by SQLAlchemy right after `_do_get` returns (the record has no
        connection any more), and a failure to open it is handled there as for any new connection.
        """
        conn = record.dbapi_connection
        if conn is None or self._replaced_anyway(record):
            return
        reason: BaseException | None = None
        try:
            alive = self._dialect._do_ping_w_event(conn)
        except Exception as exc:  # any failed ping means: do not hand this connection out
            alive, reason = False, exc
        except BaseException as exc:
            # Cancelled mid-ping: the connection's state is unknown; discard it and give the slot back.
            if isinstance(record, _ConnectionRecord):
                record._checkin_failed(exc, _fairy_was_created=False)
            raise
        if alive:
            # Tested just now: QueuePool._do_get may call _do_get again (overflow races); no second ping.
            record.info[_RETURNED_AT] = monotonic()
            return
        error = DisconnectionError("pooled connection failed its idle ping")
        error.__cause__ = reason
        record.invalidate(error)
        # A dead idle connection usually means the server restarted: recycle every older one too,
        # as SQLAlchemy's pre-ping does.
        self._invalidate_time = time()

    def _replaced_anyway(self, record: ConnectionPoolEntry) -> bool:
        """SQLAlchemy reconnects this record at checkout (pool invalidated since, or recycle due)."""
        started = record.starttime if isinstance(record, _ConnectionRecord) else time()
        return self._invalidate_time > started or (-1 < self._recycle < time() - started)

    def _stats(self) -> PoolStats:
        # QueuePool.size()/checkedin()/checkedout()/overflow(), inlined: this runs twice per call.
        queue = self._pool
        size = queue.maxsize
        idle = queue.qsize()
        overflow = self._overflow
        return PoolStats(size, size - idle + overflow, idle, overflow if overflow > 0 else 0)


def pool_class(
    *,
    ping_idle_s: float | None,
    hooks: Hooks | None = None,
    database: str | None = None,
    endpoint: Endpoint | None = None,
) -> type[PersistencePool]:
    """A `PersistencePool` subclass for one engine."""
    return type(
        "PersistencePool",
        (PersistencePool,),
        {
            "ping_idle_s": ping_idle_s,
            "persistence_hooks": hooks,
            "persistence_database": database,
            "persistence_endpoint": endpoint or Endpoint(database=database),
        },
    )


def lost_connection(exc: BaseException) -> bool:
    """Whether `exc` says an established connection was closed under a statement.

    True for a disconnect SQLAlchemy detected (`connection_invalidated`), asyncpg's
    `ConnectionDoesNotExistError`, and the server's own closing SQLSTATEs (57P01 terminated by an
    administrator, 57P02 crash). False for a failure to connect (refused, DNS, timeout): retrying
    those at once only repeats them.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, DBAPIError):
            if err.connection_invalidated:
                return True
            orig = err.orig
            stack.append(orig if isinstance(orig, BaseException) else None)
        if isinstance(err, asyncpg.ConnectionDoesNotExistError | ConnectionLostError):
            return True
        if getattr(err, "sqlstate", None) in _CLOSING_SQLSTATES:
            return True
        stack.extend((err.__cause__, err.__context__))
    return False
