"""The package's exception hierarchy.

Every error the package raises derives from `PersistenceError`, so callers can catch one type.
Messages name the server (`user@host:port/database`) and never contain a password. The original
driver exception is always chained (`raise ... from exc`).
"""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError


class PersistenceError(Exception):
    """Base class of every error raised by `persistence`."""


class ConfigurationError(PersistenceError, ValueError):
    """Settings are missing or contradict each other."""


class DatabaseConnectionError(PersistenceError):
    """The server could not be reached, or refused the connection.

    `reason` is a short human explanation; `sqlstate` is set when the server answered with one
    (28P01 wrong password, 3D000 unknown database, ...). `retryable` is True when trying again later
    may succeed (refused, timed out, server starting) and False when it cannot (bad credentials).
    """

    def __init__(
        self,
        *,
        host: str | None,
        port: int,
        database: str | None,
        user: str | None,
        reason: str,
        sqlstate: str | None = None,
        retryable: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.reason = reason
        self.sqlstate = sqlstate
        self.retryable = retryable
        shown_host = host or "<default host>"
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"  # IPv6
        where = f"{shown_host}:{port}/{database or ''}"
        who = f" as user {user!r}" if user else ""
        code = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
        super().__init__(f"cannot connect to PostgreSQL at {where}{who}: {reason}{code}")


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


class TransientError(DatabaseError):
    """Trying again may succeed: serialization failure (40001), deadlock (40P01), lost connection
    (08xxx), cancelled by a timeout (57014), lock not available (55P03), server shutting down (57P0x)."""

    retryable = True


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
}
_BY_CLASS: dict[str, type[DatabaseError]] = {
    "22": ValidationError,  # data exception: too long, out of range, invalid text representation
    "23": IntegrityViolation,
    "08": TransientError,  # connection exception
    "40": TransientError,  # transaction rollback
}


def _server_error(exc: BaseException) -> BaseException | None:
    """The driver's server-error object (it carries `sqlstate`) somewhere in the chain, if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(getattr(err, "sqlstate", None), str) and hasattr(err, "constraint_name"):
            return err
        orig = getattr(err, "orig", None)
        stack.extend([orig if isinstance(orig, BaseException) else None, err.__cause__, err.__context__])
    return None


def translate(exc: BaseException) -> PersistenceError | None:
    """Our error for a driver/SQLAlchemy exception, classified by SQLSTATE; None if it is not one.

    The caller raises the result `from exc`, so the original stays chained.
    """
    if isinstance(exc, PersistenceError):
        return exc
    server = _server_error(exc)
    if server is not None:
        sqlstate: str = server.sqlstate  # type: ignore[attr-defined]
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
    if getattr(exc, "connection_invalidated", False) or isinstance(
        exc, ConnectionError | OSError | TimeoutError
    ):
        return TransientError(f"connection lost or timed out: {type(exc).__name__}")
    if isinstance(exc, DBAPIError):
        chain = [exc, exc.orig, getattr(exc.orig, "__cause__", None)]
        if any(
            isinstance(err, asyncpg.InterfaceError | asyncpg.ConnectionDoesNotExistError) for err in chain
        ):
            return TransientError("the connection was closed")
        return DatabaseError(f"database error: {type(exc.orig or exc).__name__}")
    return None


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
