"""The package's exception hierarchy.

Every error the package raises derives from `PersistenceError`, so callers can catch one type.
Messages name the server (`user@host:port/database`) and never contain a password. The original
driver exception is always chained (`raise ... from exc`).
"""

from __future__ import annotations


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
