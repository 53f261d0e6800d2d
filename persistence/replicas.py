"""Read replicas: which server a read-only block runs on, read-your-writes, and each replica's health.

Whole blocks are routed, never single statements (a block's reads must share one snapshot):

- the outermost `transaction(read_only=True)` block runs on a healthy replica; read-write blocks,
  savepoints and repository calls outside blocks stay on the primary (reads outside blocks go to a
  replica only with `DatabaseConfig.replica_reads_outside_blocks`);
- read-your-writes: after a read-write transaction commits on the primary, the caller's context
  (a context variable) remembers the primary's WAL insert position. A later read-only block runs
  on a replica only once that replica has replayed it (`pg_last_wal_replay_lsn() >= token`),
  waiting at most `replica_wait_ms`, else on the primary. `read_your_writes_token()` /
  `use_read_your_writes_token()` carry the token between processes (e.g. an HTTP header);
- health: a replica that cannot be reached or is shutting down (08xxx, 57P0x) is skipped for
  `replica_retry_after_s`; one whose replay lags more than `replica_max_lag_s` behind what it
  received, or that is no longer in recovery (promoted: `pg_is_in_recovery()`, never
  `transaction_read_only`, which lags behind a promotion), is skipped until its next check. A
  promotion is also seen with no round trip: PostgreSQL 14+ reports `in_hot_standby` with every
  answer, so a block whose replica was promoted while it ran ends as `ReplicaUnavailableError`
  instead of committing (`retries=` runs it again elsewhere), and the next block skips it.

No background task: a block routed to a replica checks it (one statement, before the block's
transaction begins) when it holds a token or when the replica's last check is older than
`replica_probe_interval_s`; otherwise routing costs no round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from time import monotonic
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util.concurrency import await_

from persistence.config import DatabaseConfig
from persistence.errors import (
    DatabaseConnectionError,
    Endpoint,
    InvalidRequestError,
    PersistenceError,
    ReplicaUnavailableError,
    translate,
)
from persistence.observe.hooks import Hooks, ReplicaEvent, ReplicaRole, hooks_of
from persistence.observe.loggers import get_logger

log = get_logger("persistence.replicas")


# -- read-your-writes tokens ------------------------------------------------------------------------

# The primary's WAL position after the context's last commit, as a byte offset; _UNKNOWN: a commit
# whose position could not be read (its connection broke just after COMMIT): read the primary.
_UNKNOWN = -1
_UNKNOWN_TEXT = "unknown"
_token: ContextVar[int | None] = ContextVar("persistence_read_your_writes", default=None)
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
# With synchronous_commit on (or local, remote_*), COMMIT returned after its record was flushed, so
# the write position covers it; with `off` the record may not be written yet: take the insert
# position (which replicas reach only after the next WAL flush, up to wal_writer_delay later).
_POSITION = """SELECT (CASE WHEN current_setting('synchronous_commit') = 'off'
                   THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::int8"""


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def read_your_writes_token() -> str | None:
    """The current context's read-your-writes token (the primary's WAL position after its last
    commit, e.g. `16/B374D848`), to hand to another service; None when nothing was committed.
    A commit whose position is unknown gives `unknown` (the receiver reads the primary)."""
    return _text(_token.get())


def _text(lsn: int | None) -> str | None:
    if lsn is None:
        return None
    return _UNKNOWN_TEXT if lsn == _UNKNOWN else _lsn_text(lsn)


def use_read_your_writes_token(token: str | None) -> None:
    """Adopt a token from `read_your_writes_token()` (another process's commit): later read-only
    blocks in this context see that commit. The later of it and the context's own token is kept;
    None is a no-op. A malformed token is an `InvalidRequestError` (its text is not echoed)."""
    if token is None:
        return
    if not isinstance(token, str):
        raise InvalidRequestError(f"a read-your-writes token is a str, got {type(token).__name__}")
    if token == _UNKNOWN_TEXT:
        _advance(_UNKNOWN)
        return
    match = _LSN.match(token.strip())
    if match is None:
        raise InvalidRequestError(
            "malformed read-your-writes token (expected a WAL position like 16/B374D848)"
        )
    if _token.get() != _UNKNOWN:  # an own commit of unknown position may be later than the token
        _advance((int(match.group(1), 16) << 32) | int(match.group(2), 16))


class CarriedToken:
    """The token of one carried block (a request), shared by every context copied from it: a commit
    in a child task (Starlette's `BaseHTTPMiddleware` runs the app in one) reaches it too."""

    __slots__ = ("_lsn",)

    def __init__(self) -> None:
        self._lsn: int | None = None

    def current(self) -> str | None:
        """The block's token now: the carried one, or the position of a later commit in the block."""
        return _text(self._lsn)

    def _note(self, lsn: int) -> None:
        if _later(self._lsn, lsn):
            self._lsn = lsn


_carried: ContextVar[CarriedToken | None] = ContextVar("persistence_read_your_writes_carried", default=None)


@contextlib.contextmanager
def carried_read_your_writes_token(token: str | None) -> Iterator[CarriedToken]:
    """`use_read_your_writes_token(token)` for a block (a request carrying another service's token):
    the context's token is what it was before once the block ends, whatever the block committed.
    The `CarriedToken` it gives tells the block's token at any time, also after commits made in
    tasks the block started."""
    carried = CarriedToken()
    current = _token.get()
    saved = _token.set(current)
    saved_carried = _carried.set(carried)
    try:
        if current is not None:
            carried._note(current)
        use_read_your_writes_token(token)
        yield carried
    finally:
        _carried.reset(saved_carried)
        _token.reset(saved)


def _later(current: int | None, lsn: int) -> bool:
    """Whether `lsn` replaces `current`: a later position, or an unknown one (which wins until a
    later commit's known position replaces it)."""
    return current is None or current == _UNKNOWN or lsn == _UNKNOWN or lsn > current


def _advance(lsn: int) -> None:
    """Keep the later position; an unknown one wins until a later commit's known position replaces it."""
    if _later(_token.get(), lsn):
        _token.set(lsn)
    carried = _carried.get()
    if carried is not None:
        carried._note(lsn)


# -- per-replica state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as `health()` and `ReplicaRouter.statuses()` report it. `lag_s`: replay lag at
    the last check (None: never checked); `available`: the router would route to it now;
    `routed`/`waited`/`fallback`: blocks it ran at once, ran after waiting for a token, and blocks
    sent to the primary instead because of it."""

    name: str
    role: ReplicaRole
    lag_s: float | None
    available: bool
    routed: int
    waited: int
    fallback: int


@dataclass(eq=False)
class Replica:
    """A replica's engine and what the router last learned about it."""

    engine: AsyncEngine
    endpoint: Endpoint
    name: str
    primary: AsyncEngine
    role: ReplicaRole = "unknown"
    lag_s: float | None = None
    checked_at: float = float("-inf")
    replayed: int = 0  # WAL position replayed at the last check (replay only moves forward)
    skip_until: float = 0.0
    routed: int = 0
    waited: int = 0
    fallback: int = 0
    # It failed: its pooled connections may be dead (the router's own checks bypass SQLAlchemy's
    # disconnect handling), so its pool is replaced before it is used again.
    reset_pool: bool = False

    def status(self, now: float) -> ReplicaStatus:
        return ReplicaStatus(
            self.name, self.role, self.lag_s, now >= self.skip_until, self.routed, self.waited, self.fallback
        )


# Role, replayed WAL position and replay lag in one statement, outside any transaction (it must not
# take the block's snapshot). Lag is 0 while the replica streams and has replayed all it
# received; otherwise the age of its last replayed commit (which also grows while it receives
# nothing: a replica cut off from its primary ages out).
_CHECK = """SELECT pg_is_in_recovery(),
       coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8, 0),
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                 AND EXISTS (SELECT FROM pg_stat_wal_receiver) THEN 0.0
            ELSE coalesce(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 0.0)
       END::float8"""
# A replica usually replays a commit within ~1 ms: poll back to back that long (an asyncio sleep
# lasts ~1 ms at best), then back off.
_BUSY_POLL_S = 0.001
_FIRST_SLEEP_S = 0.001
_MAX_SLEEP_S = 0.004


class ReplicaRouter:
    """Chooses a replica for read-only blocks of one primary engine; see the module docstring."""

    def __init__(
        self,
        primary: AsyncEngine,
        replicas: Sequence[Replica],
        *,
        max_lag_s: float = 5.0,
        wait_s: float = 0.03,
        retry_after_s: float = 5.0,
        probe_interval_s: float = 1.0,
        reads_outside_blocks: bool = False,
    ) -> None:
        self.primary = primary
        self.replicas = tuple(replicas)
        self.max_lag_s = max_lag_s
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.probe_interval_s = probe_interval_s
        self.reads_outside_blocks = reads_outside_blocks
        self.routed = self.waited = self.fallback = 0
        self._turn = itertools.cycle(range(len(self.replicas))) if self.replicas else None
        self._hooks: Hooks | None = hooks_of(primary)

    @classmethod
    def from_config(
        cls, primary: AsyncEngine, config: DatabaseConfig, engines: Sequence[AsyncEngine]
    ) -> ReplicaRouter:
        replicas = []
        for index, engine in enumerate(engines):
            replica_config = config.replica_config(index)
            where = Endpoint(
                replica_config.host, replica_config.port, replica_config.database, replica_config.user
            )
            replicas.append(Replica(engine, where, replica_config.describe(), primary))
        return cls(
            primary,
            replicas,
            max_lag_s=config.replica_max_lag_s,
            wait_s=config.replica_wait_ms / 1000,
            retry_after_s=config.replica_retry_after_s,
            probe_interval_s=config.replica_probe_interval_s,
            reads_outside_blocks=config.replica_reads_outside_blocks,
        )

    # -- choosing -----------------------------------------------------------------------------------
    async def prepare(self, replica: Replica) -> None:
        """Replace the pool of a replica that failed before connecting to it again."""
        if replica.reset_pool:
            replica.reset_pool = False
            with contextlib.suppress(Exception):
                await replica.engine.dispose()

    def candidate(self) -> Replica | None:
        """The next replica in turn that is not being skipped (no I/O); None: use the primary."""
        if self._turn is None:
            return None
        if _token.get() == _UNKNOWN:
            self._fell_back(None, "behind", 0.0)
            return None
        now = monotonic()
        for _ in range(len(self.replicas)):
            replica = self.replicas[next(self._turn)]
            if now >= replica.skip_until:
                return replica
        self._fell_back(None, "no replica", 0.0)
        return None

    async def admit(self, replica: Replica, driver: Any) -> bool:
        """Whether a block may run on `replica` over `driver` (its asyncpg connection, not yet in a
        transaction): checks role and lag when due, and the context's token unless the replica was
        already seen past it, waiting for it up to the budget. Counts and reports the outcome.
        Driver errors propagate (see `failed`)."""
        token = _token.get()
        started = monotonic()
        if (
            (token is None or token <= replica.replayed)
            and started - replica.checked_at < self.probe_interval_s
            and not _promoted(driver)
        ):
            self._routed(replica, 0.0)
            return True
        deadline = started + self.wait_s
        delay = _FIRST_SLEEP_S
        polls = 0
        while True:
            standby, replayed, lag = await driver.fetchrow(_CHECK)
            polls += 1
            now = monotonic()
            replica.checked_at, replica.lag_s, replica.replayed = now, float(lag), int(replayed)
            if not standby:
                self._mark_promoted(
                    replica, now, now - started, "a read replica is not in recovery (promoted?): skipped"
                )
                return False
            replica.role = "replica"
            if replica.lag_s > self.max_lag_s:
                replica.skip_until = now + self.probe_interval_s
                self._fell_back(replica, "lagging", now - started)
                return False
            if token is None or replica.replayed >= token:
                self._routed(replica, now - started if polls > 1 else 0.0)
                return True
            if now - started < _BUSY_POLL_S and now < deadline:
                continue
            if now + delay > deadline:
                self._fell_back(replica, "behind", now - started)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_SLEEP_S)

    def failed(self, replica: Replica, error: BaseException, *, in_block: bool) -> None:
        """`replica` could not be used (`in_block`: it failed under a running block): skip it for
        `retry_after_s`."""
        replica.role = "unreachable"
        replica.skip_until = monotonic() + self.retry_after_s
        replica.reset_pool = True
        log.warning(
            "read replica failed: skipped for a while",
            replica=replica.name,
            error=type(error).__name__,
            retry_after_s=self.retry_after_s,
        )
        self._fell_back(replica, "lost" if in_block else "unreachable", 0.0)

    def promoted_under(self, replica: Replica, driver: Any) -> ReplicaUnavailableError | None:
        """The typed error for a block whose replica was promoted while it ran (None: it was not),
        after marking the replica a primary to skip. Asks nothing: see `_promoted`."""
        if not _promoted(driver):
            return None
        self._mark_promoted(
            replica, monotonic(), 0.0, "a read replica was promoted under a read-only block: skipped"
        )
        return _unavailable(
            replica,
            "it was promoted under a read-only block (its reads may miss what the old primary "
            "committed since); run the block again (retries=N) to use another server",
        )

    def _mark_promoted(self, replica: Replica, now: float, waited: float, message: str) -> None:
        """`replica` answers as a primary now: skip it for `retry_after_s`, and say so."""
        replica.role = "primary"
        replica.skip_until = now + self.retry_after_s
        log.warning(message, replica=replica.name)
        self._fell_back(replica, "promoted", waited)

    def lost(
        self, replica: Replica, error: BaseException, *, mark: bool = True
    ) -> ReplicaUnavailableError | None:
        """The typed error for a block whose replica failed under it (connection broken, 57P0x),
        after opening its circuit (`mark`: not done yet); None when `error` is not the replica's failure."""
        if isinstance(error, ReplicaUnavailableError):
            return error
        translated = error if isinstance(error, PersistenceError) else translate(error)
        sqlstate = getattr(translated, "sqlstate", None) or ""
        if not (isinstance(translated, DatabaseConnectionError) or sqlstate.startswith("57P0")):
            return None
        if mark:
            self.failed(replica, error, in_block=True)
        return _unavailable(
            replica,
            f"it failed under a read-only block ({type(translated or error).__name__}); "
            "run the block again (retries=N) to use another server",
            sqlstate or None,
        )

    # -- reporting ----------------------------------------------------------------------------------
    def _routed(self, replica: Replica, waited: float) -> None:
        self.routed += 1
        replica.routed += 1
        if waited > 0:
            self.waited += 1
            replica.waited += 1
        hooks = self._hooks
        if hooks is not None and hooks.wants_replica:
            outcome: Literal["routed", "waited"] = "waited" if waited > 0 else "routed"
            hooks.replica(
                ReplicaEvent(outcome, replica.name, None, replica.lag_s, waited, hooks.database, replica.role)
            )

    def _fell_back(self, replica: Replica | None, reason: str, waited: float) -> None:
        self.fallback += 1
        if replica is not None:
            replica.fallback += 1
        hooks = self._hooks
        if hooks is not None and hooks.wants_replica:
            hooks.replica(
                ReplicaEvent(
                    "fallback",
                    None if replica is None else replica.name,
                    reason,
                    None if replica is None else replica.lag_s,
                    waited,
                    hooks.database,
                    "unknown" if replica is None else replica.role,
                )
            )

    def statuses(self) -> tuple[ReplicaStatus, ...]:
        now = monotonic()
        return tuple(replica.status(now) for replica in self.replicas)

    async def probe(self, *, timeout: float = 5.0) -> tuple[ReplicaStatus, ...]:  # noqa: ASYNC109
        """Check every replica now (role and lag; an unreachable one is skipped for a while), for
        `health()` and at start; never raises for a replica's failure."""

        async def check(replica: Replica) -> None:
            await self.prepare(replica)
            try:
                async with asyncio.timeout(timeout), replica.engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    standby, replayed, lag = await _driver(raw).fetchrow(_CHECK)
            except Exception as exc:
                replica.role = "unreachable"
                replica.skip_until = monotonic() + self.retry_after_s
                replica.reset_pool = True
                log.warning("read replica unreachable", replica=replica.name, error=type(exc).__name__)
                return
            now = monotonic()
            replica.checked_at, replica.lag_s, replica.replayed = now, float(lag), int(replayed)
            replica.role = "replica" if standby else "primary"
            if not standby:
                log.warning("a configured read replica is not in recovery: skipped", replica=replica.name)
                replica.skip_until = now + self.retry_after_s
            elif replica.lag_s > self.max_lag_s:
                replica.skip_until = now + self.probe_interval_s
            else:
                replica.skip_until = 0.0

        await asyncio.gather(*(check(replica) for replica in self.replicas))
        return self.statuses()

    async def dispose(self) -> None:
        """Detach from the primary and close the replicas' pools (disposing the primary engine also
        closes them, but keeps routing)."""
        _ROUTERS.pop(self.primary.sync_engine, None)
        for replica in self.replicas:
            await replica.engine.dispose()


# -- engine -> router -------------------------------------------------------------------------------

_ROUTERS: weakref.WeakKeyDictionary[Engine, ReplicaRouter] = weakref.WeakKeyDictionary()
_listening = False


def attach(router: ReplicaRouter) -> None:
    """Route read-only blocks on `router.primary` through `router`."""
    global _listening
    if not _listening:
        event.listen(Session, "after_begin", _after_begin)
        event.listen(Session, "after_commit", _after_commit)
        _listening = True
    _ROUTERS[router.primary.sync_engine] = router
    event.listen(router.primary.sync_engine, "engine_disposed", _dispose_replicas)


def _dispose_replicas(engine: Engine) -> None:
    """`await primary.dispose()` closes the replicas' pooled connections too (like the primary, they
    reconnect on next use). Runs in the greenlet of `AsyncEngine.dispose`, so the sync dispose works."""
    router = _ROUTERS.get(engine)
    if router is not None:
        for replica in router.replicas:
            replica.engine.sync_engine.dispose()


def router_of(engine: AsyncEngine) -> ReplicaRouter | None:
    """The router attached to `engine`; None (one falsy test) when no engine has replicas."""
    if not _ROUTERS:
        return None
    return _ROUTERS.get(engine.sync_engine)


def _unavailable(replica: Replica, reason: str, sqlstate: str | None = None) -> ReplicaUnavailableError:
    where = replica.endpoint
    return ReplicaUnavailableError(
        host=where.host,
        port=where.port,
        database=where.database,
        user=where.user,
        reason=reason,
        sqlstate=sqlstate,
    )


def _promoted(driver: Any) -> bool:
    """Whether a connection to a replica now talks to a primary. PostgreSQL 14+ reports
    `in_hot_standby` with the answer to every statement (`ParameterStatus`), and it turns "off" when
    the server is promoted: asyncpg keeps the latest value, so this asks nothing."""
    return getattr(driver.get_settings(), "in_hot_standby", None) == "off"


def _driver(raw: Any) -> Any:
    """The asyncpg connection under a pooled SQLAlchemy connection."""
    driver = raw.driver_connection
    if driver is None:
        raise InvalidRequestError("the pooled connection has no driver connection (closed)")
    return driver


# -- remembering commits ----------------------------------------------------------------------------

_WANT = "persistence_replicas_remember"
_ARMED = "persistence_replicas_armed"
_COMMITTED_AT = "persistence_replicas_lsn"
_reading: ContextVar[bool] = ContextVar("persistence_replicas_reading", default=False)


@contextlib.contextmanager
def reading() -> Any:
    """Marks a repository read (outside blocks it may go to a replica, and it needs no token)."""
    reset = _reading.set(True)
    try:
        yield
    finally:
        _reading.reset(reset)


def remember_commit(engine: AsyncEngine) -> dict[str, Any] | None:
    """The `info` of a session on `engine` whose commit must become the context's read-your-writes
    token (None, the common case: the engine has no replicas, or this is a repository read)."""
    if not _ROUTERS or _reading.get() or router_of(engine) is None:
        return None
    return {_WANT: True}


def remembered(session: AsyncSession) -> None:
    """After a session made with `remember_commit` committed: its WAL position becomes the token."""
    lsn = session.sync_session.info.pop(_COMMITTED_AT, None)
    if lsn is not None:
        _advance(lsn)


def _after_begin(session: Session, transaction: Any, connection: Connection) -> None:
    if session.info.get(_WANT):
        session.info[_ARMED] = connection


def _after_commit(session: Session) -> None:
    """Read the commit's WAL position on the connection that committed, before the session releases
    it (one statement, outside any transaction)."""
    connection = session.info.get(_ARMED)
    if not isinstance(connection, Connection):
        return
    try:
        driver = _driver(connection.connection)
        if driver.is_in_transaction():
            return  # a savepoint was released (this event fires for those too): not committed yet
        session.info.pop(_ARMED, None)
        session.info[_COMMITTED_AT] = int(await_(driver.fetchval(_POSITION)))
    except Exception:  # the commit happened; only its position is unknown
        session.info[_COMMITTED_AT] = _UNKNOWN


@contextlib.asynccontextmanager
async def remembering_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()` whose commit's WAL position becomes the context's token."""
    async with engine.connect() as connection:
        async with connection.begin():
            yield connection
        try:
            raw = await connection.get_raw_connection()
            _advance(int(await _driver(raw).fetchval(_POSITION)))
        except Exception:
            _advance(_UNKNOWN)


# -- repository reads outside blocks ----------------------------------------------------------------

Chosen = tuple[ReplicaRouter, Replica, AsyncConnection]


async def replica_for_read(engine: AsyncEngine) -> Chosen | None:
    """For a repository read outside blocks on an engine whose router routes those: a connection on
    an admitted replica; None: run it on `engine` (one falsy test when no engine has replicas)."""
    if not _ROUTERS or not _reading.get():
        return None
    router = router_of(engine)
    if router is None or not router.reads_outside_blocks:
        return None
    replica = router.candidate()
    if replica is None:
        return None
    await router.prepare(replica)
    try:
        connection = await replica.engine.connect()
    except Exception as exc:
        router.failed(replica, exc, in_block=False)
        return None
    try:
        raw = await connection.get_raw_connection()
        if await router.admit(replica, _driver(raw)):
            return router, replica, connection
    except Exception as exc:  # the replica, not the caller's read, failed: use the primary
        router.failed(replica, exc, in_block=False)
        with contextlib.suppress(Exception):
            await connection.invalidate()
    await connection.close()
    return None


@contextlib.asynccontextmanager
async def _on_replica(chosen: Chosen) -> AsyncIterator[AsyncConnection]:
    """The chosen replica connection; its failure under the read is a `ReplicaUnavailableError`."""
    router, replica, connection = chosen
    try:
        yield connection
    except Exception as exc:
        lost = router.lost(replica, exc)
        if lost is None:
            raise
        raise lost from exc
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def replica_session(chosen: Chosen) -> AsyncIterator[AsyncSession]:
    """`session_scope` for a read on the chosen replica: a short transaction of its own."""
    async with (
        _on_replica(chosen) as connection,
        AsyncSession(bind=connection, expire_on_commit=False, autoflush=False) as session,
        session.begin(),
    ):
        yield session


@contextlib.asynccontextmanager
async def replica_connection(chosen: Chosen) -> AsyncIterator[AsyncConnection]:
    """`connection_scope` for a read on the chosen replica."""
    async with _on_replica(chosen) as connection, connection.begin():
        yield connection
