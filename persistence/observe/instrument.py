"""Wire `Hooks` into one engine: SQLAlchemy cursor events for queries, a pool subclass and pool events.

Only engines built with hooks get any of this (see `engine.build_engine(hooks=...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any, ClassVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool, PoolProxiedConnection

from persistence.errors import translate
from persistence.observe.hooks import Hooks, PoolEvent, PoolEventKind, PoolStats, QueryEvent, register
from persistence.observe.logging import request_id, trace_id
from persistence.observe.statements import describe


class InstrumentedQueuePool(AsyncAdaptedQueuePool):
    """The async queue pool, timing each checkout and reporting pool numbers after checkout and checkin.

    `pool_class()` makes one subclass per engine that carries its hooks, so `dispose()` (which
    recreates the pool from its class) keeps them.
    """

    persistence_hooks: ClassVar[Hooks]
    persistence_database: ClassVar[str | None]

    def connect(self) -> PoolProxiedConnection:
        started = perf_counter()
        conn = super().connect()
        wait = perf_counter() - started
        self.persistence_hooks.pool(PoolEvent("checkout", self._stats(), wait, self.persistence_database))
        return conn

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        self.persistence_hooks.pool(PoolEvent("checkin", self._stats(), None, self.persistence_database))

    def _stats(self) -> PoolStats:
        # QueuePool.size()/checkedin()/checkedout()/overflow(), inlined: this runs twice per call.
        queue = self._pool
        size = queue.maxsize
        idle = queue.qsize()
        overflow = self._overflow
        return PoolStats(size, size - idle + overflow, idle, overflow if overflow > 0 else 0)


def pool_class(hooks: Hooks, database: str | None) -> type[InstrumentedQueuePool]:
    return type(
        "InstrumentedQueuePool",
        (InstrumentedQueuePool,),
        {"persistence_hooks": hooks, "persistence_database": database},
    )


def pool_stats(pool: Pool) -> PoolStats:
    """Size, in use, idle and overflow of a queue pool (zeros for pools that keep no connections)."""
    if isinstance(pool, AsyncAdaptedQueuePool):
        return PoolStats(pool.size(), pool.checkedout(), pool.checkedin(), max(0, pool.overflow()))
    return PoolStats(0, 0, 0, 0)


def instrument(engine: Engine, hooks: Hooks) -> None:
    """Time every statement of a (sync) engine and register its pool listeners.

    Statements are timed by wrapping this engine's own dialect instance's `do_execute`,
    `do_executemany` and `do_execute_no_params` (every statement SQLAlchemy sends goes through one
    of them), not with the engine's cursor events: any engine-level event listener makes each
    connection build a joined event dispatcher, which measured about half of the hooks' overhead.
    """
    register(engine, hooks)
    dialect = engine.dialect
    database = engine.url.database
    for name, many in (("do_execute", False), ("do_executemany", True), ("do_execute_no_params", False)):
        setattr(dialect, name, _timed(getattr(dialect, name), hooks, database, many))

    def pool_listener(kind: PoolEventKind) -> Any:
        def listener(*args: Any) -> None:
            hooks.pool(PoolEvent(kind, pool_stats(engine.pool), None, database))

        return listener

    for kind in ("connect", "invalidate", "close"):
        event.listen(engine, kind, pool_listener(kind))


def _timed(
    original: Callable[..., None], hooks: Hooks, database: str | None, executemany: bool
) -> Callable[..., None]:
    emit = hooks.query

    def execute(cursor: Any, statement: str, *rest: Any) -> None:
        started = perf_counter()
        try:
            original(cursor, statement, *rest)
        except Exception as exc:
            duration = perf_counter() - started
            info = describe(statement)
            err = translate(exc)
            emit(
                QueryEvent(
                    info.operation,
                    info.table,
                    info.normalised,
                    duration,
                    False,
                    getattr(err, "sqlstate", None),
                    type(err if err is not None else exc).__name__,
                    None,
                    executemany,
                    database,
                    trace_id.get(),
                    request_id.get(),
                )
            )
            raise
        duration = perf_counter() - started
        info = describe(statement)
        rows = cursor.rowcount
        emit(
            QueryEvent(
                info.operation,
                info.table,
                info.normalised,
                duration,
                True,
                None,
                None,
                rows if rows >= 0 else None,
                executemany,
                database,
                trace_id.get(),
                request_id.get(),
            )
        )

    return execute
