"""Wire `Hooks` into one engine: SQLAlchemy cursor events for queries, a pool subclass and pool events.

Only engines built with hooks get any of this (see `engine.build_engine(hooks=...)`).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, ClassVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool, PoolProxiedConnection

from persistence.errors import translate
from persistence.observe.hooks import Hooks, PoolEvent, PoolEventKind, PoolStats, QueryEvent, register
from persistence.observe.logging import request_id, trace_id
from persistence.observe.statements import describe

_T0 = "_persistence_t0"


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
        self.persistence_hooks.pool(PoolEvent("checkout", pool_stats(self), wait, self.persistence_database))
        return conn

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        self.persistence_hooks.pool(PoolEvent("checkin", pool_stats(self), None, self.persistence_database))


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
    """Register the query and pool listeners of `hooks` on a (sync) engine."""
    register(engine, hooks)
    database = engine.url.database
    emit_query = hooks.query
    emit_pool = hooks.pool

    def before(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if context is not None:
            setattr(context, _T0, perf_counter())

    def after(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if context is None:
            return
        duration = perf_counter() - getattr(context, _T0)
        info = describe(statement)
        rows = cursor.rowcount
        emit_query(
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

    def failed(ctx: ExceptionContext) -> None:
        context = ctx.execution_context
        started = getattr(context, _T0, None) if context is not None else None
        if started is None or ctx.statement is None:
            return  # not a statement (connect, pre-ping) or it never reached the cursor
        duration = perf_counter() - started
        info = describe(ctx.statement)
        err = translate(ctx.sqlalchemy_exception or ctx.original_exception)
        emit_query(
            QueryEvent(
                info.operation,
                info.table,
                info.normalised,
                duration,
                False,
                getattr(err, "sqlstate", None),
                type(err).__name__ if err is not None else type(ctx.original_exception).__name__,
                None,
                bool(getattr(context, "executemany", False)),
                database,
                trace_id.get(),
                request_id.get(),
            )
        )

    def pool_listener(kind: PoolEventKind) -> Any:
        def listener(*args: Any) -> None:
            emit_pool(PoolEvent(kind, pool_stats(engine.pool), None, database))

        return listener

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)
    for kind in ("connect", "invalidate", "close"):
        event.listen(engine, kind, pool_listener(kind))
