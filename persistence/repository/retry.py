"""One retry for a read whose pooled connection turned out dead (see `persistence.pool`).

The pool hands out a connection used within the last `pool_ping_idle_s` seconds without testing it.
If the server closed it meanwhile (restart, `pg_terminate_backend`, a proxy's idle timeout), the
first statement fails and SQLAlchemy discards that connection and every older pooled one. A read
outside a `transaction()` block is its own checkout and its own transaction, so running it again on
a fresh connection is safe and invisible to the caller. Inside a block nothing is retried (the
block's transaction is gone; the block decides), and writes are never retried (their outcome is
unknown once the connection is lost).

Decorate only a method that does the I/O on arguments already checked and built (see
`Reads._fetch`): a retried method must not consume its arguments (a generator would be empty the
second time).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from persistence.blocks import _active_frame
from persistence.observe.loggers import get_logger
from persistence.pool import lost_connection
from persistence.replicas import reading

P = ParamSpec("P")
R = TypeVar("R")

log = get_logger("persistence.repository")


def retry_read(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run the read again, once, if it failed because its connection was lost, outside any block."""

    @functools.wraps(method)
    async def read(*args: P.args, **kwargs: P.kwargs) -> R:
        if _active_frame() is not None:
            return await method(*args, **kwargs)
        with reading():  # outside blocks a read may go to a replica (persistence.replicas)
            try:
                return await method(*args, **kwargs)
            except Exception as exc:
                if not lost_connection(exc):
                    raise
                log.info(
                    "read retried on a fresh connection", reason=type(exc).__name__, read=method.__qualname__
                )
            return await method(*args, **kwargs)

    return read
