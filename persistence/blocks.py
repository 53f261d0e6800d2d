"""What a transaction block is made of, and how code inside one finds its session.

`transaction.py` is the public face (`transaction()`, `Transaction`, `on_commit`); this module holds
the state it manages: `_Boundary` (the outermost block: one lazily opened session, the owning task),
`_Frame` (one per block: its savepoint, its `on_commit` callbacks, whether it must roll back), the
context variable holding the innermost frame, the engine listener that marks a block failed when one
of its statements fails, and the scopes repositories use (`session_scope`, `connection_scope`,
`current_session`). Split from `transaction.py` along that seam; both keep the semantics documented there.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, ExceptionContext
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncSessionTransaction

from persistence.errors import (
    ArgumentTypeError,
    ConnectionLostError,
    PersistenceError,
    TransactionError,
    raise_translated,
    translate,
)
from persistence.observe.hooks import (
    Hooks,
    TransactionEvent,
    TransactionOutcome,
    TransactionStart,
    hooks_of,
)
from persistence.observe.loggers import get_logger
from persistence.pinning import Pin, pin_of
from persistence.replicas import (
    Replica,
    ReplicaRouter,
    remember_commit,
    remembered,
    remembering_connection,
    replica_connection,
    replica_for_read,
    replica_session,
    router_of,
)
from persistence.tenancy import apply_scope, in_scope

IsolationLevel = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
Callback = Callable[[], object]


_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
_IN_FAILED_TRANSACTION = "25P02"
_BACKOFF_BASE_S = 0.01
_BACKOFF_CAP_S = 1.0
# Errors of the database layer: the only ones translated when they leave a block (an OSError or
# TimeoutError of the caller's own code passes through unchanged).
_DATABASE_ERRORS = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

log = get_logger("persistence.transaction")


def _translated(exc: Exception) -> Exception:
    """`exc` as a `persistence.errors` type when `translate` knows it (a `PendingRollbackError` always
    is: a session left unusable never leaves this module as such); otherwise `exc` itself."""
    return translate(exc) or exc


def _rolled_back_by_session() -> TransactionError:
    return TransactionError("a flush failed in this block and SQLAlchemy rolled its work back")


def _describe(error: BaseException) -> str:
    """Type and SQLSTATE of a failure, for messages (never its text: that may quote values)."""
    sqlstate = getattr(error, "sqlstate", None)
    return f"{type(error).__name__}, SQLSTATE {sqlstate}" if sqlstate else type(error).__name__


@dataclass(frozen=True)
class TransactionOptions:
    durable: bool = False
    read_only: bool = False
    isolation_level: IsolationLevel | None = None
    retries: int = 0
    savepoint: bool = True


@dataclass(eq=False)
class _Boundary:
    """The outermost block: one session, opened on first use."""

    options: TransactionOptions
    task: asyncio.Task[Any] | None
    engine: AsyncEngine | None = None
    session: AsyncSession | None = None
    # The session's connection (SQLAlchemy's sync object): how `_on_database_error` recognises
    # the statements of this block.
    connection: Connection | None = None
    closed: bool = False
    frames: list[_Frame] = field(default_factory=list)
    # Observability (only used when the engine has hooks): run number of a retried function, its
    # retry budget, when the first statement ran, and the deepest savepoint.
    attempt: int = 1
    retries: int = 0
    hooks: Hooks | None = None
    started: float = 0.0
    max_depth: int = 0
    # How many times the session was handed out (scopes, current_session): a connection lost on the
    # statement that opened it may be forgotten only if nobody else has used the session since.
    handouts: int = 0
    # The test's pinned connection the block runs on as a savepoint (held until the block ends).
    pin: Pin | None = None
    # The read replica an outermost read-only block runs on (None: the engine it was opened on), and
    # one it lost on the statement that opened it (the block may go on elsewhere).
    replica: Replica | None = None
    lost_replica: Replica | None = None

    def check_usable(self) -> None:
        """Refuse to run statements in a block that must roll back (instead of a raw 25P02)."""
        for frame in self.frames:
            if frame.failure is not None:
                raise TransactionError(
                    f"an earlier statement in this block failed ({_describe(frame.failure)}); no statement "
                    "can run in it until it ends, and it will roll back. To go on after a failure, catch "
                    "the error around a nested transaction() block"
                ) from frame.failure
            if frame.rollback_requested:
                raise TransactionError(
                    "this block is marked for rollback (set_rollback(True)); no statement can run in it "
                    "until it ends"
                )

    async def session_for(self, engine: AsyncEngine) -> AsyncSession:
        _check_task(self)
        self.check_usable()
        if self.session is None:
            await self._open(engine)
            assert self.session is not None
        elif engine is not self.engine and engine.sync_engine is not getattr(
            self.engine, "sync_engine", None
        ):
            raise TransactionError("one transaction cannot span two engines; open a separate transaction")
        self.handouts += 1
        return self.session

    async def forget_lost_connection(self, error: BaseException) -> None:
        """The connection was lost by the call that opened it, before anyone else used the session:
        nothing was done in this transaction, so drop it (the failure is not the block's); the next
        statement opens the block again, with its options and savepoints."""
        session = self.session
        router = router_of(self.engine) if self.replica is not None and self.engine is not None else None
        if router is not None and self.replica is not None:  # reopened elsewhere: skip this replica a while
            router.failed(self.replica, error, in_block=False)
            self.lost_replica = self.replica
        self.engine = self.session = self.connection = self.replica = None
        self.handouts = 0
        self.unpin()
        for frame in self.frames:
            frame.failure = None  # the block was usable when the call began: this was the only failure
            if frame.savepoint is not None:
                if self.hooks is not None:
                    self.ended(frame.depth, frame.started, error, failed=False)
                frame.savepoint = None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()

    async def _open(self, engine: AsyncEngine) -> None:
        """Open the connection with the block's options and the savepoints of the blocks entered so
        far; publish the session only then, so a failed open leaves nothing half-opened behind."""
        if self.hooks is None:  # the first attempt (a retry after a failed open reports no new start)
            self.hooks = hooks = hooks_of(engine)
            if hooks is not None:
                self.started = perf_counter()
                if hooks.wants_transaction_start:
                    hooks.transaction_start(TransactionStart(0, self.attempt, hooks.database))
        router = router_of(engine) if self.options.read_only and pin_of(engine) is None else None
        if router is None or not await self._open_replica(engine, router):
            await self._connect(engine, engine)

    async def _open_replica(self, engine: AsyncEngine, router: ReplicaRouter) -> bool:
        """Open the read-only block on a replica the router admits; False: open it on the primary."""
        replica = router.candidate()
        if replica is None:
            return False
        await router.prepare(replica)
        try:
            opened = await self._connect(engine, replica.engine, lambda driver: router.admit(replica, driver))
        except PersistenceError as exc:  # unreachable, or lost while checking it
            router.failed(replica, exc, in_block=False)
            return False
        if opened:
            self.replica = replica
        return opened

    async def _connect(
        self,
        engine: AsyncEngine,
        target: AsyncEngine,
        admit: Callable[[Any], Awaitable[bool]] | None = None,
    ) -> bool:
        """Open the block's session on `target` (`engine` itself, or a replica of it that `admit`
        accepts, asked on the driver connection before the transaction begins)."""
        _watch(target)
        execution_options: dict[str, Any] = {}
        pin = pin_of(engine)
        if pin is None:
            remember = None if self.options.read_only else remember_commit(engine)  # read-your-writes
            session = AsyncSession(bind=target, expire_on_commit=False, autoflush=False, info=remember)
            if self.options.isolation_level is not None:
                execution_options["isolation_level"] = self.options.isolation_level
            if self.options.read_only:
                execution_options["postgresql_readonly"] = True
        else:
            session = _pinned_session(pin)
            await pin.acquire(self)
            self.pin = pin
        pending = [frame for frame in self.frames[1:] if frame.options.savepoint]
        try:
            # asyncpg applies these when it starts the transaction: no extra round trip.
            connection = await session.connection(execution_options=execution_options or None)
            if admit is not None and not await _admitted(connection, admit):
                await session.close()
                return False
            if pin is not None and self.options.read_only:
                # Inside the test's transaction: read-only from here (undone when the block rolls back).
                await connection.exec_driver_sql("SET LOCAL transaction_read_only = on")
            if in_scope():
                await apply_scope(connection)  # the tenant setting, or the operator role + audit row
            savepoints = [await session.begin_nested() for _ in pending]  # blocks entered before
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await session.close()
            self.unpin()
            if isinstance(exc, Exception):
                raise_translated(exc)
            raise
        self.engine, self.session, self.connection = engine, session, connection.sync_connection
        for frame, savepoint in zip(pending, savepoints, strict=True):
            frame.savepoint = savepoint
            self.savepoint_started(frame)
        return True

    def unpin(self) -> None:
        if self.pin is not None:
            self.pin.release(self)
            self.pin = None

    def savepoint_started(self, frame: _Frame) -> None:
        if self.hooks is None:
            return
        frame.started = perf_counter()
        frame.depth = self.frames.index(frame)
        self.max_depth = max(self.max_depth, frame.depth)
        if self.hooks.wants_transaction_start:
            self.hooks.transaction_start(TransactionStart(frame.depth, self.attempt, self.hooks.database))

    def ended(
        self, depth: int, started: float, exc: BaseException | None, failed: bool, rolled_back: bool = False
    ) -> None:
        """Report the end of the transaction (depth 0) or a savepoint; `failed`: COMMIT/RELEASE raised;
        `rolled_back`: no error, but the block was marked for rollback."""
        assert self.hooks is not None
        outcome, sqlstate = _outcome(exc, retry_left=depth == 0 and self.attempt <= self.retries)
        if failed:
            outcome = "failed"
        elif exc is None and rolled_back:
            outcome = "rollback"
        self.hooks.transaction(
            TransactionEvent(
                outcome,
                perf_counter() - started,
                self.attempt,
                depth,
                self.max_depth if depth == 0 else depth,
                sqlstate,
                self.hooks.database,
            )
        )


async def _admitted(connection: AsyncConnection, admit: Callable[[Any], Awaitable[bool]]) -> bool:
    """Ask `admit` on the driver connection; one that failed under the check is discarded, never
    pooled again (the check bypasses SQLAlchemy's disconnect handling)."""
    try:
        return await admit((await connection.get_raw_connection()).driver_connection)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.invalidate()
        raise


def _read_only_pinned(boundary: _Boundary) -> bool:
    """A read-only block on a test's pinned connection ends by rolling back its savepoint: that is
    what undoes its `SET LOCAL transaction_read_only` (it wrote nothing to keep)."""
    return boundary.pin is not None and boundary.options.read_only


def _outcome(exc: BaseException | None, *, retry_left: bool) -> tuple[TransactionOutcome, str | None]:
    if exc is None:
        return "commit", None
    err = translate(exc) if isinstance(exc, Exception) else None
    sqlstate: str | None = getattr(err, "sqlstate", None)
    if sqlstate is None:
        return "rollback", None
    if retry_left and sqlstate in _RETRYABLE_SQLSTATES:
        return "retried", sqlstate
    return "failed", sqlstate


@dataclass(eq=False)
class _Frame:
    boundary: _Boundary
    options: TransactionOptions
    parent: _Frame | None = None
    savepoint: AsyncSessionTransaction | None = None
    callbacks: list[tuple[Callback, bool]] = field(default_factory=list)
    # Why this block must roll back: the error of a failed statement (or of a merged child block).
    failure: BaseException | None = None
    rollback_requested: bool = False  # set_rollback(True)
    started: float = 0.0
    depth: int = 0

    @property
    def owner(self) -> _Frame:
        """The block whose savepoint (or transaction) holds this block's work: itself, unless it was
        opened with savepoint=False and merges into its parent."""
        frame = self
        while frame.parent is not None and not frame.options.savepoint:
            frame = frame.parent
        return frame

    @property
    def needs_rollback(self) -> bool:
        return self.failure is not None or self.rollback_requested

    def fail(self, error: BaseException) -> None:
        """Mark the owning block as needing rollback; the first failure is the one reported."""
        owner = self.owner
        if owner.failure is None:
            owner.failure = error


_current: ContextVar[_Frame | None] = ContextVar("persistence_transaction", default=None)
_watched: weakref.WeakSet[Dialect] = weakref.WeakSet()


def _watch(engine: AsyncEngine) -> None:
    """Have the engine's dialect report failed statements to the block they ran in (once per dialect)."""
    dialect = engine.sync_engine.dialect
    if dialect not in _watched:
        event.listen(engine.sync_engine, "handle_error", _on_database_error)
        _watched.add(dialect)


def _on_database_error(ctx: ExceptionContext) -> BaseException | None:
    """Mark the block whose connection a statement failed on, whoever ran the statement (a repository,
    or the caller's own `session.execute` on `current_session()`); a statement refused with 25P02
    because of an earlier failure becomes the `TransactionError` that `check_usable` raises."""
    frame = _current.get()
    if frame is None or ctx.connection is None:
        return None
    boundary = frame.boundary
    if boundary.closed or ctx.connection is not boundary.connection:
        return None
    if boundary.pin is not None and boundary.pin.innermost is not boundary:
        return None  # a connection lent inside the block (its own savepoint), not the block's statement
    if ctx.sqlalchemy_exception is None and not ctx.is_disconnect:
        return None  # not a database error (the statement never reached the server)
    cause: BaseException = ctx.sqlalchemy_exception or ctx.original_exception
    error: PersistenceError | None = None
    with contextlib.suppress(Exception):  # marking the block must not depend on classifying the error
        error = translate(cause) if isinstance(cause, Exception) else None
    if getattr(error, "sqlstate", None) == _IN_FAILED_TRANSACTION and any(
        f.failure is not None for f in boundary.frames
    ):
        try:
            boundary.check_usable()
        except TransactionError as refused:
            return refused
    if error is not None and error is not cause:
        error.__cause__ = cause
    frame.fail(error or cause)
    return None


def _check_task(boundary: _Boundary) -> None:
    task = asyncio.current_task()
    if boundary.task is not None and task is not boundary.task:
        raise TransactionError(
            "this transaction belongs to another asyncio task; a task started inside a transaction "
            "must not use it (that would share one connection between concurrent tasks). Run the "
            "child work after the block, or give the child task its own context "
            "(contextvars.Context()) so it opens an independent transaction"
        )


def _active_frame() -> _Frame | None:
    frame = _current.get()
    if frame is None or frame.boundary.closed:
        return None
    return frame


def in_transaction() -> bool:
    """True inside a transaction block of the current task."""
    frame = _active_frame()
    return frame is not None and frame.boundary.task is asyncio.current_task()


def _block_for(what: str) -> _Frame:
    frame = _active_frame()
    if frame is None:
        raise TransactionError(f"{what} needs an active transaction block")
    _check_task(frame.boundary)
    return frame


def set_rollback(rollback: bool) -> None:
    """Mark the current block to roll back when it ends, without an exception (Django's `set_rollback`).

    `set_rollback(False)` withdraws a mark set by `set_rollback(True)`; it cannot un-mark a block
    whose statement failed (the server has aborted that work), and raises `TransactionError` there.
    """
    if not isinstance(rollback, bool):
        raise ArgumentTypeError(f"set_rollback(): rollback expects a bool, got {type(rollback).__name__}")
    owner = _block_for("set_rollback()").owner
    if rollback:
        owner.rollback_requested = True
        return
    if owner.failure is not None:
        raise TransactionError(
            "set_rollback(False) cannot un-mark this block: a statement in it failed and the server has "
            "aborted its work"
        ) from owner.failure
    owner.rollback_requested = False


def get_rollback() -> bool:
    """True when the current block will roll back when it ends (a failed statement or `set_rollback`)."""
    return _block_for("get_rollback()").owner.needs_rollback


def _lost_connection(exc: BaseException) -> bool:
    """SQLAlchemy invalidated the connection (a disconnect), seen through our own translations."""
    error: BaseException | None = exc
    for _ in range(8):
        if error is None:
            return False
        if getattr(error, "connection_invalidated", False) or isinstance(error, ConnectionLostError):
            return True
        error = error.__cause__
    return False


@contextlib.asynccontextmanager
async def _in_block(boundary: _Boundary, engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """The block's session for one repository call. If that call opened it and lost the connection
    before anything else used the session, the block forgets the connection and can be retried."""
    opening = boundary.session is None
    session = await boundary.session_for(engine)
    handouts = boundary.handouts
    try:
        yield session
    except Exception as exc:
        if opening and boundary.handouts == handouts and _lost_connection(exc):
            await boundary.forget_lost_connection(exc)
        raise


async def _scoped(session: AsyncSession) -> AsyncSession:
    """A transaction opened inside a `tenant()` / `across_tenants()` context starts with its scope."""
    if in_scope():
        await apply_scope(await session.connection())
    return session


def _pinned_session(pin: Pin) -> AsyncSession:
    """A session on the test's pinned connection: its transaction is a savepoint there."""
    return AsyncSession(
        bind=pin.connection, join_transaction_mode="create_savepoint", expire_on_commit=False, autoflush=False
    )


@contextlib.asynccontextmanager
async def session_scope(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """The session repositories run on: the current block's, or a short transaction of its own.

    Driver errors leave as `persistence.errors` types, with the original chained.
    """
    frame = _active_frame()
    try:
        if frame is not None:
            async with _in_block(frame.boundary, engine) as session:
                yield session
            return
        pin = pin_of(engine)
        if pin is not None:
            owner = object()
            async with pin.hold(owner), _pinned_session(pin) as session, session.begin():
                yield await _scoped(session)
            return
        chosen = await replica_for_read(engine)
        if chosen is not None:  # an opted-in read on a replica
            async with replica_session(chosen) as session:
                yield await _scoped(session)
            return
        remember = remember_commit(engine)  # a write on an engine with replicas: read-your-writes
        hooks = hooks_of(engine)
        if hooks is None:
            async with (
                AsyncSession(bind=engine, expire_on_commit=False, autoflush=False, info=remember) as session,
                session.begin(),
            ):
                yield await _scoped(session)
            remembered(session)
            return
        # The same, reporting the transaction to the engine's hooks.
        started = perf_counter()
        if hooks.wants_transaction_start:
            hooks.transaction_start(TransactionStart(0, 1, hooks.database))
        in_body = False
        try:
            async with (
                AsyncSession(bind=engine, expire_on_commit=False, autoflush=False, info=remember) as session,
                session.begin(),
            ):
                in_body = True
                yield await _scoped(session)
                in_body = False
            remembered(session)
        except BaseException as exc:
            outcome, sqlstate = _outcome(exc, retry_left=False)
            hooks.transaction(
                TransactionEvent(
                    outcome if in_body else "failed",
                    perf_counter() - started,
                    1,
                    0,
                    0,
                    sqlstate,
                    hooks.database,
                )
            )
            raise
        hooks.transaction(TransactionEvent("commit", perf_counter() - started, 1, 0, 0, None, hooks.database))
    except Exception as exc:
        raise_translated(exc)


@contextlib.asynccontextmanager
async def connection_scope(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Like `session_scope`, for statements that load no model instances (counts, bulk writes).

    Inside a block: the block's connection (the same transaction as its session). Outside one: a
    short transaction on a pooled connection, without building an ORM session around it.
    """
    frame = _active_frame()
    try:
        if frame is not None:
            async with _in_block(frame.boundary, engine) as session:
                yield await session.connection()
            return
        pin = pin_of(engine)
        if pin is not None:
            owner = object()
            async with pin.hold(owner) as conn, conn.begin_nested():
                if in_scope():
                    await apply_scope(conn)
                yield conn
            return
        chosen = await replica_for_read(engine)
        if chosen is not None:
            async with replica_connection(chosen) as conn:
                if in_scope():
                    await apply_scope(conn)
                yield conn
            return
        if remember_commit(engine) is not None:
            async with remembering_connection(engine) as conn:
                if in_scope():
                    await apply_scope(conn)
                yield conn
            return
        async with engine.begin() as conn:
            if in_scope():
                await apply_scope(conn)
            yield conn
    except Exception as exc:
        raise_translated(exc)


async def current_session(engine: AsyncEngine) -> AsyncSession:
    """The session of the current block (opened on `engine` if this is its first use).

    Statements the caller runs on it directly are watched too: one that fails marks the block.
    """
    frame = _active_frame()
    if frame is None:
        raise TransactionError("current_session() needs an active transaction block")
    return await frame.boundary.session_for(engine)
