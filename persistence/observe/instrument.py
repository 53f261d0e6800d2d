"""Wire `Hooks` into one engine: wrapped dialect methods for queries, and pool events.

Only engines built with hooks get any of this (see `engine.build_engine(hooks=...)`). Checkout
timing lives in the engine's pool class (`persistence.pool.PersistencePool`), which every pooled
engine has, with or without hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool

from persistence.errors import translate
from persistence.observe.hooks import Hooks, PoolEvent, PoolEventKind, PoolStats, QueryEvent, register
from persistence.observe.logging import request_id, trace_id
from persistence.observe.statements import describe


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
