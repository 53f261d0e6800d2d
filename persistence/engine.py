"""The pooled async engine (SQLAlchemy 2 asyncio over asyncpg), checked before it is handed out."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterable
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import event, text
from sqlalchemy.engine import Dialect, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.errors import (
    ConfigurationError,
    DatabaseConnectionError,
    Endpoint,
    PersistenceError,
    connect_error,
    is_connection_failure,
    lost_error,
)
from persistence.observe.hooks import Hook, Hooks
from persistence.observe.instrument import instrument
from persistence.observe.logging import SlowQueryLog
from persistence.pool import pool_class
from persistence.replicas import ReplicaRouter, attach

HooksArg = Hooks | Iterable[Hook] | None


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
    if config.replicas:
        await attach_replicas(engine, config, hooks=hooks, check=check)
    return engine


async def attach_replicas(
    engine: AsyncEngine, config: DatabaseConfig, *, hooks: HooksArg = None, check: bool = True
) -> ReplicaRouter:
    """Route `engine`'s outermost read-only blocks to `config.replicas` (one pooled engine each, with
    the same `hooks`). `check` reads each replica's role and lag now: one that is unreachable or not
    in recovery is logged and skipped for a while, never fatal (reads use the primary meanwhile).
    `await engine.dispose()` closes the replicas' pooled connections too; `await router.dispose()`
    also stops routing."""
    engines = [build_engine(config.replica_config(i), hooks=hooks) for i in range(len(config.replicas))]
    router = ReplicaRouter.from_config(engine, config, engines)
    if check:
        await router.probe(timeout=config.connect_timeout)
    attach(router)
    return router


def build_engine(config: DatabaseConfig, *, pooled: bool = True, hooks: HooksArg = None) -> AsyncEngine:
    """The engine for an already resolved config, without a connectivity check.

    `pooled=False` opens a fresh connection per checkout (one-off jobs such as migrations).
    `hooks` (sinks, or a `Hooks`) receive every query, pool and transaction event; with none and
    no `slow_query_ms`, the engine has no event listeners at all.
    """
    fanout = _hooks(config, hooks)
    engine = _create(config, pooled=pooled, fanout=fanout)
    _translate_errors(engine.sync_engine, config)
    if fanout is not None:
        instrument(engine.sync_engine, fanout)
    return engine


def endpoint(config: DatabaseConfig) -> Endpoint:
    """Host, port, database and user of `config`, for error messages (no password)."""
    return Endpoint(config.host, config.port, config.database, config.user)


def _translate_errors(engine: Engine, config: DatabaseConfig) -> None:
    """Make the engine raise our errors for connection failures, at connect and on open connections.

    A failed connect is translated where the driver is called (`do_connect`): SQLAlchemy only
    passes DBAPI errors to `handle_error` there, and asyncpg raises plain OS errors. A broken open
    connection (statement, commit, rollback, savepoint) is translated in `handle_error`, which also
    marks it as a disconnect so SQLAlchemy invalidates it instead of returning it to the pool.
    Statement errors are left to `errors.translate` at the package's boundaries.
    """
    where = endpoint(config)
    timeout = config.connect_timeout

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Dialect, record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            raise connect_error(exc, where, timeout=timeout) from exc

    @event.listens_for(engine, "handle_error")
    def on_error(ctx: ExceptionContext) -> BaseException | None:
        exc = ctx.original_exception
        if ctx.is_pre_ping or not isinstance(exc, Exception) or isinstance(exc, PersistenceError):
            return None  # a failed pre-ping is handled by the pool: it reconnects
        if not (ctx.is_disconnect or is_connection_failure(exc) or _driver_closed(ctx)):
            return None
        ctx.is_disconnect = True  # discard this connection; never back to the pool as healthy
        return lost_error(exc, where)


def _driver_closed(ctx: ExceptionContext) -> bool:
    """True when the asyncpg connection under the failed statement is closed (e.g. an
    `InternalClientError` raised after the server terminated the connection)."""
    conn = ctx.connection
    raw = getattr(conn, "_dbapi_connection", None) if conn is not None else None
    driver = getattr(raw, "driver_connection", None)
    closed = getattr(driver, "is_closed", None)
    return bool(closed()) if callable(closed) else False


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
    tls = ssl_context(config)
    if tls is not None:
        connect_args["ssl"] = tls
    if not pooled:
        return create_async_engine(
            config.sqlalchemy_url(),
            poolclass=NullPool,
            echo=config.echo,
            connect_args=connect_args,
            json_serializer=json_dumps,
            hide_parameters=True,
        )
    ping_idle_s = config.pool_ping_idle_s if config.pool_pre_ping else None
    return create_async_engine(
        config.sqlalchemy_url(),
        json_serializer=json_dumps,
        poolclass=pool_class(
            ping_idle_s=ping_idle_s, hooks=fanout, database=config.database, endpoint=endpoint(config)
        ),
        hide_parameters=True,
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
    """Open one connection and run `SELECT 1`; failures are `DatabaseConnectionError`s (retryable
    ones are also `TransientError`s: `ServerUnavailableError`, `ConnectionLostError`)."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except DatabaseConnectionError:
        raise
    except Exception as exc:
        raise connect_error(exc, endpoint(config), timeout=config.connect_timeout) from exc


def ssl_context(config: DatabaseConfig) -> ssl.SSLContext | str | None:
    """What asyncpg gets as `ssl`: our own context for require/verify-ca/verify-full (libpq
    semantics, certificate files from the config, never from asyncpg's environment lookups),
    the mode string for disable/allow/prefer, None for asyncpg's default."""
    mode = config.ssl_mode
    files = (config.ssl_root_cert, config.ssl_cert, config.ssl_key)
    if mode == "disable" or (
        mode not in ("require", "verify-ca", "verify-full") and all(f is None for f in files)
    ):
        return mode
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    root = config.ssl_root_cert
    verify = mode in ("verify-ca", "verify-full")
    if root is None and verify:
        default = Path.home() / ".postgresql" / "root.crt"
        if not default.is_file():
            raise ConfigurationError(
                f"sslmode={mode} needs a root certificate: set ssl_root_cert (DATABASE_URL sslrootcert=...); "
                f"the default {default} does not exist"
            )
        root = default
    if root is not None:
        if str(root) == "system":
            context.load_default_certs()
        else:
            _load(
                lambda: context.load_verify_locations(cafile=str(root)), "ssl_root_cert (sslrootcert)", root
            )
        context.verify_mode = ssl.CERT_REQUIRED  # libpq: a root certificate makes `require` verify the chain
        context.check_hostname = mode == "verify-full"
    if config.ssl_cert is not None:
        cert, key = config.ssl_cert, config.ssl_key
        _load(
            lambda: context.load_cert_chain(str(cert), str(key) if key is not None else None),
            "ssl_cert/ssl_key (sslcert/sslkey)",
            cert,
        )
    elif config.ssl_key is not None:
        raise ConfigurationError("ssl_key (sslkey) is set without ssl_cert (sslcert)")
    return context


def _load(load: Any, setting: str, path: Path | str) -> None:
    """Run a certificate load, reporting a missing or unreadable file as a configuration error."""
    try:
        load()
    except FileNotFoundError:
        raise ConfigurationError(f"{setting}: file {str(path)!r} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"{setting}: cannot load {str(path)!r}: {type(exc).__name__}") from exc
