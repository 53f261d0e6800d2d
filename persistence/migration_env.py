"""The body of an Alembic `env.py`: ours (`alembic/env.py`) and a service's, one line each.

    # the service's migrations/env.py
    from myservice.models import ServiceBase
    from persistence.migration_env import run_migrations

    run_migrations(ServiceBase.metadata)

Async, one transaction for the whole run. A caller may hand over an open connection in
`config.attributes["connection"]` (`persistence.migrations` and the tests do); otherwise it connects
with `DatabaseConfig()`, or the embedded server when nothing is configured.

For a service's metadata, autogenerate compares only the service's tables: the package's tables (and
partitions) in the database are left out, so a service's `alembic revision --autogenerate` never
proposes to drop or alter ours. See `persistence.migrations.alembic_config(service=...)` for how the
service's revisions run beside ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from logging.config import fileConfig

from sqlalchemy import Connection, MetaData

from alembic import context
from persistence.config import DatabaseConfig
from persistence.engine import build_engine, resolve_config, verify_connection
from persistence.models import Base


def run_migrations(target_metadata: MetaData | Sequence[MetaData]) -> None:
    """Run the current Alembic command (called from an env.py, where `alembic.context` is set up)."""
    config = context.config
    if (
        config.config_file_name is not None
        and config.attributes.get("configure_logging", True)
        and config.file_config.has_section("loggers")  # an ini without logging sections configures none
    ):
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    _head_means_every_head()
    metadatas = list(target_metadata) if isinstance(target_metadata, Sequence) else [target_metadata]
    ours = any(metadata is Base.metadata for metadata in metadatas)
    skipped = set() if ours else set(Base.metadata.tables)
    if context.is_offline_mode():
        db = DatabaseConfig.from_environment()
        url = db.sqlalchemy_url() if db.is_configured else "postgresql+asyncpg://"
        context.configure(url=url, target_metadata=metadatas, literal_binds=True, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection, metadatas, skipped)
    else:
        asyncio.run(_run_async(metadatas, skipped))


def _head_means_every_head() -> None:
    """`alembic upgrade head` in a service (its branch beside ours: two heads) upgrades every branch,
    as `upgrade heads` would, instead of Alembic's "multiple heads" refusal: one command deploys both.

    Alembic has no public hook for this, so it adjusts the running command's own options, and only
    when it recognises them (the `upgrade` command's function, destination "head", several heads);
    anything else, and every other command, runs untouched.
    """
    env = getattr(context, "_proxy", None)
    options = getattr(env, "context_opts", None)
    script = getattr(env, "script", None)
    if not isinstance(options, dict) or script is None or options.get("destination_rev") != "head":
        return
    upgrade = options.get("fn")
    if getattr(upgrade, "__qualname__", "") != "upgrade.<locals>.upgrade" or len(script.get_heads()) < 2:
        return
    options["destination_rev"] = "heads"
    options["fn"] = lambda rev, _context: script._upgrade_revs("heads", rev)


def _partitions(connection: Connection) -> set[str]:
    """Names of partition tables: the models declare their parents only (partitions are data-driven)."""
    rows = connection.exec_driver_sql(
        "SELECT relname FROM pg_class WHERE relispartition AND relkind IN ('r', 'p')"
    )
    return {str(name) for (name,) in rows}


def _run_sync(connection: Connection, metadatas: list[MetaData], skipped: set[str]) -> None:
    left_out = _partitions(connection) | skipped
    # The default schema and the schemas the models name (e.g. seed 004's `analytics`), no others.
    schemas = {None, *(t.schema for metadata in metadatas for t in metadata.tables.values() if t.schema)}

    def include_name(name: str | None, type_: str, parent_names: object) -> bool:
        if type_ == "schema":
            return name in schemas
        return not (type_ == "table" and name in left_out)

    context.configure(
        connection=connection,
        target_metadata=metadatas,
        include_schemas=True,
        include_name=include_name,
        compare_type=True,
        compare_server_default=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(metadatas: list[MetaData], skipped: set[str]) -> None:
    db = resolve_config(DatabaseConfig.from_environment())
    engine = build_engine(db, pooled=False)
    try:
        await verify_connection(engine, db)  # a clear error (no password) instead of a driver traceback
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync, metadatas, skipped)
            await connection.commit()
    finally:
        await engine.dispose()
