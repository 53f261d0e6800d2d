"""A pinned engine: every connection it hands out is one connection, inside one outer transaction.

This is how the pytest plugin isolates a test (Django's `TestCase` on one connection): the test's
`engine` is a `PinnedEngine` over the session's real engine and one connection checked out of it,
in a transaction that is rolled back when the test ends. Everything the package opens on such an
engine becomes a savepoint on that connection:

- `transaction()` blocks and repository calls (`transaction.py` asks `pin_of(engine)`): a session
  joined to the connection with `join_transaction_mode="create_savepoint"`;
- `engine.connect()` / `engine.begin()` (the package's own maintenance code, and the caller's):
  a `_LentConnection` whose transaction is a savepoint (commit releases it, rollback and close
  roll back to it);
- the AI-call ledger's leases (`ai_calls/leases.py`): the same connection, each unit of work in an
  asyncpg savepoint (asyncpg nests `transaction()` as a savepoint inside SQLAlchemy's).

Concurrent tasks take turns: each of those scopes holds the pin's lock (re-entrant for the task
that holds it) for its duration, so two tasks never interleave savepoints on the one connection.
Isolation level and read-only options cannot change inside a transaction: `isolation_level` is
ignored under a pin, and `transaction(read_only=True)` is enforced with `SET LOCAL
transaction_read_only` in a savepoint that is always rolled back (`transaction.py`).

Nothing outside the package's own code paths changes: without a pin, `pin_of` is one isinstance test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction
from sqlalchemy.pool import PoolProxiedConnection

from persistence.errors import TransactionError

__all__ = ["Pin", "PinnedEngine", "pin_of"]

# A task that waits this long for the test's one connection is most likely in a deadlock: the
# task holding it (in a transaction block or an open connection) awaits the waiting task.
WAIT_LIMIT_S = 60.0

# Options that would restart or reconfigure the outer transaction (asyncpg's adapter rolls the
# connection back to change its isolation level): dropped under a pin.
_TRANSACTION_OPTIONS = frozenset({"isolation_level", "postgresql_readonly", "postgresql_deferrable"})


class Pin:
    """One connection in an outer transaction, and the task-re-entrant lock its users take turns on."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._depth = 0
        # Who opened each scope now held, innermost last: `transaction.py` marks a block failed
        # only for statements of its own scope, not of a connection lent inside it.
        self.owners: list[object] = []

    async def acquire(self, owner: object) -> None:
        task = asyncio.current_task()
        if task is None or self._holder is not task:
            try:
                async with asyncio.timeout(WAIT_LIMIT_S):
                    await self._lock.acquire()
            except TimeoutError:
                raise TransactionError(
                    f"waited {WAIT_LIMIT_S:.0f} s for the test's connection: under the isolating `engine` "
                    "fixture every transaction, connection and ledger call shares one connection, and the "
                    "task holding it waits for this one. Mark the test @pytest.mark.commits to give it "
                    "real, separate connections"
                ) from None
            self._holder = task
        self._depth += 1
        self.owners.append(owner)

    def release(self, owner: object) -> None:
        for i in range(len(self.owners) - 1, -1, -1):
            if self.owners[i] is owner:
                del self.owners[i]
                break
        self._depth -= 1
        if self._depth == 0:
            self._holder = None
            self._lock.release()

    @property
    def innermost(self) -> object | None:
        return self.owners[-1] if self.owners else None

    @contextlib.asynccontextmanager
    async def hold(self, owner: object) -> AsyncIterator[AsyncConnection]:
        await self.acquire(owner)
        try:
            yield self.connection
        finally:
            self.release(owner)


class _LentTransaction(AsyncTransaction):
    """`begin()` of a lent connection: its commit and rollback are the connection's own (savepoints)."""

    __slots__ = ()

    async def start(self, is_ctxmanager: bool = False) -> AsyncTransaction:
        return self

    @property
    def is_active(self) -> bool:
        return not self.connection.closed

    @property
    def is_valid(self) -> bool:
        return self.is_active

    async def commit(self) -> None:
        await self.connection.commit()

    async def rollback(self) -> None:
        await self.connection.rollback()

    async def close(self) -> None:
        await self.connection.rollback()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if type_ is None:
            await self.commit()
        else:
            await self.rollback()


class _LentConnection(AsyncConnection):
    """What `PinnedEngine.connect()` gives: the pinned connection, its transaction a savepoint.

    commit() releases the savepoint and opens the next one, rollback() rolls back to it, close()
    rolls back what was not committed (as closing a real connection does; unless the driver connection
    was used directly, see `get_raw_connection`) and leaves the pinned connection open. Execution options set on it are undone at close; transaction options are ignored.
    """

    __slots__ = ("_done", "_options", "_pin", "_raw_used", "_root")

    def __init__(self, async_engine: PinnedEngine) -> None:
        super().__init__(async_engine)
        self._pin = async_engine.pin
        self._root: AsyncTransaction | None = None
        self._options: Any = None
        self._done = False
        self._raw_used = False

    async def start(self, is_ctxmanager: bool = False) -> AsyncConnection:
        if self.sync_connection is not None or self._done:
            raise TransactionError("this connection was started already")
        await self._pin.acquire(self)
        try:
            sync = self._pin.connection.sync_connection
            assert sync is not None
            self.sync_connection = sync
            self._options = sync._execution_options
            self._root = await AsyncTransaction(self, nested=True).start()
        except BaseException:
            self.sync_connection = None
            self._pin.release(self)
            raise
        return self

    def begin(self) -> AsyncTransaction:
        if self.sync_connection is None:
            self._raise_for_not_started()
        return _LentTransaction(self)

    async def commit(self) -> None:
        root, self._root = self._root, None
        if root is not None and root.is_active:
            await root.commit()
        self._root = await AsyncTransaction(self, nested=True).start()

    async def rollback(self) -> None:
        root, self._root = self._root, None
        if root is not None and root.is_active:
            await root.rollback()
        self._root = await AsyncTransaction(self, nested=True).start()

    async def get_raw_connection(self) -> PoolProxiedConnection:
        """The driver connection: what code runs on it directly (asyncpg transactions, COPY, autocommit
        statements) commits on a real connection whatever SQLAlchemy's transaction does, so close()
        keeps it (releases the savepoint) instead of rolling it back."""
        self._raw_used = True
        return await super().get_raw_connection()

    async def invalidate(self, exception: BaseException | None = None) -> None:
        """The pinned connection outlives the test's scopes: roll back to the savepoint instead."""
        await self.rollback()

    async def execution_options(self, **opt: Any) -> AsyncConnection:
        kept = {k: v for k, v in opt.items() if k not in _TRANSACTION_OPTIONS}
        if kept:
            await super().execution_options(**kept)
        return self

    @property
    def closed(self) -> bool:
        return self._done or self.sync_connection is None

    async def close(self) -> None:
        if self._done or self.sync_connection is None:
            return
        self._done = True
        sync = self.sync_connection
        try:
            root, self._root = self._root, None
            if root is not None and root.is_active:
                if self._raw_used and not await _aborted(sync):
                    try:
                        await root.commit()
                        return
                    except Exception:  # the savepoint is aborted: nothing in it can be kept
                        if not root.is_active:
                            raise
                # A statement sent on the driver connection failed and aborted the savepoint; its
                # error already reached the caller (and is on its way out of this `async with`):
                # roll back to the savepoint so the test's connection stays usable.
                await root.rollback()
        finally:
            sync._execution_options = self._options
            self._pin.release(self)


async def _aborted(sync: Any) -> bool:
    """Whether the pinned connection's current savepoint is aborted (a failed statement in it).

    Outside a pin each raw statement is its own transaction, so a failed one leaves the connection
    usable; inside, it aborts the lease's savepoint, which must then be rolled back, not released."""
    raw = sync.connection.driver_connection
    if not isinstance(raw, asyncpg.Connection):  # pragma: no cover (the asyncpg dialect only)
        return False
    try:
        await raw.fetchval("SELECT 1")
    except asyncpg.InFailedSQLTransactionError:
        return True
    return False


class PinnedEngine(AsyncEngine):
    """An `AsyncEngine` over a real engine's sync engine whose connections are all one pinned one."""

    __slots__ = ("pin",)
    _connection_cls = _LentConnection

    def __init__(self, sync_engine: Engine, pin: Pin) -> None:
        # Not AsyncEngine.__init__: that would make this facade the sync engine's registered proxy.
        self.sync_engine = sync_engine
        self.pin = pin

    def execution_options(self, **opt: Any) -> AsyncEngine:
        kept = {k: v for k, v in opt.items() if k not in _TRANSACTION_OPTIONS}
        return PinnedEngine(self.sync_engine.execution_options(**kept), self.pin)

    async def dispose(self, close: bool = True) -> None:
        """The real engine belongs to the fixture that pinned it: nothing to do here."""


def pin_of(engine: AsyncEngine) -> Pin | None:
    """The pin of `engine` if it is a `PinnedEngine` (tests), else None (production: one isinstance)."""
    return engine.pin if isinstance(engine, PinnedEngine) else None
