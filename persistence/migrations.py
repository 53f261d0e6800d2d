"""Run the Alembic migrations from code (the seeding script and `persistence migrate` use this)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command
from persistence.errors import ConfigurationError

_PACKAGE_DIR = Path(__file__).resolve().parent


def script_location() -> Path:
    """The migrations directory: shipped in the wheel, or the checkout's top-level `alembic/`."""
    for candidate in (_PACKAGE_DIR / "_alembic", _PACKAGE_DIR.parent / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise ConfigurationError("cannot find the Alembic migrations (alembic/env.py) next to the package")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["configure_logging"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def current_of(connection: Connection) -> str | None:
    """The revision stamped in the connection's database (None: never migrated)."""
    return _current(connection)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the engine's database to `revision` in one transaction; returns (before, after)."""

    def run(connection: Connection) -> tuple[str | None, str | None]:
        before = _current(connection)
        command.upgrade(alembic_config(connection), revision)
        return before, _current(connection)

    async with engine.begin() as conn:
        return await conn.run_sync(run)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    def run(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
