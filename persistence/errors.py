"""The package's exception hierarchy.

Every error the package raises derives from `PersistenceError`, so callers can catch one type.
Messages name the server (`user@host:port/database`) and never contain a password. The original
driver exception is always chained (`raise ... from exc`).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as SATimeoutError


class PersistenceError(Exception):
    """Base class of every error raised by `persistence`."""


class ConfigurationError(PersistenceError, ValueError):
    """Settings are missing or contradict each other."""


class EmbeddedServerError(PersistenceError):
    """The local (embedded) PostgreSQL server could not be found, initialised, started or stopped."""


class NotFoundError(PersistenceError, LookupError):
    """No row has the requested key."""

    def __init__(self, entity: str, key: object) -> None:
        self.entity = entity
        self.key = key
        super().__init__(f"{entity} {key!r} not found")


class InvalidRequestError(PersistenceError, ValueError):
    """The caller asked for something impossible before any SQL ran (unknown field, bad operator)."""


class TransactionError(PersistenceError):
    """A transaction boundary was used wrongly (durable block nested, block shared between tasks, ...)."""


class DatabaseError(PersistenceError):
    """The server rejected a statement. `sqlstate` and `constraint` come from the server's error
    fields, never from its message text; the driver's exception is chained as `__cause__`."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        constraint: str | None = None,
        table: str | None = None,
        column: str | None = None,
    ) -> None:
        self.sqlstate = sqlstate
        self.constraint = constraint
        self.table = table
        self.column = column
        super().__init__(message)


class ConflictError(DatabaseError):
    """A unique or exclusion constraint was violated (23505, 23P01); `constraint` names it."""


class IntegrityViolation(DatabaseError):
    """Data broke a rule of the schema: check (23514), not-null (23502), foreign key (23503)."""


class ValidationError(IntegrityViolation):
    """A value the column cannot hold: too long (22001), out of range (22003), malformed (22P02 ...)."""


class ArgumentTypeError(ValidationError, TypeError):
    """A public function's argument has the wrong type: a `ValidationError` naming the argument that
    is also a `TypeError`, so `except TypeError` callers keep working."""


class TenantIsolationError(DatabaseError):
    """SQLSTATE 42501 (insufficient privilege): a row-level security policy refused a row (written
    for another tenant, or with no `tenant()` context), or the role lacks a privilege (a partition
    accessed directly, `across_tenants` without membership of `persistence_operator`)."""


class TransientError(DatabaseError):
    """Trying again may succeed: serialization failure (40001), deadlock (40P01), lost connection
    (08xxx), cancelled by a timeout (57014), lock not available (55P03), server shutting down (57P0x)."""

    retryable = True


class MigrationLockTimeout(TransientError):
    """A migration could not take a lock in time: another migrator held the migration lock past the
    wait, or a table its DDL alters stayed locked past `lock_timeout` (55P03). Nothing was applied."""


class DatabaseConnectionError(DatabaseError):
    """The server could not be reached, refused the connection, or the connection broke.

    `reason` is a short human explanation; `sqlstate` is set when the server answered with one
    (28P01 wrong password, 3D000 unknown database, ...). `retryable` is True when trying again later
    may succeed (refused, timed out, server starting) and False when it cannot (bad credentials, a
    TLS certificate that does not verify). Retryable ones are also `TransientError`s
    (`ServerUnavailableError`, `ConnectionLostError`), so `except TransientError` catches them too.
    """

    _action = "cannot connect to"

    def __init__(
        self,
        *,
        host: str | None,
        port: int | None,
        database: str | None,
        user: str | None,
        reason: str,
        sqlstate: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.reason = reason
        self.retryable = type(self).retryable if retryable is None else retryable
        who = f" as user {user!r}" if user else ""
        code = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
        super().__init__(
            f"{self._action} PostgreSQL{_where(host, port, database)}{who}: {reason}{code}", sqlstate=sqlstate
        )


class ServerUnavailableError(TransientError, DatabaseConnectionError):
    """No connection could be opened, for a reason that may pass: refused, no socket, DNS failure,
    connect timeout, server starting up or shutting down, too many connections."""


class ConnectionLostError(TransientError, DatabaseConnectionError):
    """An open connection broke (terminated by an administrator, server restarted, network reset).

    The connection is discarded; whether the interrupted statement ran is unknown."""

    _action = "lost the connection to"


class ReplicaUnavailableError(ConnectionLostError):
    """A read replica failed under a read-only block: its connection broke or it is shutting down
    (57P0x). The replica is skipped for a while; `@transaction(read_only=True, retries=N)` runs the
    block again elsewhere (a replica or the primary)."""

    _action = "lost the read replica"


class PoolExhaustedError(TransientError):
    """No pooled connection became free within `pool_timeout`: every one of `pool_size` +
    `max_overflow` connections was in use. Raise the pool limits or hold connections for less time."""

    def __init__(
        self,
        *,
        host: str | None,
        port: int | None,
        database: str | None,
        pool_size: int,
        max_overflow: int,
        pool_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.database = database
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.pool_timeout = pool_timeout
        super().__init__(
            f"connection pool exhausted for PostgreSQL{_where(host, port, database)}: all "
            f"{pool_size + max(max_overflow, 0)} connections (pool_size={pool_size}, "
            f"max_overflow={max_overflow}) stayed in use for pool_timeout={pool_timeout:g}s"
        )


def _where(host: str | None, port: int | None, database: str | None) -> str:
    """` at host:port/database`, or "" when nothing is known (never a password: none is passed)."""
    if host is None and port is None and database is None:
        return ""
    shown = host or "<default host>"
    if ":" in shown:
        shown = f"[{shown}]"  # IPv6
    return f" at {shown}:{port if port is not None else ''}/{database or ''}"


# SQLSTATE -> error class. Classes are matched by exact code first, then by two-letter class.
_BY_SQLSTATE: dict[str, type[DatabaseError]] = {
    "23505": ConflictError,
    "23P01": ConflictError,
    "23514": IntegrityViolation,
    "23502": IntegrityViolation,
    "23503": IntegrityViolation,
    "23001": IntegrityViolation,
    "40001": TransientError,
    "40P01": TransientError,
    "55P03": TransientError,
    "57014": TransientError,
    "57P01": TransientError,
    "57P02": TransientError,
    "57P03": TransientError,
    "53300": TransientError,
    "42501": TenantIsolationError,
}
_BY_CLASS: dict[str, type[DatabaseError]] = {
    "22": ValidationError,  # data exception: too long, out of range, invalid text representation
    "23": IntegrityViolation,
    "08": TransientError,  # connection exception
    "40": TransientError,  # transaction rollback
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a connection goes, for error messages: never holds the password."""

    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None

    @classmethod
    def of_url(cls, url: URL) -> Endpoint:
        """The endpoint of an engine's URL (a unix-socket directory comes as the `host` query key)."""
        socket_dir = url.query.get("host")
        host = url.host or (socket_dir if isinstance(socket_dir, str) else None)
        return cls(host, url.port, url.database, url.username)


# SQLSTATEs a server sends while refusing a new connection: (reason, retryable).
_CONNECT_SQLSTATES: dict[str, tuple[str, bool]] = {
    "28P01": ("password authentication failed (wrong user or password)", False),
    "28000": ("the server rejected this user (check pg_hba.conf and the role)", False),
    "3D000": ("the database does not exist", False),
    "53300": ("the server has too many connections", True),
    "57P03": ("the server is starting up or shutting down", True),
    "57P01": ("the server is shutting down", True),
}
# Connect-time meaning of SQLSTATEs that mean something else on an open connection.
_CONNECT_ONLY_SQLSTATES = {"42501": ("permission denied to connect to this database", False)}
# SQLSTATEs that end an open connection: terminated by an administrator, crash, lost link.
_LOST_SQLSTATES = frozenset({"57P01", "57P02"})
# asyncpg client-side errors that are usage or configuration mistakes, not a broken connection.
_NOT_LOST = (asyncpg.ClientConfigurationError, asyncpg.UnsupportedClientFeatureError, asyncpg.DataError)


def causes(exc: BaseException) -> list[BaseException]:
    """exc, its SQLAlchemy `.orig`, and their __cause__/__context__ chains (and group members), once each."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop(0)
        if err is None or any(err is s for s in seen):
            continue
        seen.append(err)
        orig = getattr(err, "orig", None)
        stack.extend([orig if isinstance(orig, BaseException) else None, err.__cause__, err.__context__])
        if isinstance(err, BaseExceptionGroup):
            stack.extend(err.exceptions)
    return seen


def _server_error(exc: BaseException) -> BaseException | None:
    """The driver's server-error object (it carries `sqlstate`) somewhere in the chain, if any."""
    for err in causes(exc):
        if isinstance(getattr(err, "sqlstate", None), str) and hasattr(err, "constraint_name"):
            return err
    return None


def _is_lost(err: BaseException) -> bool:
    """A failure of the connection itself (by type), not of the statement that was running on it."""
    if isinstance(err, asyncpg.InterfaceError):
        return not isinstance(err, _NOT_LOST)  # ConnectionDoesNotExistError, "connection is closed"
    return isinstance(err, ConnectionError) or (
        _socket_error(err) and not isinstance(err, FileNotFoundError | socket.gaierror | TimeoutError)
    )


def _socket_error(err: BaseException) -> bool:
    """An OS error of a socket: it names no file (`open()` and friends set `filename`), so a
    `FileNotFoundError` or `PermissionError` from the caller's own code is never taken for one."""
    return isinstance(err, OSError) and err.filename is None


def connect_error(
    exc: BaseException, where: Endpoint, *, timeout: float | None = None
) -> DatabaseConnectionError:
    """Our error for a connection that could not be opened, from SQLSTATE, TLS or OS error type."""
    chain = causes(exc)
    reason: str | None = None
    sqlstate: str | None = None
    retryable = True
    for err in chain:
        code = getattr(err, "sqlstate", None)
        if isinstance(code, str) and code:
            reason, retryable = (_CONNECT_SQLSTATES | _CONNECT_ONLY_SQLSTATES).get(
                code, (f"the server refused the connection ({type(err).__name__})", code.startswith("08"))
            )
            sqlstate = code
            break
    if reason is None:
        reason, retryable = _connect_reason(chain, where, timeout)
    cls = ServerUnavailableError if retryable else DatabaseConnectionError
    return cls(
        host=where.host,
        port=where.port,
        database=where.database,
        user=where.user,
        reason=reason,
        sqlstate=sqlstate,
        retryable=retryable,
    )


def _connect_reason(chain: list[BaseException], where: Endpoint, timeout: float | None) -> tuple[str, bool]:
    for err in chain:
        if isinstance(err, ssl.SSLCertVerificationError):
            what = err.verify_message or err.reason or "certificate verification failed"
            return f"TLS certificate verification failed: {what}", False
        if isinstance(err, ssl.SSLError):
            return f"TLS handshake failed: {err.reason or type(err).__name__}", False
    for err in chain:
        if isinstance(err, socket.gaierror):
            return f"cannot resolve host name {where.host!r}", True
        if isinstance(err, ConnectionRefusedError):
            return (
                "connection refused (is the server running and accepting connections on this address?)",
                True,
            )
        if isinstance(err, TimeoutError):
            after = f" after {timeout:g}s" if timeout is not None else ""
            return f"timed out{after}", True
        if isinstance(err, FileNotFoundError):
            return "no server socket at this path (is the server running?)", True
        if _is_lost(err) or isinstance(err, asyncpg.InternalClientError):
            return f"the connection was closed while opening it ({type(err).__name__})", True
        if isinstance(err, OSError):
            return f"network error: {err.strerror or type(err).__name__}", True
    return f"{type(chain[0]).__name__}", False


def lost_error(exc: BaseException, where: Endpoint) -> ConnectionLostError:
    """Our error for an open connection that broke (the caller discards it)."""
    server = _server_error(exc)
    sqlstate: str | None = server.sqlstate if server is not None else None  # type: ignore[attr-defined]
    if sqlstate == "57P01":
        reason = "terminated by the server (administrator command or shutdown)"
    elif sqlstate == "57P02":
        reason = "the server is restarting after a crash"
    else:
        culprit = server if server is not None else exc
        reason = f"the connection was closed (by the server or the network) mid-operation ({type(culprit).__name__})"
    return ConnectionLostError(
        host=where.host,
        port=where.port,
        database=where.database,
        user=where.user,
        reason=reason,
        sqlstate=sqlstate,
    )


def is_connection_failure(exc: BaseException, *, invalidated: bool = False) -> bool:
    """True when `exc` means the connection it happened on is unusable and must be discarded."""
    if invalidated or getattr(exc, "connection_invalidated", False) or isinstance(exc, ConnectionLostError):
        return True
    if isinstance(exc, PersistenceError):
        return False
    server = _server_error(exc)
    if server is not None:
        code = server.sqlstate  # type: ignore[attr-defined]
        return code in _LOST_SQLSTATES or code.startswith("08")
    return any(_is_lost(err) for err in causes(exc))


def translate(exc: BaseException, where: Endpoint | None = None) -> PersistenceError | None:
    """Our error for a driver/SQLAlchemy exception, classified by SQLSTATE or type; None if it is not one.

    `where` names the server in connection errors (the engine's own translation knows it; this
    function alone does not). The caller raises the result `from exc`, so the original stays chained.
    """
    if isinstance(exc, PersistenceError):
        return exc
    where = where or Endpoint()
    if isinstance(exc, SATimeoutError):
        return TransientError(
            "connection pool exhausted: no connection became free within pool_timeout "
            "(raise pool_size, max_overflow or pool_timeout)"
        )
    if isinstance(exc, PendingRollbackError):
        # 8s2b is SQLAlchemy's code for "Can't reconnect until invalid transaction is rolled back":
        # the connection under the transaction was lost (the engine already discarded it).
        if exc.code == "8s2b" or any(getattr(e, "connection_invalidated", False) for e in causes(exc)):
            return lost_error(exc, where)
        # Not an outage: an earlier failure in this unit of work was swallowed. Retrying would not help.
        return TransactionError(
            "an earlier statement in this block failed and SQLAlchemy rolled its work back; no statement "
            "can run in it until it ends"
        )
    server = _server_error(exc)
    if server is not None:
        sqlstate: str = server.sqlstate  # type: ignore[attr-defined]
        if sqlstate in _LOST_SQLSTATES or sqlstate.startswith("08"):
            return lost_error(exc, where)
        if sqlstate in _CONNECT_SQLSTATES:
            return connect_error(exc, where)
        cls = _BY_SQLSTATE.get(sqlstate) or _BY_CLASS.get(sqlstate[:2]) or DatabaseError
        constraint = getattr(server, "constraint_name", None)
        column = getattr(server, "column_name", None)
        table = getattr(server, "table_name", None)
        primary = getattr(server, "message", None) or type(server).__name__
        subject = f" (constraint {constraint})" if constraint else f" (column {column})" if column else ""
        return cls(
            f"{primary}{subject} [SQLSTATE {sqlstate}]",
            sqlstate=sqlstate,
            constraint=constraint,
            table=table,
            column=column,
        )
    chain = causes(exc)
    if any(
        isinstance(e, socket.gaierror | ConnectionRefusedError | ssl.SSLError)
        or (isinstance(e, FileNotFoundError) and _socket_error(e))
        for e in chain
    ):
        return connect_error(exc, where)
    if is_connection_failure(exc):
        return lost_error(exc, where)
    if any(isinstance(e, TimeoutError) for e in chain):
        return TransientError(f"timed out ({type(exc).__name__})")
    if isinstance(exc, DBAPIError):
        return DatabaseError(f"database error: {type(exc.orig or exc).__name__}")
    return None


def raise_translated(exc: BaseException, where: Endpoint | None = None) -> NoReturn:
    """Raise our error for `exc`, chained to it; `exc` itself when `translate` does not know it."""
    error = translate(exc, where)
    if error is None or error is exc:
        raise exc
    raise error from exc


@contextlib.contextmanager
def translated(where: Endpoint | None = None) -> Iterator[None]:
    """`with translated(where):` around driver calls: what escapes is ours (see `raise_translated`)."""
    try:
        yield
    except Exception as exc:
        raise_translated(exc, where)


class UsageSourceError(PersistenceError):
    """A usage source (metering vendor API, export file) could not be read or returned malformed data.

    `status` is the HTTP status when the vendor answered; `retryable` is True for 5xx, 429 and network
    errors. Messages never contain the API key.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        self.status = status
        self.retryable = retryable
        super().__init__(message)


class SpoolError(PersistenceError):
    """The BatchLogger's local spool cannot be used (locked by another process, unwritable, corrupt)."""
