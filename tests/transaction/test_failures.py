"""A block whose statement failed can never succeed; a failed open leaves nothing half-opened.

Only the API that existed before needs_rollback is used here, so each test runs (and fails) on the
old code too. Real server; tests that need real commits or a second connection are marked `commits`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import (
    ConflictError,
    DatabaseError,
    PersistenceError,
    TransactionError,
    TransientError,
)
from persistence.models import Claim
from persistence.transaction import current_session, on_commit, session_scope, transaction


async def add_claim(engine: AsyncEngine, external_id: str) -> None:
    async with session_scope(engine) as session:
        await session.execute(
            text("INSERT INTO claims (external_id, content) VALUES (:e, 'text')"), {"e": external_id}
        )


async def claims(engine: AsyncEngine) -> set[str]:
    """What another connection sees: only committed rows."""
    async with engine.connect() as conn:
        return set((await conn.scalars(text("SELECT external_id FROM claims"))).all())


class Boom(Exception):
    pass


async def test_swallowed_statement_error_commits_nothing_and_raises_at_exit(engine: AsyncEngine) -> None:
    seen: list[str] = []
    with pytest.raises(TransactionError, match="caught inside the block") as info:
        async with transaction():
            await add_claim(engine, "a")
            on_commit(lambda: seen.append("callback"))
            with pytest.raises(ConflictError) as failed:
                await add_claim(engine, "a")  # 23505; the caller swallows it
            # Later statements are refused with a clear error, not a raw 25P02.
            with pytest.raises(TransactionError, match="an earlier statement in this block failed"):
                await add_claim(engine, "b")
    assert info.value.__cause__ is not None
    assert isinstance(info.value.__cause__, ConflictError)
    assert info.value.__cause__.sqlstate == failed.value.sqlstate == "23505"
    assert await claims(engine) == set()  # the earlier row is not committed either
    assert seen == []


async def test_swallowed_error_in_a_decorated_function_raises_too(engine: AsyncEngine) -> None:
    @transaction
    async def tolerant() -> None:
        await add_claim(engine, "d")
        with contextlib.suppress(ConflictError):
            await add_claim(engine, "d")

    with pytest.raises(TransactionError):
        await tolerant()
    assert await claims(engine) == set()


async def test_statements_run_directly_on_the_session_mark_the_block(engine: AsyncEngine) -> None:
    """No repository involved: the caller's own `session.execute` on `current_session()`."""
    with pytest.raises(TransactionError) as info:
        async with transaction():
            session = await current_session(engine)
            await session.execute(text("INSERT INTO claims (external_id, content) VALUES ('s', 'x')"))
            with pytest.raises(DBAPIError):
                await session.execute(text("SELECT 1/0"))  # 22012
            with pytest.raises(TransactionError, match="an earlier statement in this block failed"):
                await session.execute(text("SELECT 1"))  # the server answers 25P02
    assert isinstance(info.value.__cause__, DatabaseError)
    assert info.value.__cause__.sqlstate == "22012"
    assert await claims(engine) == set()


async def test_flush_failure_never_leaks_pending_rollback_error(engine: AsyncEngine) -> None:
    with pytest.raises(TransactionError):
        async with transaction():
            session = await current_session(engine)
            session.add(Claim(external_id="f", content="x"))
            session.add(Claim(external_id="f", content="y"))
            with pytest.raises(DBAPIError):
                await session.flush()  # 23505; the session's transaction is now unusable
            await session.execute(text("SELECT 1"))  # SQLAlchemy: PendingRollbackError
    with pytest.raises(TransactionError):
        async with transaction():
            session = await current_session(engine)
            session.add(Claim(external_id="g", content="x"))
            session.add(Claim(external_id="g", content="y"))
            with pytest.raises(DBAPIError):
                await session.flush()
    assert await claims(engine) == set()


async def test_failure_caught_inside_a_nested_block_loses_only_that_block(engine: AsyncEngine) -> None:
    seen: list[str] = []
    async with transaction():
        await add_claim(engine, "outer")
        on_commit(lambda: seen.append("outer"))
        with pytest.raises(TransactionError, match="savepoint was rolled back") as info:
            async with transaction():
                await add_claim(engine, "inner")
                on_commit(lambda: seen.append("inner"))
                with pytest.raises(ConflictError):
                    await add_claim(engine, "outer")
        assert isinstance(info.value.__cause__, ConflictError)
        await add_claim(engine, "after")  # the outer block goes on
        # Catching around a nested block stays the way to go on after a failure.
        with pytest.raises(ConflictError):
            async with transaction():
                await add_claim(engine, "after")
        await add_claim(engine, "last")
    assert await claims(engine) == {"outer", "after", "last"}
    assert seen == ["outer"]


async def test_nested_block_entered_in_a_failed_block_is_refused(engine: AsyncEngine) -> None:
    with pytest.raises(TransactionError, match="caught inside the block"):
        async with transaction():
            await add_claim(engine, "n")
            with pytest.raises(ConflictError):
                await add_claim(engine, "n")
            with pytest.raises(TransactionError, match="an earlier statement in this block failed"):
                async with transaction():
                    pass
    assert await claims(engine) == set()


async def _allow_connections(admin: AsyncEngine, database: str, allow: bool) -> None:
    async with admin.connect() as conn:
        # A utility statement cannot take bound parameters: the name is quoted server-side.
        await conn.execute(text("SELECT set_config('persistence.test_db', :db, false)"), {"db": database})
        await conn.execute(
            text(
                "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I ALLOW_CONNECTIONS "
                + ("true" if allow else "false")
                + "', current_setting('persistence.test_db')); END $$"
            )
        )
        await conn.commit()


@pytest_asyncio.fixture(loop_scope="session")
async def refusing(fresh_database: DatabaseConfig) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine, str]]:
    """An engine with no open connection, for a database that refuses new ones (55000) until the
    admin engine (on the `postgres` database) allows them again."""
    assert fresh_database.database is not None
    admin = build_engine(fresh_database.model_copy(update={"database": "postgres"}))
    blocked = build_engine(fresh_database)
    await _allow_connections(admin, fresh_database.database, False)
    try:
        yield admin, blocked, fresh_database.database
    finally:
        await _allow_connections(admin, fresh_database.database, True)
        await blocked.dispose()
        await admin.dispose()


@pytest.mark.commits
async def test_failed_open_then_retry_keeps_read_only_and_isolation(
    engine: AsyncEngine, refusing: tuple[AsyncEngine, AsyncEngine, str]
) -> None:
    admin, blocked, database = refusing
    with pytest.raises(DatabaseError) as info:
        async with transaction(read_only=True, isolation_level="SERIALIZABLE"):
            with pytest.raises(PersistenceError):  # the database refuses the connection
                await add_claim(blocked, "first try")
            await _allow_connections(admin, database, True)
            session = await current_session(blocked)  # the retry opens the block again
            assert await session.scalar(text("SHOW transaction_read_only")) == "on"
            assert await session.scalar(text("SHOW transaction_isolation")) == "serializable"
            await add_claim(blocked, "second try")
    assert info.value.sqlstate == "25006"  # read-only transaction
    assert await claims(engine) == set()


@pytest.mark.commits
async def test_failed_open_then_retry_still_creates_the_entered_savepoints(
    engine: AsyncEngine, refusing: tuple[AsyncEngine, AsyncEngine, str]
) -> None:
    admin, blocked, database = refusing
    async with transaction():
        with pytest.raises(Boom):
            async with transaction():
                with pytest.raises(PersistenceError):
                    await add_claim(blocked, "refused")
                await _allow_connections(admin, database, True)
                await add_claim(blocked, "inner")  # opens the transaction and the nested savepoint
                raise Boom
        await add_claim(blocked, "outer")
    assert await claims(engine) == {"outer"}


@pytest.mark.commits
async def test_unreachable_server_on_open_is_a_persistence_error(fresh_database: DatabaseConfig) -> None:
    """Nothing listens there: the raw OS error must not leave the block's open."""
    nowhere = build_engine(fresh_database.model_copy(update={"port": 1}))
    try:
        with pytest.raises(PersistenceError):
            async with transaction():
                await add_claim(nowhere, "x")
    finally:
        await nowhere.dispose()


async def test_flush_failure_caught_inside_a_nested_block(engine: AsyncEngine) -> None:
    async with transaction():
        await add_claim(engine, "outer")
        with pytest.raises(TransactionError, match="savepoint was rolled back"):
            async with transaction():
                session = await current_session(engine)
                session.add(Claim(external_id="outer", content="duplicate"))
                with pytest.raises(DBAPIError):
                    await session.flush()  # 23505: SQLAlchemy rolls the savepoint back
        await add_claim(engine, "after")
    assert await claims(engine) == {"outer", "after"}


@pytest_asyncio.fixture(loop_scope="session")
async def unpinged(fresh_database: DatabaseConfig) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """An admin engine (on `postgres`) and a one-connection engine that does not ping on checkout,
    so a terminated pooled connection reaches the block's first statement."""
    admin = build_engine(fresh_database.model_copy(update={"database": "postgres"}))
    eng = build_engine(
        fresh_database.model_copy(update={"pool_pre_ping": False, "pool_size": 1, "max_overflow": 0})
    )
    yield admin, eng
    await eng.dispose()
    await admin.dispose()


async def _terminate(admin: AsyncEngine, pid: int) -> None:
    async with admin.connect() as conn:
        # With a timeout, pg_terminate_backend returns once the backend has exited.
        assert await conn.scalar(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})


async def _backend_pid(engine: AsyncEngine) -> int:
    async with session_scope(engine) as session:
        return int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)


@pytest.mark.commits
async def test_connection_lost_on_the_first_statement_then_retry_keeps_read_only(
    engine: AsyncEngine, unpinged: tuple[AsyncEngine, AsyncEngine]
) -> None:
    admin, eng = unpinged
    await _terminate(admin, await _backend_pid(eng))  # the pool's only connection is now dead
    with pytest.raises(DatabaseError) as info:
        async with transaction(read_only=True, isolation_level="SERIALIZABLE"):
            with pytest.raises(TransientError):
                await _backend_pid(eng)  # the block's first statement: the connection is gone
            async with session_scope(eng) as session:  # the retry opens the block again
                assert await session.scalar(text("SHOW transaction_read_only")) == "on"
                assert await session.scalar(text("SHOW transaction_isolation")) == "serializable"
            await add_claim(eng, "written by a read-only block")
    assert info.value.sqlstate == "25006"
    assert await claims(engine) == set()


@pytest.mark.commits
async def test_connection_lost_after_work_fails_the_block(
    engine: AsyncEngine, unpinged: tuple[AsyncEngine, AsyncEngine]
) -> None:
    admin, eng = unpinged
    with pytest.raises(TransactionError, match="caught inside the block"):
        async with transaction():
            await add_claim(eng, "before")
            await _terminate(admin, await _backend_pid(eng))
            with pytest.raises(TransientError):
                await add_claim(eng, "lost")
            with pytest.raises(TransactionError, match="an earlier statement in this block failed"):
                await add_claim(eng, "retried")
    assert await claims(engine) == set()
