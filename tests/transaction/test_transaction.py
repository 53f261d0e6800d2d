"""Every transaction rule, against a real server (savepoints under the isolating `engine`; real commits where marked)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import ConflictError, DatabaseError, TransactionError, TransientError
from persistence.transaction import current_session, in_transaction, on_commit, session_scope, transaction
from tests.logs import capture_logs


@pytest_asyncio.fixture(loop_scope="session")
async def engine(engine: AsyncEngine) -> AsyncEngine:
    """The plugin's engine, with a `counters` table (rolled back with the test, or in its own database)."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE counters (id int PRIMARY KEY, v int NOT NULL)"))
        await conn.execute(text("INSERT INTO counters VALUES (1, 0), (2, 0)"))
    return engine


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


@pytest.mark.commits
async def test_outermost_block_commits_everything_together(engine: AsyncEngine) -> None:
    async with transaction():
        await add_claim(engine, "a")
        await add_claim(engine, "b")
        assert await claims(engine) == set()  # not visible to others before the commit
    assert await claims(engine) == {"a", "b"}


async def test_exception_rolls_back_the_whole_block(engine: AsyncEngine) -> None:
    with pytest.raises(Boom):
        async with transaction():
            await add_claim(engine, "a")
            raise Boom
    assert await claims(engine) == set()


async def test_decorator_forms_on_functions_and_methods(engine: AsyncEngine) -> None:
    @transaction
    async def plain(name: str) -> str:
        await add_claim(engine, name)
        return name

    class Service:
        @transaction(isolation_level="SERIALIZABLE")
        async def method(self, name: str) -> str:
            await add_claim(engine, name)
            return name

    assert await plain("p") == "p"
    assert await Service().method("m") == "m"
    assert await claims(engine) == {"p", "m"}


async def test_failing_nested_block_rolls_back_only_itself(engine: AsyncEngine) -> None:
    async with transaction():
        await add_claim(engine, "outer-1")
        with pytest.raises(Boom):
            async with transaction():
                await add_claim(engine, "inner")
                raise Boom
        await add_claim(engine, "outer-2")
    assert await claims(engine) == {"outer-1", "outer-2"}


async def test_nested_blocks_opened_before_the_first_query_still_get_savepoints(engine: AsyncEngine) -> None:
    async with transaction():
        async with transaction():
            with pytest.raises(Boom):
                async with transaction():
                    await add_claim(engine, "deep")  # first query: opens outer txn + two savepoints
                    raise Boom
            await add_claim(engine, "middle")
        await add_claim(engine, "outer")
    assert await claims(engine) == {"middle", "outer"}


async def test_database_error_in_nested_block_keeps_outer_block_usable(engine: AsyncEngine) -> None:
    async with transaction():
        await add_claim(engine, "dup")
        with pytest.raises(ConflictError) as info:
            async with transaction():
                await add_claim(engine, "dup")
        assert info.value.constraint == "uq_claims_external_id"
        await add_claim(engine, "after")
    assert await claims(engine) == {"dup", "after"}


async def test_durable_refuses_to_nest(engine: AsyncEngine) -> None:
    async with transaction(durable=True):
        await add_claim(engine, "durable")
    with pytest.raises(TransactionError, match="durable"):
        async with transaction():
            await add_claim(engine, "outer")
            async with transaction(durable=True):
                await add_claim(engine, "never")
    assert await claims(engine) == {"durable"}


async def test_read_only_block_refuses_writes(engine: AsyncEngine) -> None:
    async with transaction(read_only=True), session_scope(engine) as session:
        assert await session.scalar(text("SHOW transaction_read_only")) == "on"
    with pytest.raises(DatabaseError) as info:
        async with transaction(read_only=True):
            await add_claim(engine, "nope")
    assert info.value.sqlstate == "25006"
    assert await claims(engine) == set()


async def test_nested_block_cannot_change_read_only_or_isolation(engine: AsyncEngine) -> None:
    async with transaction():
        with pytest.raises(TransactionError, match="read_only"):
            async with transaction(read_only=True):
                pass
        with pytest.raises(TransactionError, match="isolation_level"):
            async with transaction(isolation_level="SERIALIZABLE"):
                pass


@pytest.mark.commits
async def test_isolation_level_is_applied(engine: AsyncEngine) -> None:
    async with transaction(isolation_level="SERIALIZABLE"):
        session = await current_session(engine)
        assert await session.scalar(text("SHOW transaction_isolation")) == "serializable"
    async with transaction(), session_scope(engine) as session:
        assert await session.scalar(text("SHOW transaction_isolation")) == "read committed"


async def test_on_commit_runs_after_commit_in_order_sync_and_async(engine: AsyncEngine) -> None:
    seen: list[str] = []

    async def async_cb() -> None:
        seen.append(f"async saw {sorted(await claims(engine))}")

    async with transaction():
        await add_claim(engine, "x")
        await on_commit(lambda: seen.append("first"))
        await on_commit(async_cb)
        async with transaction():
            await on_commit(lambda: seen.append("from released savepoint"))
        assert seen == []
    assert seen == ["first", "async saw ['x']", "from released savepoint"]


async def test_on_commit_dropped_with_rolled_back_savepoint_and_outer_rollback(engine: AsyncEngine) -> None:
    seen: list[str] = []
    async with transaction():
        await add_claim(engine, "kept")
        with pytest.raises(Boom):
            async with transaction():
                await on_commit(lambda: seen.append("dropped"))
                raise Boom
        await on_commit(lambda: seen.append("kept"))
    assert seen == ["kept"]

    with pytest.raises(Boom):
        async with transaction():
            await on_commit(lambda: seen.append("never"))
            raise Boom
    assert seen == ["kept"]


async def test_on_commit_outside_a_block_runs_now_and_robust_callbacks_do_not_stop_others() -> None:
    seen: list[str] = []
    await on_commit(lambda: seen.append("now"))
    assert seen == ["now"]

    def broken() -> None:
        raise RuntimeError("callback bug")

    with capture_logs() as logs:
        async with transaction():
            await on_commit(broken, robust=True)
            await on_commit(lambda: seen.append("still runs"))
    assert seen == ["now", "still runs"]
    [logged] = [entry for entry in logs if entry["event"] == "on_commit callback failed"]
    assert logged["log_level"] == "error"
    assert "broken" in logged["callback"]


async def test_on_commit_needs_no_await_as_in_django(engine: AsyncEngine) -> None:
    seen: list[str] = []

    async def later() -> None:
        await asyncio.sleep(0)
        seen.append("async, outside")

    async with transaction():
        await add_claim(engine, "y")
        on_commit(lambda: seen.append("registered without await"))
        assert seen == []
    assert seen == ["registered without await"]

    on_commit(lambda: seen.append("sync, outside: at once"))
    assert seen[-1] == "sync, outside: at once"
    await on_commit(later)  # awaiting waits for an async callback run outside a block
    assert seen[-1] == "async, outside"


async def bump(engine: AsyncEngine, row: int) -> None:
    """Read-then-write of one counter inside the current block."""
    async with session_scope(engine) as session:
        await session.execute(text("UPDATE counters SET v = v + 1 WHERE id = :id"), {"id": row})


async def concurrent_serializable_bump(engine: AsyncEngine, row: int) -> None:
    """Another SERIALIZABLE transaction that commits a change to `row`."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="SERIALIZABLE")
        async with conn.begin():
            await conn.execute(text("UPDATE counters SET v = v + 100 WHERE id = :id"), {"id": row})


async def counter(engine: AsyncEngine, row: int) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT v FROM counters WHERE id = :id"), {"id": row}) or 0)


@pytest.mark.commits
async def test_retries_recover_from_a_real_serialization_failure(engine: AsyncEngine) -> None:
    attempts = 0

    @transaction(isolation_level="SERIALIZABLE", retries=3)
    async def work() -> None:
        nonlocal attempts
        attempts += 1
        async with session_scope(engine) as session:
            await session.execute(text("SELECT v FROM counters WHERE id = 1"))  # takes the snapshot
        if attempts == 1:
            await concurrent_serializable_bump(engine, 1)  # commits under our feet
        await bump(engine, 1)  # 40001: could not serialize access due to concurrent update

    await work()
    assert attempts == 2
    assert await counter(engine, 1) == 101


@pytest.mark.commits
async def test_retries_recover_from_a_real_deadlock(engine: AsyncEngine) -> None:
    """Two blocks lock rows 1 and 2 in opposite orders; PostgreSQL aborts one (40P01), it re-runs."""
    holding = {1: asyncio.Event(), 2: asyncio.Event()}
    attempts = {1: 0, 2: 0}

    def worker(first: int, second: int) -> Callable[[], Coroutine[Any, Any, None]]:
        @transaction(retries=2)
        async def work() -> None:
            attempts[first] += 1
            await bump(engine, first)
            if attempts[first] == 1:  # only the first attempt waits: the retry must not deadlock again
                holding[first].set()
                await holding[second].wait()
            await bump(engine, second)

        return work

    await asyncio.gather(worker(1, 2)(), worker(2, 1)())
    assert sorted(attempts.values()) == [1, 2]  # exactly one victim, retried once
    assert await counter(engine, 1) == 2 and await counter(engine, 2) == 2


@pytest.mark.commits
async def test_retries_give_up_after_n_with_transient_error(engine: AsyncEngine) -> None:
    attempts = 0

    @transaction(isolation_level="SERIALIZABLE", retries=2)
    async def always_conflicts() -> None:
        nonlocal attempts
        attempts += 1
        async with session_scope(engine) as session:
            await session.execute(text("SELECT v FROM counters WHERE id = 1"))
        await concurrent_serializable_bump(engine, 1)
        await bump(engine, 1)

    with pytest.raises(TransientError) as info:
        await always_conflicts()
    assert info.value.sqlstate == "40001"
    assert info.value.retryable
    assert attempts == 3  # the first try and 2 retries
    assert await counter(engine, 1) == 300  # only the concurrent transactions committed


@pytest.mark.commits
async def test_write_skew_between_two_serializable_blocks_is_retried(engine: AsyncEngine) -> None:
    both_read = asyncio.Barrier(2)
    attempts = {1: 0, 2: 0}

    @transaction(isolation_level="SERIALIZABLE", retries=5)
    async def move(row: int) -> None:
        attempts[row] += 1
        async with session_scope(engine) as session:
            total = await session.scalar(text("SELECT sum(v) FROM counters"))
        if attempts[row] == 1:
            await both_read.wait()  # both transactions have read before either writes
        async with session_scope(engine) as session:
            await session.execute(
                text("UPDATE counters SET v = :t + 1 WHERE id = :id"), {"t": total, "id": row}
            )

    await asyncio.gather(move(1), move(2))
    assert sum(attempts.values()) == 3  # exactly one of them was retried
    assert sorted([await counter(engine, 1), await counter(engine, 2)]) == [1, 2]  # serial outcome


async def test_nested_block_is_never_retried_alone_and_other_errors_never(engine: AsyncEngine) -> None:
    calls = {"nested": 0, "conflict": 0}

    @transaction(retries=5)
    async def nested() -> None:
        calls["nested"] += 1
        raise TransientError("simulated", sqlstate="40001")

    with pytest.raises(TransientError):
        async with transaction():
            await nested()
    assert calls["nested"] == 1

    @transaction(retries=5)
    async def conflict() -> None:
        calls["conflict"] += 1
        await add_claim(engine, "same")
        await add_claim(engine, "same")

    with pytest.raises(ConflictError):
        await conflict()
    assert calls["conflict"] == 1


@pytest.mark.commits
async def test_child_task_cannot_use_the_parents_block(engine: AsyncEngine) -> None:
    async with transaction():
        await add_claim(engine, "parent")
        with pytest.raises(TransactionError, match="another asyncio task"):
            await asyncio.create_task(add_claim(engine, "child"))
        with pytest.raises(TransactionError, match="another asyncio task"):
            await asyncio.create_task(_nested_block())
        # A child given a fresh context opens an independent transaction of its own.
        await asyncio.create_task(add_claim(engine, "independent"), context=contextvars.Context())
    assert await claims(engine) == {"parent", "independent"}


async def _nested_block() -> None:
    async with transaction():
        pass


async def test_concurrent_tasks_outside_blocks_each_get_their_own_transaction(engine: AsyncEngine) -> None:
    await asyncio.gather(*(add_claim(engine, f"c{i}") for i in range(20)))
    assert len(await claims(engine)) == 20


@pytest.mark.commits
async def test_misuse_is_a_clear_error(engine: AsyncEngine, fresh_database: DatabaseConfig) -> None:
    with pytest.raises(TransactionError, match="decorator form"):
        async with transaction(retries=2):
            pass
    with pytest.raises(TypeError, match="async function"):
        transaction(lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TransactionError, match="needs an active transaction"):
        await current_session(engine)
    other = build_engine(fresh_database)
    try:
        with pytest.raises(TransactionError, match="two engines"):
            async with transaction():
                await add_claim(engine, "one")
                await add_claim(other, "two")
    finally:
        await other.dispose()
    assert not in_transaction()


def test_retries_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="retries"):
        transaction(retries=-1)
    bad: Any = "DIRTY READ"
    with pytest.raises(ValueError, match="isolation_level"):
        transaction(isolation_level=bad)


async def test_on_commit_error_after_commit_never_reruns_a_retried_block(engine: AsyncEngine) -> None:
    """A retryable error raised by an on_commit callback comes after the commit: the block must not run again."""
    attempts = 0
    callbacks = 0

    def notify() -> None:
        nonlocal callbacks
        callbacks += 1
        raise TransientError("the broker is away", sqlstate="40001")

    @transaction(retries=3)
    async def work() -> None:
        nonlocal attempts
        attempts += 1
        await bump(engine, 1)
        await on_commit(notify)

    with pytest.raises(TransientError, match="broker"):
        await work()
    assert attempts == 1
    assert callbacks == 1
    assert await counter(engine, 1) == 1  # committed exactly once
