"""pytest fixtures: a real PostgreSQL per test session, each test isolated in a rolled-back transaction.

Load it with `pytest_plugins = ["persistence.testing.pytest_plugin"]` in the root conftest.py; it
configures pytest-asyncio itself (see `pytest_configure`).

- `pg`: the session's `ThrowawayPostgres` (started once, schema migrated once into a template).
- `engine`: an `AsyncEngine` for one test. Everything done through it (repositories, `transaction()`
  blocks, which become savepoints, `on_commit` callbacks, the audit, the AI-call ledger,
  `engine.connect()` / `engine.begin()`) runs on one connection inside the test's outer
  transaction, rolled back when the test ends (`persistence.pinning`).
- `connection` / `session`: that same connection and outer transaction (the session turns commits
  and rollbacks into savepoints).
- `@pytest.mark.commits`: `engine` is instead a real pooled engine on a private database cloned from
  the template (other connections see the data; `fresh_database` gives its settings, `fresh_engine`
  is the same engine), dropped after the test.
- `login_as` (under `commits`): `async with login_as("persistence_service") as svc:` an engine logged
  in as a new LOGIN member of that role (row-level security binds it), dropped after the test.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.pinning import Pin, PinnedEngine, pin_of
from persistence.testing.database import TEST_DB, ThrowawayPostgres
from persistence.testing.factories import bind_engine

# What the fixtures need from pytest-asyncio: the session-scoped engine's connections belong to the
# session's event loop, so tests and fixtures must run on it too.
_ASYNCIO_SETTINGS = {
    "asyncio_mode": "auto",
    "asyncio_default_fixture_loop_scope": "session",
    "asyncio_default_test_loop_scope": "session",
}
_SET_THESE = (
    "persistence's pytest plugin needs pytest-asyncio configured with asyncio_mode = auto, "
    'asyncio_default_fixture_loop_scope = "session" and asyncio_default_test_loop_scope = "session"'
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "persistence_alembic_config",
        "a service's alembic.ini (relative to the rootdir): the test template gets its revisions beside ours",
        default="",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "commits: the test commits for real and gets its own database cloned from the migrated template",
    )
    _configure_asyncio(config)


def _configure_asyncio(config: pytest.Config) -> None:
    """Fill in the pytest-asyncio settings the user left unset (before pytest-asyncio reads them);
    refuse, in one sentence, settings that would run tests on another loop than the engine's."""
    configured: Any = getattr(config, "_inicfg", None)
    cache: Any = getattr(config, "_inicache", None)
    if not isinstance(configured, dict) or not isinstance(cache, dict):  # a future pytest: ask the user
        if any(config.getini(name) != value for name, value in _ASYNCIO_SETTINGS.items()):
            raise pytest.UsageError(f"{_SET_THESE} (this pytest version cannot be configured by a plugin).")
        return
    for name, value in _ASYNCIO_SETTINGS.items():
        if name == "asyncio_mode" and config.getoption("asyncio_mode", None) is not None:
            given = config.getoption("asyncio_mode")
        elif name in configured:
            given = config.getini(name)
        else:
            cache[name] = value
            continue
        if name != "asyncio_mode" and given != value:
            raise pytest.UsageError(f"{_SET_THESE}; {name} is set to {given!r}.")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Fixtures are resolved before this hook, so a usefixtures marker added here would do nothing.
    for item in items:
        names = getattr(item, "fixturenames", None)
        if (
            item.get_closest_marker("commits") is not None
            and names is not None
            and "fresh_database" not in names
        ):
            names.append("fresh_database")


@pytest.fixture(scope="session")
def pg() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def migrated(pg: ThrowawayPostgres, pytestconfig: pytest.Config) -> ThrowawayPostgres:
    service = str(pytestconfig.getini("persistence_alembic_config") or "")
    await pg.create_migrated_template(pytestconfig.rootpath / service if service else None)
    pg.clone(TEST_DB)
    return pg


@pytest.fixture(scope="session")
def db_config(migrated: ThrowawayPostgres) -> DatabaseConfig:
    return migrated.config(TEST_DB)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_engine(db_config: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    """The session's pooled engine on the shared test database; `engine` pins one of its connections."""
    eng = build_engine(db_config)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def fresh_database(request: pytest.FixtureRequest, migrated: ThrowawayPostgres) -> Iterator[DatabaseConfig]:
    """Settings of the test's private database (tests marked `@pytest.mark.commits`)."""
    if request.node.get_closest_marker("commits") is None:
        raise pytest.UsageError("fresh_database is for tests marked @pytest.mark.commits")
    name = migrated.clone()
    try:
        yield migrated.config(name)
    finally:
        migrated.drop(name)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(request: pytest.FixtureRequest, shared_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The test's engine: isolating (one connection, rolled back at the end), or real under `commits`."""
    if request.node.get_closest_marker("commits") is not None:
        real = build_engine(request.getfixturevalue("fresh_database"))
        try:
            with bind_engine(real):
                yield real
        finally:
            await real.dispose()
        return
    async with shared_engine.connect() as conn:
        outer = await conn.begin()
        try:
            # SQLAlchemy's asyncpg adapter begins on the first statement: begin now, so that asyncpg's
            # own transaction() blocks (the ledger's) nest as savepoints inside this transaction.
            await conn.exec_driver_sql("SELECT 1")
            pinned = PinnedEngine(shared_engine.sync_engine, Pin(conn))
            with bind_engine(pinned):
                yield pinned
        finally:
            if outer.is_active:
                await outer.rollback()


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_engine(fresh_database: DatabaseConfig, engine: AsyncEngine) -> AsyncEngine:
    """The same engine as `engine` in a `@pytest.mark.commits` test (kept for older tests)."""
    return engine


@pytest_asyncio.fixture(loop_scope="session")
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """The connection of the test's outer transaction (under `commits`: one on the private database,
    in a transaction rolled back at the end)."""
    pin = pin_of(engine)
    if pin is not None:
        yield pin.connection
        return
    async with engine.connect() as conn:
        outer = await conn.begin()
        try:
            yield conn
        finally:
            if outer.is_active:
                await outer.rollback()


@pytest_asyncio.fixture(loop_scope="session")
async def session(connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    ) as sess:
        yield sess


LoginAs = Callable[[str], AbstractAsyncContextManager[AsyncEngine]]
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@pytest_asyncio.fixture(loop_scope="session")
async def login_as(engine: AsyncEngine, fresh_database: DatabaseConfig) -> AsyncIterator[LoginAs]:
    """`async with login_as("persistence_service") as svc:` an engine on the test's private database
    logged in as a new LOGIN member of that role (made by the test's superuser; every role made is
    dropped when the test ends). For testing code the way a service runs it: under row-level security."""
    roles: list[str] = []

    @asynccontextmanager
    async def login(group: str) -> AsyncIterator[AsyncEngine]:
        if not _ROLE_NAME.fullmatch(group):
            raise pytest.UsageError(f"not a plain role name: {group!r}")
        role = f"login_{uuid.uuid4().hex[:12]}"
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE ROLE {role} LOGIN IN ROLE "{group}"'))
        roles.append(role)
        member = build_engine(fresh_database.model_copy(update={"user": role}))
        try:
            yield member
        finally:
            await member.dispose()

    yield login
    async with engine.begin() as conn:
        for role in roles:
            await conn.execute(text(f"DROP OWNED BY {role}"))
            await conn.execute(text(f"DROP ROLE {role}"))
