"""Transaction boundaries: `@transaction`, `@transaction(...)` and `async with transaction(...)`.

Semantics follow Django's `atomic`, with what it lacks:

- The outermost block owns one session and one connection; repositories find it through a context
  variable. It is opened lazily, on the engine of the first repository call inside the block.
- A nested block is a savepoint: an exception leaving it rolls back that block only.
- `durable=True` refuses to run inside another block; `read_only` and `isolation_level` apply to
  the outermost block (a nested block may not ask for different ones).
- `retries=N` (decorator form only) re-runs the whole outermost block on serialization failure
  (40001) or deadlock (40P01), with jittered exponential backoff. A nested block is never retried
  alone and no other error is retried.
- `on_commit(callback)` (awaiting it is optional) runs the callback (sync or async) after the
  outermost commit, in registration order; callbacks registered in a savepoint that rolls back are dropped. With
  `retries`, they run after the retry loop: an error a callback raises (even a retryable one) comes
  after the commit and never re-runs the block.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal, ParamSpec, TypeVar, overload

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncSessionTransaction

from persistence.errors import PersistenceError, TransactionError, TransientError, translate
from persistence.observe.hooks import (
    Hooks,
    TransactionEvent,
    TransactionOutcome,
    TransactionStart,
    hooks_of,
)

IsolationLevel = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
Callback = Callable[[], object]

P = ParamSpec("P")
R = TypeVar("R")

_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
_BACKOFF_BASE_S = 0.01
_BACKOFF_CAP_S = 1.0

log = structlog.get_logger("persistence.transaction")


@dataclass(frozen=True)
class TransactionOptions:
    durable: bool = False
    read_only: bool = False
    isolation_level: IsolationLevel | None = None
    retries: int = 0


@dataclass(eq=False)
class _Boundary:
    """The outermost block: one session, opened on first use."""

    options: TransactionOptions
    task: asyncio.Task[Any] | None
    engine: AsyncEngine | None = None
    session: AsyncSession | None = None
    closed: bool = False
    frames: list[_Frame] = field(default_factory=list)
    # Observability (only used when the engine has hooks): run number of a retried function, its
    # retry budget, when the first statement ran, and the deepest savepoint.
    attempt: int = 1
    retries: int = 0
    hooks: Hooks | None = None
    started: float = 0.0
    max_depth: int = 0

    async def session_for(self, engine: AsyncEngine) -> AsyncSession:
        _check_task(self)
        if self.session is None:
            self.engine = engine
            self.hooks = hooks = hooks_of(engine)
            if hooks is not None:
                self.started = perf_counter()
                if hooks.wants_transaction_start:
                    hooks.transaction_start(TransactionStart(0, self.attempt, hooks.database))
            self.session = AsyncSession(bind=engine, expire_on_commit=False, autoflush=False)
            execution_options: dict[str, Any] = {}
            if self.options.isolation_level is not None:
                execution_options["isolation_level"] = self.options.isolation_level
            if self.options.read_only:
                execution_options["postgresql_readonly"] = True
            try:
                # asyncpg applies these when it starts the transaction: no extra round trip.
                await self.session.connection(execution_options=execution_options or None)
                for frame in self.frames[1:]:  # blocks entered before the first query
                    frame.savepoint = await self.session.begin_nested()
                    self.savepoint_started(frame)
            except DBAPIError as exc:
                raise (translate(exc) or exc) from exc
        elif engine is not self.engine and engine.sync_engine is not getattr(
            self.engine, "sync_engine", None
        ):
            raise TransactionError("one transaction cannot span two engines; open a separate transaction")
        return self.session

    def savepoint_started(self, frame: _Frame) -> None:
        if self.hooks is None:
            return
        frame.started = perf_counter()
        frame.depth = self.frames.index(frame)
        self.max_depth = max(self.max_depth, frame.depth)
        if self.hooks.wants_transaction_start:
            self.hooks.transaction_start(TransactionStart(frame.depth, self.attempt, self.hooks.database))

    def ended(self, depth: int, started: float, exc: BaseException | None, failed: bool) -> None:
        """Report the end of the transaction (depth 0) or a savepoint; `failed`: COMMIT/RELEASE raised."""
        assert self.hooks is not None
        outcome, sqlstate = _outcome(exc, retry_left=depth == 0 and self.attempt <= self.retries)
        if failed:
            outcome = "failed"
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


def _outcome(exc: BaseException | None, *, retry_left: bool) -> tuple[TransactionOutcome, str | None]:
    if exc is None:
        return "commit", None
    err = translate(exc) if isinstance(exc, DBAPIError | PersistenceError) else None
    sqlstate: str | None = getattr(err, "sqlstate", None)
    if sqlstate is None:
        return "rollback", None
    if retry_left and sqlstate in _RETRYABLE_SQLSTATES:
        return "retried", sqlstate
    return "failed", sqlstate


@dataclass(eq=False)
class _Frame:
    boundary: _Boundary
    savepoint: AsyncSessionTransaction | None = None
    callbacks: list[tuple[Callback, bool]] = field(default_factory=list)
    started: float = 0.0
    depth: int = 0


_current: ContextVar[_Frame | None] = ContextVar("persistence_transaction", default=None)


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


@contextlib.asynccontextmanager
async def session_scope(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """The session repositories run on: the current block's, or a short transaction of its own.

    Driver errors leave as `persistence.errors` types, with the original chained.
    """
    frame = _active_frame()
    try:
        if frame is not None:
            yield await frame.boundary.session_for(engine)
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
    except DBAPIError as exc:
        raise (translate(exc) or exc) from exc


@contextlib.asynccontextmanager
async def connection_scope(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Like `session_scope`, for statements that load no model instances (counts, bulk writes).

    Inside a block: the block's connection (the same transaction as its session). Outside one: a
    short transaction on a pooled connection, without building an ORM session around it.
    """
    frame = _active_frame()
    try:
        if frame is not None:
            session = await frame.boundary.session_for(engine)
            yield await session.connection()
            return
        async with engine.begin() as conn:
            yield conn
    except DBAPIError as exc:
        raise (translate(exc) or exc) from exc


async def current_session(engine: AsyncEngine) -> AsyncSession:
    """The session of the current block (opened on `engine` if this is its first use)."""
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
        if frame.boundary.session is not None and frame is not frame.boundary.frames[0]:
            try:
                frame.savepoint = await frame.boundary.session.begin_nested()
            except BaseException:
                self._pop(frame)
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
            if frame is frame.boundary.frames[0]:
                await self._close_outermost(frame, exc)
            else:
                await self._close_nested(frame, exc)
        finally:
            frame.boundary.frames.pop()
            _current.reset(token)
        if exc is not None and isinstance(exc, DBAPIError):
            raise (translate(exc) or exc) from exc

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
            frame = _Frame(boundary)
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
        frame = _Frame(parent.boundary)
        parent.boundary.frames.append(frame)
        return frame

    def _pop(self, frame: _Frame) -> None:
        frame.boundary.frames.pop()
        frame_list = self._entered[asyncio.current_task()]
        _, token = frame_list.pop()
        _current.reset(token)

    async def _close_nested(self, frame: _Frame, exc: BaseException | None) -> None:
        parent = frame.boundary.frames[-2]
        observed = frame.boundary.hooks is not None and frame.savepoint is not None
        if exc is None:
            if frame.savepoint is not None:
                try:
                    await frame.savepoint.commit()
                except DBAPIError as err:
                    error = translate(err) or err
                    if observed:
                        frame.boundary.ended(frame.depth, frame.started, error, failed=True)
                    raise error from err
                if observed:
                    frame.boundary.ended(frame.depth, frame.started, None, failed=False)
            parent.callbacks.extend(frame.callbacks)
            return
        frame.callbacks.clear()
        if frame.savepoint is not None:
            # The original exception matters more than a failed ROLLBACK TO SAVEPOINT (e.g. lost connection).
            with contextlib.suppress(Exception):
                await frame.savepoint.rollback()
            if observed:
                frame.boundary.ended(frame.depth, frame.started, exc, failed=False)

    async def _close_outermost(self, frame: _Frame, exc: BaseException | None) -> None:
        boundary = frame.boundary
        session = boundary.session
        commit_error: BaseException | None = None
        try:
            if session is not None:
                if exc is None:
                    try:
                        await session.commit()
                    except BaseException as err:
                        commit_error = (translate(err) or err) if isinstance(err, DBAPIError) else err
                        if commit_error is err:
                            raise
                        raise commit_error from err
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
            if boundary.hooks is not None:
                failed = commit_error is not None
                boundary.ended(0, boundary.started, commit_error if failed else exc, failed=failed)
        if exc is None:
            if self._after_commit is not None:
                self._after_commit.extend(frame.callbacks)
            else:
                await _run_callbacks(frame.callbacks)

    # -- decorator ----------------------------------------------------------------------------------
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@transaction needs an async function, got {fn!r}")
        options = self.options
        block_options = dataclasses.replace(options, retries=0)

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
                    log.info(
                        "transaction retry", function=fn.__qualname__, attempt=attempt, sqlstate=exc.sqlstate
                    )
                    await asyncio.sleep(delay)
                else:
                    # Committed: callbacks run outside the retry loop, so they never cause a re-run.
                    await _run_callbacks(committed)
                    return result

        return wrapper


@overload
def transaction(fn: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


@overload
def transaction(
    *,
    durable: bool = False,
    read_only: bool = False,
    isolation_level: IsolationLevel | None = None,
    retries: int = 0,
) -> Transaction: ...


def transaction(
    fn: Callable[P, Awaitable[R]] | None = None,
    /,
    *,
    durable: bool = False,
    read_only: bool = False,
    isolation_level: IsolationLevel | None = None,
    retries: int = 0,
) -> Callable[P, Coroutine[Any, Any, R]] | Transaction:
    """A transaction block: `@transaction`, `@transaction(...)`, or `async with transaction(...)`.

    `retries` needs the decorator form: a `with` block's body cannot be run again.
    """
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if isolation_level is not None and isolation_level not in (
        "READ COMMITTED",
        "REPEATABLE READ",
        "SERIALIZABLE",
    ):
        raise ValueError(f"unknown isolation_level {isolation_level!r}")
    block = Transaction(
        TransactionOptions(
            durable=durable, read_only=read_only, isolation_level=isolation_level, retries=retries
        )
    )
    if fn is not None:
        return block(fn)
    return block
