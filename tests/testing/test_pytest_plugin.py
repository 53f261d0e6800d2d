"""The pytest plugin's own promises: rolled-back isolation, and real commits in a private database."""

from __future__ import annotations

import asyncio
import contextvars
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence import (
    AICallLogger,
    ClaimRepository,
    ConflictError,
    PersistenceError,
    Quotas,
    TransactionError,
    ValidationError,
    audit_context,
    pinning,
)
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.models import Claim
from persistence.testing.factories import ClaimFactory, create, create_batch
from persistence.transaction import on_commit, transaction

MARKER_ID = "plugin-isolation-probe"


@pytest.mark.parametrize("attempt", [1, 2])
async def test_each_test_starts_clean_even_after_a_commit(session: AsyncSession, attempt: int) -> None:
    # Both runs see zero rows: the first run's commit was only a savepoint inside the outer transaction.
    assert await session.scalar(select(func.count()).where(Claim.external_id == MARKER_ID)) == 0
    session.add(Claim(external_id=MARKER_ID, content=f"attempt {attempt}"))
    await session.commit()
    assert await session.scalar(select(func.count()).where(Claim.external_id == MARKER_ID)) == 1


@pytest.mark.commits
async def test_commits_marker_gives_a_private_migrated_database(
    request: pytest.FixtureRequest,
) -> None:
    assert "fresh_database" in request.fixturenames  # applied by the marker alone
    config: DatabaseConfig = request.getfixturevalue("fresh_database")
    assert config.database is not None and config.database.startswith("persistence_clone_")
    writer, reader = build_engine(config), build_engine(config)
    try:
        async with writer.begin() as conn:
            await conn.execute(text("INSERT INTO claims (external_id, content) VALUES ('committed', 'x')"))
        async with reader.connect() as conn:  # another connection sees the committed row
            assert await conn.scalar(text("SELECT count(*) FROM claims WHERE external_id = 'committed'")) == 1
    finally:
        await writer.dispose()
        await reader.dispose()


async def test_shared_database_saw_no_commit_from_marked_tests(session: AsyncSession) -> None:
    assert await session.scalar(select(func.count()).where(Claim.external_id == "committed")) == 0


# -- the isolating `engine` fixture -------------------------------------------------------------------------

PROBE = "engine-isolation-probe"


async def committed_count(shared_engine: AsyncEngine, sql: str) -> int:
    """What another, real connection sees: only what was really committed."""
    async with shared_engine.connect() as other:
        return int(await other.scalar(text(sql)) or 0)


@pytest.mark.parametrize("attempt", [1, 2])
async def test_repository_rows_stay_inside_the_test(
    engine: AsyncEngine, shared_engine: AsyncEngine, attempt: int
) -> None:
    claims = ClaimRepository(engine)
    assert await claims.count(external_id=PROBE) == 0  # the other attempt's row was rolled back
    with audit_context(user_id="tester"):
        claim = await claims.create_claim(external_id=PROBE, content=f"attempt {attempt}")
    assert await claims.count(external_id=PROBE) == 1
    async with engine.connect() as conn:  # the audit row was written in the same statement
        audited = await conn.scalar(
            text("SELECT count(*) FROM audit_log WHERE entity_type = 'claim' AND entity_id = :id"),
            {"id": str(claim.id)},
        )
    assert audited == 1
    sql = f"SELECT count(*) FROM claims WHERE external_id = '{PROBE}'"
    assert await committed_count(shared_engine, sql) == 0


async def test_transaction_blocks_are_savepoints(engine: AsyncEngine, shared_engine: AsyncEngine) -> None:
    claims = ClaimRepository(engine)
    async with transaction():
        await claims.create_claim(external_id=f"{PROBE}-kept", content="kept")
        with pytest.raises(RuntimeError):
            async with transaction():
                await claims.create_claim(external_id=f"{PROBE}-dropped", content="dropped")
                raise RuntimeError("undo the inner block only")
    assert await claims.count(external_id=f"{PROBE}-kept") == 1
    assert await claims.count(external_id=f"{PROBE}-dropped") == 0
    sql = f"SELECT count(*) FROM claims WHERE external_id LIKE '{PROBE}%'"
    assert await committed_count(shared_engine, sql) == 0


async def test_a_failed_statement_rolls_back_only_its_block(engine: AsyncEngine) -> None:
    claims = ClaimRepository(engine)
    await claims.create_claim(external_id=f"{PROBE}-first", content="x")
    with pytest.raises(ConflictError):
        await claims.create_claim(external_id=f"{PROBE}-first", content="duplicate")
    # The test's transaction goes on: the failed statement ran in its own savepoint.
    assert await claims.count(external_id=f"{PROBE}-first") == 1


async def test_a_failed_statement_on_the_driver_connection_keeps_its_own_error(engine: AsyncEngine) -> None:
    """Code on the raw asyncpg connection (the ledger's leases, quotas, rate limits) sees the same
    error as outside a test, and the test's connection stays usable after it."""
    quotas = Quotas(engine)
    with pytest.raises(ValidationError) as caught:
        await quotas.set_user_quota("acme", "u" * 300)
    assert caught.value.sqlstate == "22001"  # not the aborted savepoint's failed RELEASE
    with pytest.raises(ValidationError):
        await quotas.admit("a" * 300, "u", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0))
    assert await quotas.set_user_quota("acme", "u") > 0


async def test_on_commit_runs_when_the_outermost_block_exits(engine: AsyncEngine) -> None:
    ran: list[str] = []
    claims = ClaimRepository(engine)
    async with transaction():
        async with transaction():
            await claims.create_claim(external_id=f"{PROBE}-cb", content="x")
            on_commit(lambda: ran.append("inner"))
        assert ran == []  # the inner block's savepoint was released, nothing committed yet
    assert ran == ["inner"]


async def test_engine_connect_and_begin_are_savepoints(
    engine: AsyncEngine, shared_engine: AsyncEngine
) -> None:
    insert = text("INSERT INTO claims (external_id, content) VALUES (:e, 'x')")
    async with engine.begin() as conn:
        await conn.execute(insert, {"e": f"{PROBE}-begin"})
    async with engine.connect() as conn:
        await conn.execute(insert, {"e": f"{PROBE}-uncommitted"})  # closed without commit: rolled back
    async with engine.connect() as conn:
        await conn.execute(insert, {"e": f"{PROBE}-commit"})
        await conn.commit()
    with pytest.raises(DBAPIError):
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1 / 0"))
    claims = ClaimRepository(engine)  # the failure above aborted only its savepoint
    assert await claims.count(external_id=f"{PROBE}-begin") == 1
    assert await claims.count(external_id=f"{PROBE}-commit") == 1
    assert await claims.count(external_id=f"{PROBE}-uncommitted") == 0
    sql = f"SELECT count(*) FROM claims WHERE external_id LIKE '{PROBE}%'"
    assert await committed_count(shared_engine, sql) == 0


async def test_read_only_blocks_refuse_writes_and_the_test_goes_on(engine: AsyncEngine) -> None:
    claims = ClaimRepository(engine)
    with pytest.raises(PersistenceError):
        async with transaction(read_only=True):
            await claims.create_claim(external_id=f"{PROBE}-ro", content="x")
    async with transaction(read_only=True):
        assert await claims.count(external_id=f"{PROBE}-ro") == 0
    await claims.create_claim(external_id=f"{PROBE}-rw", content="x")  # read-write again after the block
    async with transaction(isolation_level="SERIALIZABLE"):  # ignored under the fixture, not an error
        assert await claims.count(external_id=f"{PROBE}-rw") == 1


async def test_concurrent_tasks_take_turns_on_the_one_connection(engine: AsyncEngine) -> None:
    claims = ClaimRepository(engine)

    async def write(i: int) -> None:
        async with transaction():
            await claims.create_claim(external_id=f"{PROBE}-task-{i}", content="x")
            await asyncio.sleep(0)
            await claims.create_claim(external_id=f"{PROBE}-task-{i}-b", content="x")

    await asyncio.gather(*(write(i) for i in range(4)), claims.count())
    assert await claims.count() >= 8


@pytest.mark.parametrize("attempt", [1, 2])
async def test_ledger_rows_stay_inside_the_test(
    engine: AsyncEngine, shared_engine: AsyncEngine, attempt: int
) -> None:
    key = f"{PROBE}-ledger"
    async with AICallLogger(engine) as ledger:
        first = await ledger.log_call("anthropic", "claude-x", 10, 5, cost_usd=Decimal("0.01"), event_id=key)
        assert (
            await ledger.log_call("anthropic", "claude-x", 10, 5, cost_usd=Decimal("0.01"), event_id=key)
            == first
        )
        written = await ledger.log_batch(
            [{"provider": "openai", "model": "gpt-x", "input_tokens": i, "output_tokens": 1,
              "cost_usd": Decimal("0.001")} for i in range(3)]
        )  # fmt: skip
        assert written == 3
    async with engine.connect() as conn:
        assert (
            await conn.scalar(text("SELECT count(*) FROM ai_calls")) == 4
        )  # nothing left by the other attempt
    assert await committed_count(shared_engine, "SELECT count(*) FROM ai_calls") == 0


async def test_create_without_a_session_uses_the_test_engine(engine: AsyncEngine) -> None:
    claim = await create(ClaimFactory, claim_type="financial")
    again = await ClaimRepository(engine).get(claim.id)
    assert again.claim_type == "financial"
    batch = await create_batch(ClaimFactory, 3, claim_type="medical")
    assert len({c.id for c in batch}) == 3
    async with transaction():  # inside a block: in the block's transaction
        inner = await create(ClaimFactory)
        assert await ClaimRepository(engine).count(id=inner.id) == 1


@pytest.mark.commits
async def test_commits_marker_makes_engine_commit_for_real(
    engine: AsyncEngine, fresh_engine: AsyncEngine, fresh_database: DatabaseConfig
) -> None:
    assert fresh_engine is engine
    await ClaimRepository(engine).create_claim(external_id=f"{PROBE}-real", content="x")
    other = build_engine(fresh_database)
    try:
        sql = f"SELECT count(*) FROM claims WHERE external_id = '{PROBE}-real'"
        assert await committed_count(other, sql) == 1
    finally:
        await other.dispose()


async def test_session_and_connection_fixtures_share_the_engines_transaction(
    engine: AsyncEngine, session: AsyncSession
) -> None:
    session.add(Claim(external_id=f"{PROBE}-session", content="x"))
    await session.flush()
    assert await ClaimRepository(engine).count(external_id=f"{PROBE}-session") == 1


async def test_a_failure_on_a_connection_lent_inside_a_block_is_not_the_blocks(engine: AsyncEngine) -> None:
    claims = ClaimRepository(engine)
    async with transaction():
        await claims.create_claim(external_id=f"{PROBE}-block", content="x")
        with pytest.raises(DBAPIError):
            async with engine.connect() as conn:  # a connection of its own in production
                await conn.execute(text("SELECT 1 / 0"))
        await claims.create_claim(external_id=f"{PROBE}-after", content="x")  # the block goes on
    assert await claims.count(external_id__in=[f"{PROBE}-block", f"{PROBE}-after"]) == 2


async def test_waiting_for_a_task_that_holds_the_connection_is_a_clear_error(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pinning, "WAIT_LIMIT_S", 0.2)
    claims = ClaimRepository(engine)
    async with transaction():
        await claims.count()  # the block holds the test's one connection until it ends
        independent = asyncio.create_task(claims.count(), context=contextvars.Context())
        with pytest.raises(TransactionError, match=r"pytest\.mark\.commits"):
            await independent  # it waits for the block, which waits for it
