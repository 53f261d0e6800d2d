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
  alone and no other error is retried, except `ReplicaUnavailableError`: a read replica failed
  under an outermost read-only block (`persistence.replicas`); it is skipped for a while, so the
  re-run goes to another replica or the primary. A read-only block is safe to re-run (it wrote
  nothing), but its Python body runs again.
- The outermost `read_only=True` block runs on a healthy read replica when the engine has some
  (`DatabaseConfig.replicas`), whole; see `persistence.replicas` for read-your-writes.
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
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import Token
from typing import Any, ParamSpec, TypeVar, overload

from persistence.blocks import (
    _BACKOFF_BASE_S,
    _BACKOFF_CAP_S,
    _DATABASE_ERRORS,
    _RETRYABLE_SQLSTATES,
    TransactionOptions,
    _active_frame,
    _Boundary,
    _check_task,
    _current,
    _describe,
    _Frame,
    _read_only_pinned,
    _rolled_back_by_session,
    _translated,
)
from persistence.blocks import (
    Callback as Callback,
)
from persistence.blocks import (
    IsolationLevel as IsolationLevel,
)
from persistence.blocks import (
    connection_scope as connection_scope,
)
from persistence.blocks import (
    current_session as current_session,
)
from persistence.blocks import (
    get_rollback as get_rollback,
)
from persistence.blocks import (
    in_transaction as in_transaction,
)
from persistence.blocks import (
    session_scope as session_scope,
)
from persistence.blocks import (
    set_rollback as set_rollback,
)
from persistence.errors import (
    ArgumentTypeError,
    InvalidRequestError,
    ReplicaUnavailableError,
    TransactionError,
    TransientError,
    raise_translated,
)
from persistence.observe.loggers import get_logger
from persistence.replicas import Replica, remembered, router_of

P = ParamSpec("P")
R = TypeVar("R")

log = get_logger("persistence.transaction")


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


def _raise_if_replica_lost(boundary: _Boundary, replica: Replica | None, error: Exception) -> None:
    """A read-only block whose replica failed under it leaves as `ReplicaUnavailableError` (the
    replica is skipped for a while, so `retries=` runs the block again elsewhere)."""
    router = router_of(replica.primary) if replica is not None else None
    if router is None or replica is None:
        return
    lost = router.lost(replica, error, mark=replica is not boundary.lost_replica)
    if lost is not None and lost is not error:
        raise lost from error


def _promoted_replica(boundary: _Boundary) -> ReplicaUnavailableError | None:
    """A read-only block whose replica was promoted while it ran ends as `ReplicaUnavailableError`
    instead of committing (no round trip: see `replicas._promoted`)."""
    replica, connection = boundary.replica, boundary.connection
    router = router_of(replica.primary) if replica is not None else None
    if router is None or replica is None or connection is None:
        return None
    driver = connection.connection.driver_connection
    return None if driver is None else router.promoted_under(replica, driver)


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
        replica = (frame.boundary.replica or frame.boundary.lost_replica) if frame.parent is None else None
        try:
            if frame.parent is None:
                await self._close_outermost(frame, exc)
            else:
                await self._close_nested(frame, exc)
        except Exception as err:
            _raise_if_replica_lost(frame.boundary, replica, err)
            raise
        finally:
            frame.boundary.frames.pop()
            _current.reset(token)
        if replica is not None and isinstance(exc, Exception):
            _raise_if_replica_lost(frame.boundary, replica, exc)
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
                    promoted = _promoted_replica(boundary)
                    if promoted is not None:
                        commit_error = promoted
                        session.expunge_all()
                        raise promoted  # closing the session rolls the block back
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
                    remembered(session)  # read-your-writes: the commit's WAL position, when remembered
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
                        or not (
                            exc.sqlstate in _RETRYABLE_SQLSTATES or isinstance(exc, ReplicaUnavailableError)
                        )
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
