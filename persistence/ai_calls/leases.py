"""The AI-call ledger's own connections: leased from the engine's pool for the logger's lifetime.

A checkout per call would pay the pool's pre-ping round trip; `Leases` keeps up to `size`
SQLAlchemy connections checked out and hands their asyncpg connections to the logger's work.
A connection that failed in a way that may have left it in an unknown state is invalidated (never
back to the pool as healthy); a lost one is replaced and the work retried once (`attempts`; the
idempotency key makes that safe).

Under the pytest plugin's isolating engine (`persistence.pinning`) there is one connection: every
unit of work takes the pin's turn and runs in an asyncpg savepoint (asyncpg nests `transaction()`
inside the transaction SQLAlchemy began), so its writes stay in the test's transaction and a
failed statement aborts only its own work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.errors import (
    Endpoint,
    PersistenceError,
    connect_error,
    is_connection_failure,
    lost_error,
    raise_translated,
)
from persistence.pinning import Pin, pin_of
from persistence.tenancy import as_tenant, check_tenant

__all__ = ["Leases"]


def _lost(exc: BaseException, raw: asyncpg.Connection) -> bool:
    """A connection-level failure: the statement may or may not have run, the connection is done
    for, and retrying on another one with the same idempotency key is safe. asyncpg raises
    `InternalClientError` on a connection the server terminated while it sat idle."""
    return isinstance(exc, Exception) and (
        raw.is_closed() or is_connection_failure(exc) or isinstance(exc, asyncpg.InternalClientError)
    )


def _unhealthy(exc: BaseException, raw: asyncpg.Connection) -> bool:
    """Whether a connection that raised `exc` must be discarded rather than reused: anything but
    the server's verdict on a statement (or our own validation) may have left it in an unknown state."""
    return _lost(exc, raw) or not isinstance(exc, asyncpg.PostgresError | PersistenceError)


class _Lease:
    """One pooled SQLAlchemy connection held by the logger, and its asyncpg connection."""

    __slots__ = ("conn", "raw")

    def __init__(self, conn: AsyncConnection, raw: asyncpg.Connection) -> None:
        self.conn = conn
        self.raw = raw


class Leases:
    """Up to `size` connections leased from `engine`'s pool (one pinned connection under the fixture)."""

    def __init__(
        self,
        engine: AsyncEngine,
        size: int,
        where: Endpoint,
        owner: str = "AICallLogger",
        *,
        plain_json: bool = False,
    ) -> None:
        """`plain_json`: the leased connections get asyncpg's own jsonb codec (text in and out, in
        C) instead of SQLAlchemy's (a Python call per value, and `json.loads` on reads), and are
        closed, never given back to the pool, when the leases close. For owners that only write
        JSON text and never read JSON (the event recorder: ~0.3 µs per JSON value in a COPY)."""
        self.engine = engine
        self._plain_json = plain_json
        self._owner = owner  # who is closed, in errors
        self.size = size
        self.idle: list[_Lease] = []
        self.closed = False
        self._where = where
        self._leased = 0
        self._waiters: deque[asyncio.Future[_Lease | None]] = deque()
        self._discarding: set[asyncio.Task[None]] = set()
        self._pin = pin_of(engine)

    @property
    def pinned(self) -> bool:
        """Whether every unit of work runs on a test's one pinned connection (the pytest plugin)."""
        return self._pin is not None

    async def close(self) -> None:
        """Give back every idle leased connection; those in use are given back when released."""
        self.closed = True
        idle, self.idle = self.idle, []
        self._leased -= len(idle)
        for lease in idle:
            with contextlib.suppress(Exception):
                if lease.raw.is_closed() or self._plain_json:
                    await lease.conn.invalidate()  # never back to the pool as healthy (or with our codec)
                await lease.conn.close()
        self._wake(None)
        await asyncio.gather(*self._discarding, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _pinned(self, pin: Pin) -> AsyncIterator[asyncpg.Connection]:
        """The test's one connection, for one unit of work in its own savepoint."""
        if self.closed:
            raise PersistenceError(f"{self._owner} is closed")
        owner = object()
        async with pin.hold(owner) as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, asyncpg.Connection)
            try:
                async with raw.transaction():
                    yield raw
            except Exception as exc:
                raise_translated(exc, self._where)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A leased connection for a block (tests and maintenance; the hot paths use `attempts`)."""
        if self._pin is not None:
            async with self._pinned(self._pin) as raw:
                yield raw
            return
        lease = await self.acquire()
        broken = False
        try:
            yield lease.raw
        except BaseException as exc:
            broken = _unhealthy(exc, lease.raw)
            if broken:
                self._drop_closed_idle()
            if isinstance(exc, Exception) and not isinstance(exc, PersistenceError):
                if _lost(exc, lease.raw):
                    raise lost_error(exc, self._where) from exc
                raise_translated(exc, self._where)
            raise
        finally:
            await self._release(lease, broken=broken)

    async def acquire(self) -> _Lease:
        """An idle lease (no await when one is idle), else a new one, else wait for a release."""
        while True:
            if self.closed:
                raise PersistenceError(f"{self._owner} is closed")
            if (lease := self._take_idle()) is not None:
                return lease
            if self._leased < self.size:
                break
            waiter: asyncio.Future[_Lease | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and (lease := waiter.result()) is not None:
                    self._put_back(lease)  # handed over just as we were cancelled
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if handed is not None:
                return handed
        self._leased += 1
        try:
            conn = await self.engine.connect()
            try:
                raw = (await conn.get_raw_connection()).driver_connection
                if self._plain_json:
                    assert isinstance(raw, asyncpg.Connection)
                    await raw.reset_type_codec("jsonb", schema="pg_catalog")
            except BaseException:
                if self._plain_json:
                    with contextlib.suppress(Exception):
                        await conn.invalidate()  # possibly with our codec: never back to the pool
                await conn.close()
                raise
        except BaseException as exc:
            self._leased -= 1
            self._wake(None)
            if isinstance(exc, Exception) and not isinstance(exc, PersistenceError):
                raise connect_error(exc, self._where) from exc
            raise
        assert isinstance(raw, asyncpg.Connection)
        return _Lease(conn, raw)

    def _wake(self, lease: _Lease | None) -> bool:
        """Hand `lease` (or, with None, a free slot) to the first waiter; False if none waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(lease)
                return True
        return False

    def _put_back(self, lease: _Lease) -> None:
        if not self._wake(lease):
            self.idle.append(lease)

    def _take_idle(self) -> _Lease | None:
        """An idle lease whose connection is still open; closed ones are discarded on the way."""
        while self.idle and not self.closed:
            lease = self.idle.pop()
            if not lease.raw.is_closed():
                return lease
            self._discard(lease)
        return None

    def _drop_closed_idle(self) -> None:
        """After a connection failure, discard every idle lease the server has closed too."""
        for lease in [lease for lease in self.idle if lease.raw.is_closed()]:
            self.idle.remove(lease)
            self._discard(lease)

    def _discard(self, lease: _Lease) -> None:
        self._leased -= 1
        task = asyncio.get_running_loop().create_task(self._invalidate(lease))
        self._discarding.add(task)  # a strong reference until it is done
        task.add_done_callback(self._discarding.discard)
        self._wake(None)

    @staticmethod
    async def _invalidate(lease: _Lease) -> None:
        with contextlib.suppress(Exception):
            await lease.conn.invalidate()
        with contextlib.suppress(Exception):
            await lease.conn.close()

    async def _release(self, lease: _Lease, *, broken: bool) -> None:
        if not (broken or self.closed or lease.raw.is_closed() or lease.raw.is_in_transaction()):
            self._put_back(lease)
            return
        self._leased -= 1
        try:
            await self._invalidate(lease)
        finally:
            self._wake(None)

    async def for_tenant(self, tenant_id: str, work: Any, *args: Any) -> Any:
        """`attempts`, acting for `tenant_id` (`tenancy.as_tenant`): the domain modules' calls that
        name their company. A call for another tenant than the `tenant()` context's is refused
        before a connection is taken."""
        check_tenant(tenant_id)
        return await self.attempts(_tenanted, tenant_id, work, *args)

    async def attempts(self, work: Any, *args: Any) -> Any:
        """`work(raw_connection, *args)` with our error types; one retry on a lost connection."""
        if self._pin is not None:
            async with self._pinned(self._pin) as raw:
                return await work(raw, *args)
        for attempt in (1, 2):
            # The retry after a lost connection skips idle leases: they were most likely cut together.
            lease = (self._take_idle() if attempt == 1 else None) or await self.acquire()
            try:
                result = await work(lease.raw, *args)
            except BaseException as exc:
                lost = _lost(exc, lease.raw)
                await self._release(lease, broken=_unhealthy(exc, lease.raw))
                if isinstance(exc, PersistenceError):
                    raise
                if lost:
                    self._drop_closed_idle()  # terminated together, most likely: don't retry on them
                    if attempt == 2:
                        raise lost_error(exc, self._where) from exc
                    continue
                if isinstance(exc, Exception):
                    raise_translated(exc, self._where)
                raise
            if self.closed or lease.raw.is_in_transaction():
                await self._release(lease, broken=False)
            else:
                self._put_back(lease)
            return result
        raise AssertionError("unreachable")


async def _tenanted(raw: asyncpg.Connection, tenant_id: str, work: Any, *args: Any) -> Any:
    return await as_tenant(raw, tenant_id, lambda conn: work(conn, *args))
