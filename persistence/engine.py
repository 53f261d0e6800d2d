"""The pooled async engine (SQLAlchemy 2 asyncio over asyncpg), checked before it is handed out."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.errors import DatabaseConnectionError
from persistence.observe.hooks import Hook, Hooks
from persistence.observe.instrument import instrument
from persistence.observe.logging import SlowQueryLog
from persistence.pool import pool_class

HooksArg = Hooks | Iterable[Hook] | None

# SQLSTATE -> (reason, retryable). Classes 08 (connection) and 57P0x (shutdown/startup) may heal.
_SQLSTATE_REASONS: dict[str, tuple[str, bool]] = {
    "28P01": ("password authentication failed (wrong user or password)", False),
    "28000": ("the server rejected this user (check pg_hba.conf and the role)", False),
    "3D000": ("the database does not exist", False),
    "42501": ("permission denied to connect to this database", False),
    "53300": ("the server has too many connections", True),
    "57P03": ("the server is starting up or shutting down", True),
    "57P01": ("the server is shutting down", True),
}


async def create_database_engine(
    config: DatabaseConfig | None = None, *, check: bool = True, hooks: HooksArg = None
) -> AsyncEngine:
    """Create the pooled engine for `config` and prove it can connect.

    With no server configured (no `DATABASE_URL`/`DB_HOST`), starts or reuses the embedded local
    server. Raises `DatabaseConnectionError` (host, port, database and reason; never the password)
    when the first connection fails. `hooks` are metrics/tracing sinks (see `persistence.observe`).
    """
    config = config if config is not None else DatabaseConfig()
    if not config.is_configured:
        config = await asyncio.to_thread(_embedded_config, config)
    engine = build_engine(config, hooks=hooks)
    if check:
        try:
            await verify_connection(engine, config)
        except BaseException:
            await engine.dispose()
            raise
    return engine


def build_engine(config: DatabaseConfig, *, pooled: bool = True, hooks: HooksArg = None) -> AsyncEngine:
    """The engine for an already resolved config, without a connectivity check.

    `pooled=False` opens a fresh connection per checkout (one-off jobs such as migrations).
    `hooks` (sinks, or a `Hooks`) receive every query, pool and transaction event; with none and
    no `slow_query_ms`, the engine has no event listeners at all.
    """
    fanout = _hooks(config, hooks)
    engine = _create(config, pooled=pooled, fanout=fanout)
    if fanout is not None:
        instrument(engine.sync_engine, fanout)
    return engine


def _hooks(config: DatabaseConfig, hooks: HooksArg) -> Hooks | None:
    sinks: list[Hook] = list(hooks.sinks if isinstance(hooks, Hooks) else hooks or ())
    if config.slow_query_ms is not None:
        sinks.append(SlowQueryLog(config.slow_query_ms / 1000))
    return Hooks(sinks, database=config.database) if sinks else None


def _create(config: DatabaseConfig, *, pooled: bool, fanout: Hooks | None) -> AsyncEngine:
    server_settings = {"application_name": config.application_name}
    if config.statement_timeout_ms is not None:
        server_settings["statement_timeout"] = str(config.statement_timeout_ms)
    connect_args: dict[str, Any] = {"server_settings": server_settings, "timeout": config.connect_timeout}
    if config.ssl_mode is not None:
        connect_args["ssl"] = config.ssl_mode
    if not pooled:
        return create_async_engine(
            config.sqlalchemy_url(),
            poolclass=NullPool,
            echo=config.echo,
            connect_args=connect_args,
            json_serializer=json_dumps,
        )
    ping_idle_s = config.pool_ping_idle_s if config.pool_pre_ping else None
    return create_async_engine(
        config.sqlalchemy_url(),
        json_serializer=json_dumps,
        poolclass=pool_class(ping_idle_s=ping_idle_s, hooks=fanout, database=config.database),
        pool_size=config.pool_size,
        max_overflow=config.max_overflow,
        pool_timeout=config.pool_timeout,
        pool_recycle=config.pool_recycle,
        pool_pre_ping=False,  # PersistencePool pings idle connections itself (persistence/pool.py)
        echo=config.echo,
        connect_args=connect_args,
    )


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)  # str keeps a Decimal exact; a float would not
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if value is Ellipsis:
        return "..."  # the `[...]` placeholders of documentation examples
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_dumps(value: object) -> str:
    """JSONB encoder: also takes datetimes, UUIDs, Decimals (as exact strings), enums and sets."""
    return json.dumps(value, default=_json_default, ensure_ascii=False, allow_nan=False)


def resolve_config(config: DatabaseConfig | None = None) -> DatabaseConfig:
    """`config` (or the environment's), with the embedded server started when none is configured."""
    config = config if config is not None else DatabaseConfig()
    return config if config.is_configured else _embedded_config(config)


def _embedded_config(config: DatabaseConfig) -> DatabaseConfig:
    embedded = EmbeddedConfig()
    server = EmbeddedServer.from_config(embedded)
    database = config.database or embedded.database
    server.ensure_database(database)
    return server.database_config(database, base=config)


async def verify_connection(engine: AsyncEngine, config: DatabaseConfig) -> None:
    """Open one connection and run `SELECT 1`, translating failures into `DatabaseConnectionError`."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (DBAPIError, OSError, TimeoutError) as exc:
        reason, sqlstate, retryable = _explain(exc, config)
        raise DatabaseConnectionError(
            host=config.host,
            port=config.port,
            database=config.database,
            user=config.user,
            reason=_scrub(reason, config),
            sqlstate=sqlstate,
            retryable=retryable,
        ) from exc


def _explain(exc: BaseException, config: DatabaseConfig) -> tuple[str, str | None, bool]:
    """(reason, sqlstate, retryable) for a failed first connection, from SQLSTATE or the OS error."""
    for err in _causes(exc):
        sqlstate = getattr(err, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            reason, retryable = _SQLSTATE_REASONS.get(
                sqlstate,
                (f"the server refused the connection ({type(err).__name__})", sqlstate.startswith("08")),
            )
            return reason, sqlstate, retryable
    for err in _causes(exc):
        if isinstance(err, socket.gaierror):
            return f"cannot resolve host name {config.host!r}", None, True
        if isinstance(err, ConnectionRefusedError):
            return (
                "connection refused (is the server running and accepting connections on this address?)",
                None,
                True,
            )
        if isinstance(err, TimeoutError):
            return f"timed out after {config.connect_timeout:g}s", None, True
        if isinstance(err, FileNotFoundError):
            return "no server socket at this path (is the server running?)", None, True
        if isinstance(err, OSError):
            return f"network error: {err.strerror or err or type(err).__name__}", None, True
    if isinstance(exc, InterfaceError | OperationalError):
        return "the connection was closed by the server", None, True
    return f"{type(exc).__name__}", None, False


def _causes(exc: BaseException) -> list[BaseException]:
    """exc, its SQLAlchemy `.orig`, and their __cause__/__context__ chains, without repeats."""
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


def _scrub(message: str, config: DatabaseConfig) -> str:
    if config.password is None:
        return message
    secret = config.password.get_secret_value()
    return message.replace(secret, "***") if len(secret) >= 4 else message
