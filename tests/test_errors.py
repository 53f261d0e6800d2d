"""Connection failures are typed: a lost connection, a stopped or unreachable server and an exhausted
pool are retryable `TransientError`s naming host/port/database, and a broken connection never goes
back to the pool as healthy."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    AICallLogger,
    ClaimRepository,
    DatabaseConfig,
    DatabaseConnectionError,
    PersistenceError,
    TransientError,
    current_session,
    transaction,
)
from persistence.engine import build_engine
from persistence.errors import (
    ConnectionLostError,
    PoolExhaustedError,
    ServerUnavailableError,
    raise_translated,
    translate,
    translated,
)
from persistence.testing import ThrowawayPostgres
from tests.ai_calls.conftest import call

PASSWORD = "s3cret-never-shown"


def assert_names_server(err: BaseException, config: DatabaseConfig) -> None:
    assert isinstance(err, TransientError) and err.retryable
    message = str(err)
    assert f"{config.host}:{config.port}/{config.database}" in message, message
    assert PASSWORD not in message and PASSWORD not in repr(err)
    assert err.__cause__ is not None


async def terminate_others(admin: AsyncEngine) -> int:
    """`pg_terminate_backend` every other connection to the database, from a connection of its own."""
    async with admin.connect() as conn:
        killed = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        await conn.commit()
    return int(killed or 0)


async def fill_pool(engine: AsyncEngine, size: int) -> None:
    """Open `size` pooled connections (held at once, then all returned to the pool)."""

    async def hold() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(0.05)"))

    await asyncio.gather(*(hold() for _ in range(size)))


async def assert_pool_healthy(engine: AsyncEngine, size: int) -> None:
    """Every connection the pool hands out works (the engines here do not pre-ping)."""

    async def use() -> int:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(0.05)"))
            return int(await conn.scalar(text("SELECT 1")) or 0)

    assert await asyncio.gather(*(use() for _ in range(size))) == [1] * size


@pytest_asyncio.fixture(loop_scope="session")
async def admin(fresh_database: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(fresh_database, pooled=False)
    yield engine
    await engine.dispose()


@pytest.mark.commits
@pytest.mark.parametrize("pre_ping", [False, True])
async def test_every_pooled_connection_terminated_between_calls(
    fresh_database: DatabaseConfig, admin: AsyncEngine, pre_ping: bool
) -> None:
    config = fresh_database.model_copy(update={"pool_size": 3, "max_overflow": 0, "pool_pre_ping": pre_ping})
    engine = build_engine(config)
    repo = ClaimRepository(engine)
    try:
        await fill_pool(engine, 3)
        assert await terminate_others(admin) == 3
        await asyncio.sleep(0.05)
        outcomes: list[str] = []
        for _ in range(3):
            for attempt in (repo.count, lambda: _select_one(engine)):
                outcomes.append(await _outcome(attempt, config))
        assert outcomes[-2:] == ["ok", "ok"]
        if pre_ping:
            assert "lost" not in outcomes
        await assert_pool_healthy(engine, 3)
    finally:
        await engine.dispose()


async def _outcome(attempt: Any, config: DatabaseConfig) -> str:
    """ "ok", or "lost" for a `ConnectionLostError` naming the server (anything else fails the test)."""
    try:
        await attempt()
    except ConnectionLostError as exc:
        error: BaseException = exc
    else:
        return "ok"
    assert_names_server(error, config)
    return "lost"


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT 1")) == 1


@pytest.mark.commits
async def test_connections_terminated_during_calls(
    fresh_database: DatabaseConfig, admin: AsyncEngine
) -> None:
    config = fresh_database.model_copy(update={"pool_size": 3, "max_overflow": 0, "pool_pre_ping": False})
    engine = build_engine(config)
    repo = ClaimRepository(engine)

    async def in_block() -> None:
        async with transaction():
            await repo.count()
            await (await current_session(engine)).execute(text("SELECT pg_sleep(30)"))

    async def on_connection() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(30)"))

    try:
        await fill_pool(engine, 3)
        calls = [asyncio.create_task(in_block()), asyncio.create_task(on_connection())]
        for _ in range(500):  # until both sleep on the server
            async with admin.connect() as conn:
                sleeping = await conn.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'")
                )
            if sleeping == 2:
                break
            await asyncio.sleep(0.01)
        await terminate_others(admin)
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            assert isinstance(outcome, ConnectionLostError), repr(outcome)
            assert_names_server(outcome, config)
            assert "lost the connection to PostgreSQL" in str(outcome)
        await asyncio.sleep(0.05)
        # The third pooled connection was idle when terminated: SQLAlchemy's disconnect handling
        # recycles the whole pool, so no call fails on it.
        assert await repo.count() == 0
        await assert_pool_healthy(engine, 3)
    finally:
        await engine.dispose()


@pytest.mark.commits
async def test_pool_exhaustion_is_transient_and_names_the_knobs(fresh_database: DatabaseConfig) -> None:
    config = fresh_database.model_copy(update={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2})
    engine = build_engine(config)
    repo = ClaimRepository(engine)
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            for attempt in (repo.count, lambda: _select_one(engine)):
                with pytest.raises(PoolExhaustedError) as info:
                    await attempt()
                message = str(info.value)
                assert "pool exhausted" in message
                assert (
                    "pool_size=1" in message
                    and "max_overflow=0" in message
                    and "pool_timeout=0.2s" in message
                )
                assert (info.value.pool_size, info.value.max_overflow, info.value.pool_timeout) == (1, 0, 0.2)
                assert_names_server(info.value, config)
        assert await repo.count() == 0  # the held connection is back: the pool works again
    finally:
        await engine.dispose()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts TCP connections but never speaks PostgreSQL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def unreachable(host: str, port: int) -> DatabaseConfig:
    return DatabaseConfig(
        host=host, port=port, database="appdb", user="app", password=PASSWORD, connect_timeout=0.5
    )


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("refused", "connection refused"),
        ("dns", "cannot resolve host name 'db.does-not-exist.invalid'"),
        ("timeout", "timed out after 0.5s"),
        ("socket", "no server socket at this path"),
    ],
)
async def test_unreachable_server_fails_every_call_with_a_retryable_error(
    closed_port: int, silent_listener: int, tmp_path: Any, where: str, reason: str
) -> None:
    config = {
        "refused": unreachable("127.0.0.1", closed_port),
        "dns": unreachable("db.does-not-exist.invalid", 5432),
        "timeout": unreachable("127.0.0.1", silent_listener),
        "socket": unreachable(str(tmp_path), 5432),
    }[where]
    engine = build_engine(config)  # no connect check: the failure comes at the first call
    try:
        for attempt in (
            ClaimRepository(engine).count,
            lambda: ClaimRepository(engine).create_claim(external_id="x", content="y"),
            lambda: _select_one(engine),
        ):
            with pytest.raises(ServerUnavailableError) as info:
                await attempt()
            assert isinstance(info.value, DatabaseConnectionError)  # the connect-time type still catches it
            assert reason in str(info.value)
            assert_names_server(info.value, config)
    finally:
        await engine.dispose()


# -- a server stopped under a running application --------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[ThrowawayPostgres]:
    """A server of this module's own, to stop and start (the session's stays up for other tests)."""
    server = ThrowawayPostgres(settings={"synchronous_commit": "on"})  # stopping it is a crash
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def stoppable(own_server: ThrowawayPostgres) -> AsyncIterator[DatabaseConfig]:
    if not own_server.server.status().running:  # a failed test may have left it stopped
        own_server.start_server()
    await own_server.create_migrated_template()
    name = own_server.clone()
    try:
        yield own_server.config(name, pool_size=4, max_overflow=0, pool_pre_ping=False, pool_timeout=5)
    finally:
        if own_server.server.status().running:
            own_server.drop(name)


@pytest.mark.parametrize("pre_ping", [False, True])
async def test_a_stopped_server_fails_every_repository_and_ledger_call_with_a_retryable_error(
    own_server: ThrowawayPostgres, stoppable: DatabaseConfig, pre_ping: bool
) -> None:
    engine = build_engine(stoppable.model_copy(update={"pool_pre_ping": pre_ping}))
    claims = ClaimRepository(engine)
    ledger = AICallLogger(engine, connections=2)
    period = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 12, 31, tzinfo=UTC))
    try:
        made = await claims.create_claim(external_id="c-1", content="before the outage")
        await asyncio.gather(ledger.log_call(**call(1)), ledger.log_call(**call(2)))  # two leased connections
        own_server.stop_server()
        attempts: list[Any] = [
            claims.count,
            lambda: claims.get(made.id),
            lambda: claims.list(limit=5),
            lambda: claims.create_claim(external_id="c-2", content="during the outage"),
            lambda: claims.update(made.id, content="changed"),
            lambda: claims.delete(made.id),
            lambda: ledger.log_call(**call(3)),
            lambda: ledger.log_batch([call(4), call(5)]),
            lambda: ledger.get_stats(*period),
            ledger.fold_rollups,
        ]
        for attempt in attempts:
            with pytest.raises(PersistenceError) as info:
                await attempt()
            assert isinstance(info.value, TransientError) and info.value.retryable, repr(info.value)
            assert stoppable.database is not None and stoppable.database in str(info.value)
        async with transaction():
            with pytest.raises(TransientError):
                await claims.count()
        own_server.start_server()
        # Back without a new engine or logger: the broken connections were discarded.
        assert await claims.count() == 1
        assert await ledger.log_call(**call(3)) > 0
        assert (await ledger.get_stats(*period))["total_calls"] == 3
    finally:
        await ledger.close()
        await engine.dispose()


@pytest.mark.commits
async def test_a_transaction_used_after_its_connection_was_lost_is_transient(
    fresh_database: DatabaseConfig, admin: AsyncEngine
) -> None:
    config = fresh_database.model_copy(update={"pool_size": 1, "max_overflow": 0, "pool_pre_ping": False})
    engine = build_engine(config)
    try:
        async with engine.connect() as conn:
            await conn.begin()
            await conn.execute(text("SELECT 1"))
            await terminate_others(admin)
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectionLostError):
                await conn.execute(text("SELECT 1"))
            with pytest.raises(PendingRollbackError) as info:  # SQLAlchemy's: the block must roll back first
                await conn.execute(text("SELECT 1"))
            err = translate(info.value)
            assert isinstance(err, TransientError) and err.retryable
            await conn.rollback()
        await _select_one(engine)
    finally:
        await engine.dispose()


@pytest.mark.commits
@pytest.mark.parametrize("ending", ["commit", "rollback", "savepoint"])
async def test_a_connection_lost_before_commit_rollback_or_savepoint_is_typed(
    fresh_database: DatabaseConfig, admin: AsyncEngine, ending: str
) -> None:
    config = fresh_database.model_copy(update={"pool_size": 1, "max_overflow": 0, "pool_pre_ping": False})
    engine = build_engine(config)
    try:
        async with engine.connect() as conn:
            await conn.begin()
            await conn.execute(text("INSERT INTO claims (external_id, content) VALUES ('lost', 'x')"))
            await terminate_others(admin)
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectionLostError) as info:
                if ending == "savepoint":
                    await conn.begin_nested()
                else:
                    await getattr(conn, ending)()
            assert_names_server(info.value, config)
        async with engine.connect() as conn:  # the pool hands out a working connection, not the broken one
            assert await conn.scalar(text("SELECT count(*) FROM claims")) == 0
    finally:
        await engine.dispose()


def test_the_callers_own_file_errors_are_not_taken_for_connection_failures(tmp_path: Any) -> None:
    # A block's own code may fail on a file; that must not become a retryable "server unavailable".
    with pytest.raises(FileNotFoundError) as missing:
        (tmp_path / "missing.csv").read_text()
    with pytest.raises(IsADirectoryError) as directory:
        open(tmp_path).close()
    assert translate(missing.value) is None and translate(directory.value) is None


@pytest.mark.commits
async def test_rollup_maintenance_on_a_terminated_connection_is_typed_and_discards_it(
    fresh_database: DatabaseConfig, admin: AsyncEngine
) -> None:
    from persistence.ai_calls.rollups import fold_rollups, rebuild_rollups

    config = fresh_database.model_copy(update={"pool_size": 1, "max_overflow": 0, "pool_pre_ping": False})
    engine = build_engine(config)
    try:
        for run in (
            fold_rollups,
            lambda e: rebuild_rollups(e, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
        ):
            await fill_pool(engine, 1)
            assert await terminate_others(admin) == 1
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectionLostError) as info:
                await run(engine)
            assert_names_server(info.value, config)
            await assert_pool_healthy(engine, 1)  # the dead connection was not put back
    finally:
        await engine.dispose()


async def test_translated_raises_ours_chained_and_leaves_unknown_errors_alone(connection: Any) -> None:
    from persistence.errors import ConflictError

    await connection.execute(text("CREATE TEMP TABLE t_translated (k int PRIMARY KEY)"))
    await connection.execute(text("INSERT INTO t_translated VALUES (1)"))
    with pytest.raises(ConflictError) as caught:
        async with connection.begin_nested():
            with translated():
                await connection.execute(text("INSERT INTO t_translated VALUES (1)"))
    assert caught.value.__cause__ is not None
    assert caught.value.constraint == "t_translated_pkey"
    with pytest.raises(KeyError), translated():
        raise KeyError("not a database error")
    with pytest.raises(ValueError, match="unknown"):
        raise_translated(ValueError("unknown"))
