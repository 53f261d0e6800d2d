"""Transaction boundaries: `@transaction`, `@transaction(...)` and `async with transaction(...)`.

Semantics follow Django's `atomic`, with what it lacks:

- The outermost block owns one session and one connection; repositories find it through a context
  variable. It is opened lazily, on the engine of the first repository call inside the block.
- A nested block is a savepoint: an exception leaving it rolls back that block only.
  `transaction(savepoint=False)` merges a nested block into its parent instead (no savepoint): an
  exception leaving it marks the parent for rollback, as in Django.
- A failed statement marks the innermost block that owns it (its savepoint, or the whole
  transaction) as needing rollback (Django's `needs_rollback`): the server has aborted that work.
  Further statements in it raise `TransactionError` instead of a raw 25P02, its `on_commit`
  callbacks never run, and leaving it rolls it back; if the block would otherwise have exited
  normally (the error was caught inside it), leaving it raises `TransactionError` chained to the
  original error. To go on after a failure, catch it around a nested `transaction()`.
  `set_rollback(True)` marks the current block without an error (it then rolls back silently);
  `get_rollback()` tells whether it is marked.
- The block's connection is opened (with `read_only`, `isolation_level` and the savepoints of the
  blocks already entered) before its session is used; if opening fails nothing is kept, so a retry
  inside the block opens it again with the same guarantees. The same holds when the connection is
  lost on the repository call that opened it (nothing was done in the transaction yet).
- `durable=True` refuses to run inside another block; `read_only` and `isolation_level` apply to
  the outermost block (a nested block may not ask for different ones).
- `retries=N` (decorator form only) re-runs the whole outermost block on serialization failure
  (40001) or deadlock (40P01), with jittered exponential backoff. A nested block is never retried
  alone and no other error is retried.
- `on_commit(callback)` (awaiting it is optional; a non-callable is a `TypeError`) runs the callback (sync or async) after the
  outermost commit, in registration order; callbacks registered in a savepoint that rolls back are dropped. With
  `retries`, they run after the retry loop: an error a callback raises (even a retryable one) comes
  after the commit and never re-runs the block.
- Driver and SQLAlchemy errors leave every boundary (open, statement, savepoint, commit, rollback,
  block exit) as `persistence.errors` types, the original chained.
- A block belongs to the asyncio task that opened it. Child tasks inherit context variables, so
  using the block (or nesting in it) from another task raises `TransactionError` instead of sharing
  one connection between concurrent tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal, ParamSpec, TypeVar, overload

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, ExceptionContext
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncSessionTransaction

from persistence.errors import (
    ArgumentTypeError,
    ConnectionLostError,
    InvalidRequestError,
    PersistenceError,
    TransactionError,
    TransientError,
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

IsolationLevel = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
Callback = Callable[[], object]

P = ParamSpec("P")
R = TypeVar("R")

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
        self.engine = self.session = self.connection = None
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
        _watch(engine)
        execution_options: dict[str, Any] = {}
        pin = pin_of(engine)
        if pin is None:
            session = AsyncSession(bind=engine, expire_on_commit=False, autoflush=False)
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
            if pin is not None and self.options.read_only:
                # Inside the test's transaction: read-only from here (undone when the block rolls back).
                await connection.exec_driver_sql("SET LOCAL transaction_read_only = on")
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
                yield session
            return
        hooks = hooks_of(engine)
        if hooks is None:
            async with (
                AsyncSession(bind=engine, expire_on_commit=False, autoflush=False) as session,
                session.begin(),
            ):
                yield session
            return
        # The same, reporting the transaction to the engine's hooks.
        started = perf_counter()
        if hooks.wants_transaction_start:
            hooks.transaction_start(TransactionStart(0, 1, hooks.database))
        in_body = False
        try:
            async with (
                AsyncSession(bind=engine, expire_on_commit=False, autoflush=False) as session,
                session.begin(),
            ):
                in_body = True
                yield session
                in_body = False
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
                yield conn
            return
        async with engine.begin() as conn:
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


class _Registered:
    """What `on_commit` returns inside a block: awaiting it is optional and does nothing."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


_REGISTERED = _Registered()


def on_commit(callback: Callback, *, robust: bool = False) -> Awaitable[None]:
    """Run `callback` after the outermost block commits (now, when no block is active).

    Registering needs no I/O, so `on_commit(cb)` works as in Django, and `await on_commit(cb)` too.
    Outside a block a sync callback runs at once; an async one is scheduled, and awaiting the
    result waits for it. With `robust=True` an exception from the callback is logged and the next
    callbacks still run.
    """
    if not callable(callback):
        raise ArgumentTypeError(f"on_commit needs a callable, got {type(callback).__name__}")
    if not isinstance(robust, bool):
        raise ArgumentTypeError(f"on_commit(): robust expects a bool, got {type(robust).__name__}")
    frame = _active_frame()
    if frame is not None:
        _check_task(frame.boundary)
        frame.callbacks.append((callback, robust))
        return _REGISTERED
    pending = _call(callback, robust)
    return _REGISTERED if pending is None else asyncio.ensure_future(_settle(pending, callback, robust))


def _call(callback: Callback, robust: bool) -> Awaitable[Any] | None:
    """Call `callback`; what is left to await of it, if anything."""
    try:
        result = callback()
    except Exception:
        if not robust:
            raise
        _log_failed(callback)
        return None
    return result if inspect.isawaitable(result) else None


async def _settle(pending: Awaitable[Any], callback: Callback, robust: bool) -> None:
    try:
        await pending
    except Exception:
        if not robust:
            raise
        _log_failed(callback)


def _log_failed(callback: Callback) -> None:
    log.exception("on_commit callback failed", callback=getattr(callback, "__qualname__", repr(callback)))


async def _run_callbacks(callbacks: list[tuple[Callback, bool]]) -> None:
    for callback, robust in callbacks:
        pending = _call(callback, robust)
        if pending is not None:
            await _settle(pending, callback, robust)


def _is_async_callable(fn: object) -> bool:
    """An `async def` function or method, a callable instance whose `__call__` is one, or a
    `functools.partial` of either."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    return (
        callable(fn)
        and not inspect.isroutine(fn)
        and not isinstance(fn, type)
        and inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
    )


class Transaction:
    """One transaction block; an async context manager and a decorator. Build it with `transaction()`."""

    def __init__(
        self,
        options: TransactionOptions,
        *,
        after_commit: list[tuple[Callback, bool]] | None = None,
        _attempt: int = 1,
        _retries: int = 0,
    ) -> None:
        self.options = options
        # The decorator's retry loop collects the outermost block's callbacks here and runs them
        # itself, after the loop: an error they raise comes after the commit and must never re-run it.
        self._after_commit = after_commit
        self._attempt = _attempt
        self._retries = _retries
        self._entered: dict[asyncio.Task[Any] | None, list[tuple[_Frame, Token[_Frame | None]]]] = {}

    # -- context manager ----------------------------------------------------------------------------
    async def __aenter__(self) -> Transaction:
        frame = self._open()
        token = _current.set(frame)
        self._entered.setdefault(asyncio.current_task(), []).append((frame, token))
        session = frame.boundary.session
        if session is not None and frame.parent is not None and frame.options.savepoint:
            try:
                frame.savepoint = await session.begin_nested()
            except BaseException as exc:
                self._pop(frame)
                if isinstance(exc, Exception):
                    raise_translated(exc)
                raise
            frame.boundary.savepoint_started(frame)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        task = asyncio.current_task()
        frame, token = self._entered[task].pop()
        if not self._entered[task]:
            del self._entered[task]
        try:
            if frame.parent is None:
                await self._close_outermost(frame, exc)
            else:
                await self._close_nested(frame, exc)
        finally:
            frame.boundary.frames.pop()
            _current.reset(token)
        if isinstance(exc, _DATABASE_ERRORS):
            error = _translated(exc)
            if error is not exc:
                raise error from exc

    def _open(self) -> _Frame:
        if self.options.retries:
            raise TransactionError(
                "retries needs the decorator form (@transaction(retries=...)): "
                "the body of an `async with` block cannot be run again"
            )
        parent = _active_frame()
        if parent is None:
            boundary = _Boundary(
                self.options, asyncio.current_task(), attempt=self._attempt, retries=self._retries
            )
            frame = _Frame(boundary, self.options)
            boundary.frames.append(frame)
            return frame
        _check_task(parent.boundary)
        if self.options.durable:
            raise TransactionError("a durable transaction cannot run inside another transaction block")
        outer = parent.boundary.options
        if self.options.read_only and not outer.read_only:
            raise TransactionError(
                "read_only applies to the outermost block; the enclosing block is read-write"
            )
        if self.options.isolation_level not in (None, outer.isolation_level):
            raise TransactionError(
                f"isolation_level={self.options.isolation_level!r} cannot be set inside a block that runs at "
                f"{outer.isolation_level or 'the server default'}"
            )
        parent.boundary.check_usable()
        frame = _Frame(parent.boundary, self.options, parent)
        parent.boundary.frames.append(frame)
        return frame

    def _pop(self, frame: _Frame) -> None:
        frame.boundary.frames.pop()
        frame_list = self._entered[asyncio.current_task()]
        _, token = frame_list.pop()
        _current.reset(token)

    async def _close_nested(self, frame: _Frame, exc: BaseException | None) -> None:
        parent = frame.parent
        assert parent is not None
        if not frame.options.savepoint:
            # Merged into the parent: its work can only be undone with the parent's.
            if exc is None:
                parent.callbacks.extend(frame.callbacks)
            else:
                frame.fail(exc)
            return
        observed = frame.boundary.hooks is not None and frame.savepoint is not None
        if exc is None and frame.savepoint is not None and not frame.savepoint.is_active:
            frame.fail(_rolled_back_by_session())  # a failed flush: SQLAlchemy rolled the savepoint back
        if exc is None and not frame.needs_rollback:
            if frame.savepoint is not None:
                try:
                    await frame.savepoint.commit()
                except Exception as err:
                    error = _translated(err)
                    parent.fail(error)  # RELEASE failed: the transaction is aborted or the connection lost
                    if observed:
                        frame.boundary.ended(frame.depth, frame.started, error, failed=True)
                    if error is err:
                        raise
                    raise error from err
                if observed:
                    frame.boundary.ended(frame.depth, frame.started, None, failed=False)
            parent.callbacks.extend(frame.callbacks)
            return
        frame.callbacks.clear()
        rollback_error: Exception | None = None
        if frame.savepoint is not None:
            try:
                await frame.savepoint.rollback()
            except Exception as err:
                # The enclosing block cannot go on either: its connection is lost or in an unknown state.
                rollback_error = err
                parent.fail(_translated(err))
            if observed:
                frame.boundary.ended(
                    frame.depth, frame.started, exc or frame.failure, failed=False, rolled_back=True
                )
        if exc is not None:
            return  # the original exception matters more than a failed ROLLBACK TO SAVEPOINT
        if rollback_error is not None:
            raise_translated(rollback_error)
        if frame.failure is not None:
            raise TransactionError(
                f"a statement in this block failed ({_describe(frame.failure)}) and the error was caught "
                "inside the block; its savepoint was rolled back. Catch errors around a nested "
                "transaction() block instead"
            ) from frame.failure

    async def _close_outermost(self, frame: _Frame, exc: BaseException | None) -> None:
        boundary = frame.boundary
        session = boundary.session
        commit_error: BaseException | None = None
        if exc is None and session is not None and not session.is_active:
            frame.fail(_rolled_back_by_session())  # a failed flush: SQLAlchemy rolled the transaction back
        try:
            if session is not None:
                if exc is None and not frame.needs_rollback and not _read_only_pinned(boundary):
                    try:
                        await session.commit()
                    except Exception as err:
                        commit_error = _translated(err)
                        if commit_error is err:
                            raise
                        raise commit_error from err
                    except BaseException as err:
                        commit_error = err
                        raise
                else:
                    # Detach first: rows the block returned keep their loaded values instead of
                    # being expired (and unreadable once the session is closed).
                    session.expunge_all()
                    with contextlib.suppress(Exception):
                        await session.rollback()
        finally:
            boundary.closed = True
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.close()
            boundary.unpin()
            if boundary.hooks is not None:
                failed = commit_error is not None
                boundary.ended(
                    0,
                    boundary.started,
                    commit_error if failed else exc or frame.failure,
                    failed=failed,
                    rolled_back=frame.rollback_requested,
                )
        if exc is not None:
            return
        if frame.failure is not None:
            raise TransactionError(
                f"a statement in this block failed ({_describe(frame.failure)}) and the error was caught "
                "inside the block; the transaction was rolled back, nothing was committed. Catch errors "
                "around a nested transaction() block instead"
            ) from frame.failure
        if frame.rollback_requested:
            return
        if self._after_commit is not None:
            self._after_commit.extend(frame.callbacks)
        else:
            await _run_callbacks(frame.callbacks)

    # -- decorator ----------------------------------------------------------------------------------
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not _is_async_callable(fn):
            raise ArgumentTypeError(
                f"@transaction needs an async function or callable, got {type(fn).__name__}"
            )
        options = self.options
        block_options = dataclasses.replace(options, retries=0)
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            attempt = 0
            while True:
                outermost = _active_frame() is None
                committed: list[tuple[Callback, bool]] = []
                try:
                    async with Transaction(
                        block_options,
                        after_commit=committed if outermost else None,
                        _attempt=attempt + 1,
                        _retries=options.retries,
                    ):
                        result = await fn(*args, **kwargs)
                except TransientError as exc:
                    if (
                        not outermost
                        or exc.sqlstate not in _RETRYABLE_SQLSTATES
                        or attempt >= options.retries
                    ):
                        raise
                    attempt += 1
                    delay = random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))
                    log.info("transaction retry", function=name, attempt=attempt, sqlstate=exc.sqlstate)
                    await asyncio.sleep(delay)
                else:
                    # Committed: callbacks run outside the retry loop, so they never cause a re-run.
                    await _run_callbacks(committed)
                    return result

        return wrapper


_ISOLATION_LEVELS = ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")
_MAX_RETRIES = 1000


def _check_options(
    durable: object, read_only: object, isolation_level: object, retries: object, savepoint: object
) -> None:
    """Wrong types are `ArgumentTypeError` (a `ValidationError` and a `TypeError`), wrong values
    `InvalidRequestError` (a `ValueError`); each names the argument. A truthy non-bool is refused:
    `read_only="no"` would otherwise mean read-only."""
    for name, flag in (("durable", durable), ("read_only", read_only), ("savepoint", savepoint)):
        if not isinstance(flag, bool):
            raise ArgumentTypeError(f"transaction(): {name} expects a bool, got {type(flag).__name__}")
    if not isinstance(retries, int) or isinstance(retries, bool):
        raise ArgumentTypeError(f"transaction(): retries expects an int, got {type(retries).__name__}")
    if not 0 <= retries <= _MAX_RETRIES:
        raise InvalidRequestError(f"transaction(): retries must be from 0 to {_MAX_RETRIES}, got {retries}")
    if isolation_level is not None and not isinstance(isolation_level, str):
        raise ArgumentTypeError(
            f"transaction(): isolation_level expects a str, got {type(isolation_level).__name__}"
        )
    if isolation_level is not None and isolation_level not in _ISOLATION_LEVELS:
        raise InvalidRequestError(
            f"transaction(): unknown isolation_level (one of {', '.join(_ISOLATION_LEVELS)}; upper case)"
        )


@overload
def transaction(fn: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


@overload
def transaction(
    *,
    durable: bool = False,
    read_only: bool = False,
    isolation_level: IsolationLevel | None = None,
    retries: int = 0,
    savepoint: bool = True,
) -> Transaction: ...


def transaction(
    fn: Callable[P, Awaitable[R]] | None = None,
    /,
    *,
    durable: bool = False,
    read_only: bool = False,
    isolation_level: IsolationLevel | None = None,
    retries: int = 0,
    savepoint: bool = True,
) -> Callable[P, Coroutine[Any, Any, R]] | Transaction:
    """A transaction block: `@transaction`, `@transaction(...)`, or `async with transaction(...)`.

    `retries` needs the decorator form: a `with` block's body cannot be run again. `savepoint=False`
    makes a nested block part of its parent (no savepoint; an exception leaving it marks the parent
    for rollback); it changes nothing for an outermost block.
    """
    _check_options(durable, read_only, isolation_level, retries, savepoint)
    block = Transaction(
        TransactionOptions(
            durable=durable,
            read_only=read_only,
            isolation_level=isolation_level,
            retries=retries,
            savepoint=savepoint,
        )
    )
    if fn is not None:
        return block(fn)
    return block
