"""create_database_engine: a checked, pooled engine, and clear errors that never carry the password."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence import DatabaseConfig, DatabaseConnectionError, create_database_engine
from persistence.engine import build_engine
from persistence.models import VerificationResult
from persistence.testing import ThrowawayPostgres

PASSWORD = "Tr0ub4dor&3-horse"


@pytest.fixture(scope="module")
def app_role(pg: ThrowawayPostgres) -> str:
    """A password-protected role and its database, reached over TCP (scram-sha-256)."""
    pg.create_role("engine_app", PASSWORD, database="engine_app")
    return "engine_app"


def tcp_config(pg: ThrowawayPostgres, **overrides: object) -> DatabaseConfig:
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": pg.port,
        "database": "engine_app",
        "user": "engine_app",
        "password": PASSWORD,
        **overrides,
    }
    return DatabaseConfig.model_validate(fields)


@pytest_asyncio.fixture(loop_scope="session")
async def app_engine(pg: ThrowawayPostgres, app_role: str) -> AsyncIterator[AsyncEngine]:
    engine = await create_database_engine(
        tcp_config(pg, pool_size=3, max_overflow=2, statement_timeout_ms=1500, application_name="engine-test")
    )
    yield engine
    await engine.dispose()


async def test_engine_connects_with_pool_and_session_settings(app_engine: AsyncEngine) -> None:
    async with app_engine.connect() as conn:
        assert await conn.scalar(text("SELECT current_user")) == "engine_app"
        assert await conn.scalar(text("SHOW statement_timeout")) == "1500ms"
        assert await conn.scalar(text("SHOW application_name")) == "engine-test"
    assert app_engine.pool.size() == 3  # type: ignore[attr-defined]


async def test_statement_timeout_is_enforced(app_engine: AsyncEngine) -> None:
    async with app_engine.connect() as conn:
        with pytest.raises(Exception, match="statement timeout"):
            await conn.execute(text("SELECT pg_sleep(3)"))


async def test_pool_serves_concurrent_work_up_to_its_size(app_engine: AsyncEngine) -> None:
    async def backend_pid() -> int:
        async with app_engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(0.2)"))
            return int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0)

    pids = await asyncio.gather(*(backend_pid() for _ in range(5)))
    assert len(set(pids)) == 5  # pool_size 3 + max_overflow 2


def assert_clear(err: DatabaseConnectionError, config: DatabaseConfig) -> None:
    message = str(err)
    assert PASSWORD not in message and PASSWORD not in repr(err)
    assert f"{config.host}:{config.port}/{config.database}" in message
    assert err.__cause__ is not None  # the driver's exception stays chained


async def test_wrong_password_is_a_clear_error(pg: ThrowawayPostgres, app_role: str) -> None:
    config = tcp_config(pg, password=PASSWORD + "-wrong")
    with pytest.raises(DatabaseConnectionError) as info:
        await create_database_engine(config)
    assert info.value.sqlstate == "28P01"
    assert not info.value.retryable
    assert "password authentication failed" in str(info.value)
    assert PASSWORD + "-wrong" not in str(info.value)
    assert_clear(info.value, config)


async def test_unknown_database_is_a_clear_error(pg: ThrowawayPostgres, app_role: str) -> None:
    config = tcp_config(pg, database="no_such_db")
    with pytest.raises(DatabaseConnectionError) as info:
        await create_database_engine(config)
    assert info.value.sqlstate == "3D000"
    assert "does not exist" in str(info.value)
    assert_clear(info.value, config)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_server_is_a_clear_retryable_error(closed_port: int) -> None:
    config = DatabaseConfig(host="127.0.0.1", port=closed_port, database="x", user="u", password=PASSWORD)
    with pytest.raises(DatabaseConnectionError) as info:
        await create_database_engine(config)
    assert "connection refused" in str(info.value)
    assert info.value.retryable
    assert_clear(info.value, config)


async def test_unresolvable_host_is_a_clear_error() -> None:
    config = DatabaseConfig(host="db.does-not-exist.invalid", database="x", user="u", password=PASSWORD)
    with pytest.raises(DatabaseConnectionError) as info:
        await create_database_engine(config)
    assert "cannot resolve host name" in str(info.value)
    assert_clear(info.value, config)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts TCP connections but never speaks PostgreSQL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


async def test_server_that_never_answers_times_out(silent_listener: int) -> None:
    config = DatabaseConfig(
        host="127.0.0.1", port=silent_listener, database="x", user="u", password=PASSWORD, connect_timeout=0.5
    )
    with pytest.raises(DatabaseConnectionError) as info:
        await create_database_engine(config)
    assert "timed out after 0.5s" in str(info.value)
    assert info.value.retryable
    assert_clear(info.value, config)


async def test_jsonb_takes_common_python_values(session: AsyncSession) -> None:
    when = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    ident = uuid.uuid4()
    row = VerificationResult(
        claim_id="c",
        framework="empirical",
        confidence=0.5,
        result={"at": when, "id": ident, "cost": Decimal("0.000123"), "tags": {"b"}},
        evidence={"sources": [...]},  # the placeholder style of the seed documents
    )
    session.add(row)
    await session.flush()
    stored = await session.scalar(
        text("SELECT result::text || evidence::text FROM verification_results WHERE id = :id"), {"id": row.id}
    )
    assert stored == (
        f'{{"at": "2026-11-23T12:00:00+00:00", "id": "{ident}", "cost": "0.000123", "tags": ["b"]}}'
        '{"sources": ["..."]}'
    )


async def test_jsonb_refuses_nan(session: AsyncSession) -> None:
    session.add(VerificationResult(claim_id="c", framework="f", confidence=0.5, result={"x": float("nan")}))
    with pytest.raises(StatementError):
        await session.flush()


async def test_bound_parameters_never_reach_exception_text(db_config: DatabaseConfig) -> None:
    secret = "parameter-value-that-must-not-be-logged"
    engine = build_engine(db_config)
    insert = text("INSERT INTO claims (external_id, content) VALUES (:external_id, :content)")
    try:
        async with engine.connect() as conn:
            await conn.execute(insert, {"external_id": "dup-1", "content": secret})
            with pytest.raises(DBAPIError) as info:
                await conn.execute(insert, {"external_id": "dup-1", "content": secret})
            await conn.rollback()
    finally:
        await engine.dispose()
    assert "SQL parameters hidden due to hide_parameters=True" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value)
