"""Alembic environment: async, one transaction for the whole run, URL from `persistence` settings.

A caller may hand over an open connection in `config.attributes["connection"]` (tests and
`persistence.migrations` do); otherwise we connect with `DatabaseConfig()` — or the embedded server
when nothing is configured.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from sqlalchemy import Connection

from alembic import context
from persistence.config import DatabaseConfig
from persistence.engine import build_engine, resolve_config, verify_connection
from persistence.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _partitions(connection: Connection) -> set[str]:
    """Names of partition tables: the models declare their parents only (partitions are data-driven)."""
    rows = connection.exec_driver_sql(
        "SELECT relname FROM pg_class WHERE relispartition AND relkind IN ('r', 'p')"
    )
    return {str(name) for (name,) in rows}


def _configure(connection: Connection) -> None:
    partitions = _partitions(connection)

    def include_name(name: str | None, type_: str, parent_names: object) -> bool:
        return not (type_ == "table" and name in partitions)

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
        compare_type=True,
        compare_server_default=True,
        transactional_ddl=True,
    )


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    db = resolve_config(DatabaseConfig.from_environment())
    engine = build_engine(db, pooled=False)
    try:
        await verify_connection(engine, db)  # a clear error (no password) instead of a driver traceback
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    db = DatabaseConfig.from_environment()
    url = db.sqlalchemy_url() if db.is_configured else "postgresql+asyncpg://"
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
