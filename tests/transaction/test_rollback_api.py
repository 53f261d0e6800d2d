"""Django's remaining surface: set_rollback/get_rollback, savepoint=False, on_commit checks, any async callable."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import get_rollback, set_rollback
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import ConflictError, TransactionError
from persistence.transaction import on_commit, session_scope, transaction
from tests.observe.recorder import Recorder

pytestmark = pytest.mark.commits


@pytest_asyncio.fixture(loop_scope="session")
async def recorded(fresh_database: DatabaseConfig) -> AsyncIterator[tuple[AsyncEngine, Recorder]]:
    recorder = Recorder()
    eng = build_engine(fresh_database, hooks=[recorder])
    yield eng, recorder
    await eng.dispose()


@pytest.fixture
def engine(recorded: tuple[AsyncEngine, Recorder]) -> AsyncEngine:
    return recorded[0]


async def add_claim(engine: AsyncEngine, external_id: str) -> None:
    async with session_scope(engine) as session:
        await session.execute(
            text("INSERT INTO claims (external_id, content) VALUES (:e, 'text')"), {"e": external_id}
        )


async def claims(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.scalars(text("SELECT external_id FROM claims"))).all())


class Boom(Exception):
    pass


async def test_set_rollback_rolls_the_block_back_without_an_exception(
    recorded: tuple[AsyncEngine, Recorder],
) -> None:
    engine, rec = recorded
    seen: list[str] = []
    async with transaction():
        await add_claim(engine, "a")
        on_commit(lambda: seen.append("never"))
        assert not get_rollback()
        set_rollback(True)
        assert get_rollback()
        with pytest.raises(TransactionError, match=r"set_rollback\(True\)"):
            await add_claim(engine, "b")
    assert await claims(engine) == set()
    assert seen == []
    assert [(t.outcome, t.depth) for t in rec.transactions] == [("rollback", 0)]

    async with transaction():
        await add_claim(engine, "c")
        set_rollback(True)
        set_rollback(False)  # withdrawn: the block commits
        assert not get_rollback()
    assert await claims(engine) == {"c"}


async def test_set_rollback_in_a_nested_block_undoes_only_its_savepoint(engine: AsyncEngine) -> None:
    seen: list[str] = []
    async with transaction():
        await add_claim(engine, "outer")
        async with transaction():
            await add_claim(engine, "inner")
            on_commit(lambda: seen.append("inner"))
            set_rollback(True)
        assert not get_rollback()
        await add_claim(engine, "after")
    assert await claims(engine) == {"outer", "after"}
    assert seen == []


async def test_get_rollback_reports_a_failed_statement_and_it_cannot_be_unmarked(engine: AsyncEngine) -> None:
    with pytest.raises(TransactionError, match="caught inside the block"):
        async with transaction():
            await add_claim(engine, "x")
            with pytest.raises(ConflictError):
                await add_claim(engine, "x")
            assert get_rollback()
            with pytest.raises(TransactionError, match="cannot un-mark"):
                set_rollback(False)
    with pytest.raises(TransactionError, match="active transaction block"):
        get_rollback()
    with pytest.raises(TransactionError, match="active transaction block"):
        set_rollback(True)


async def test_savepoint_false_merges_into_the_parent(recorded: tuple[AsyncEngine, Recorder]) -> None:
    engine, rec = recorded
    seen: list[str] = []
    async with transaction():
        await add_claim(engine, "outer")
        async with transaction(savepoint=False):
            await add_claim(engine, "merged")
            on_commit(lambda: seen.append("merged"))
    assert await claims(engine) == {"outer", "merged"}
    assert seen == ["merged"]
    assert [t.depth for t in rec.starts] == [0]  # no savepoint was created


async def test_exception_leaving_a_savepoint_false_block_marks_the_parent(engine: AsyncEngine) -> None:
    seen: list[str] = []
    with pytest.raises(TransactionError) as info:
        async with transaction():
            await add_claim(engine, "outer")
            on_commit(lambda: seen.append("outer"))
            with pytest.raises(Boom):
                async with transaction(savepoint=False):
                    await add_claim(engine, "merged")
                    raise Boom
            assert get_rollback()
            with pytest.raises(TransactionError, match="an earlier statement in this block failed"):
                await add_claim(engine, "after")
    assert isinstance(info.value.__cause__, Boom)
    assert await claims(engine) == set()
    assert seen == []


async def test_failure_in_a_savepoint_false_block_inside_a_savepoint_marks_that_savepoint(
    engine: AsyncEngine,
) -> None:
    async with transaction():
        await add_claim(engine, "kept")
        with pytest.raises(TransactionError, match="savepoint was rolled back"):
            async with transaction():
                await add_claim(engine, "undone")
                async with transaction(savepoint=False):
                    with pytest.raises(ConflictError):
                        await add_claim(engine, "kept")
                assert get_rollback()
        await add_claim(engine, "after")
    assert await claims(engine) == {"kept", "after"}


async def test_on_commit_refuses_a_non_callable_at_registration(engine: AsyncEngine) -> None:
    not_callable: object = "send_email"
    async with transaction():
        await add_claim(engine, "t")
        with pytest.raises(TypeError, match="callable"):
            on_commit(not_callable)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        on_commit(not_callable)  # type: ignore[arg-type]
    assert await claims(engine) == {"t"}


class Handler:
    """A callable instance whose `__call__` is async."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def __call__(self, name: str) -> str:
        await add_claim(self.engine, name)
        return name


async def test_decorator_accepts_any_async_callable(engine: AsyncEngine) -> None:
    assert await transaction(Handler(engine))("instance") == "instance"
    assert await transaction(retries=1)(functools.partial(Handler(engine), "partial"))() == "partial"

    class Sync:
        def __call__(self) -> None:
            pass

    with pytest.raises(TypeError, match="async"):
        transaction(Sync())  # type: ignore[arg-type]
    assert await claims(engine) == {"instance", "partial"}


async def test_a_swallowed_failure_is_reported_as_failed_not_commit(
    recorded: tuple[AsyncEngine, Recorder],
) -> None:
    engine, rec = recorded
    with pytest.raises(TransactionError):
        async with transaction():
            await add_claim(engine, "r")
            with pytest.raises(ConflictError):
                await add_claim(engine, "r")
    assert [(t.outcome, t.depth, t.sqlstate) for t in rec.transactions] == [("failed", 0, "23505")]
