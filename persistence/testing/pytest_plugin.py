"""pytest fixtures: a real PostgreSQL per test session, each test isolated in a rolled-back transaction.

- `pg`: the session's `ThrowawayPostgres` (started once, schema migrated once into a template).
- `engine`: a pooled `AsyncEngine` on the shared test database.
- `connection` / `session`: one outer transaction per test, rolled back at the end; code under test
  may commit and roll back freely, because the session turns those into savepoints.
- `@pytest.mark.commits` + `fresh_database`: a private database cloned from the template, for tests
  that need real commits (other connections must see the data); dropped after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.testing.database import TEST_DB, ThrowawayPostgres


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "persistence_alembic_config",
        "a service's alembic.ini (relative to the rootdir): the test template gets its revisions beside ours",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "commits: the test commits for real and gets its own database cloned from the template"
    )


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
async def engine(db_config: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    eng = build_engine(db_config)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
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


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_database(
    request: pytest.FixtureRequest, migrated: ThrowawayPostgres
) -> AsyncIterator[DatabaseConfig]:
    if request.node.get_closest_marker("commits") is None:
        raise pytest.UsageError("fresh_database is for tests marked @pytest.mark.commits")
    name = migrated.clone()
    try:
        yield migrated.config(name)
    finally:
        migrated.drop(name)


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_engine(fresh_database: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    """A pooled engine on the test's private database (tests marked `@pytest.mark.commits`)."""
    eng = build_engine(fresh_database)
    try:
        yield eng
    finally:
        await eng.dispose()
