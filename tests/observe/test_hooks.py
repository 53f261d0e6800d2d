"""Hooks on a real engine: query, pool and transaction events, failing sinks, no cost without hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import ClaimRepository, VerificationRepository, current_session, transaction
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import ConflictError, IntegrityViolation
from persistence.observe import BaseHook, Hooks, QueryEvent, correlation
from persistence.pool import PersistencePool
from tests.logs import capture_logs
from tests.observe.recorder import Recorder


@pytest_asyncio.fixture(loop_scope="session")
async def recorded(fresh_database: DatabaseConfig) -> AsyncIterator[tuple[AsyncEngine, Recorder]]:
    recorder = Recorder()
    engine = build_engine(fresh_database, hooks=[recorder])
    try:
        await warm_up(engine)
        recorder.clear()
        yield engine, recorder
    finally:
        await engine.dispose()


async def warm_up(engine: AsyncEngine) -> None:
    """Open the first connection (SQLAlchemy sends its own setup queries on it)."""
    async with engine.connect():
        pass


@pytest.mark.commits
async def test_first_connection_reports_connect_and_the_dialect_setup_queries(
    fresh_database: DatabaseConfig,
) -> None:
    rec = Recorder()
    engine = build_engine(fresh_database, hooks=[rec])
    try:
        await warm_up(engine)
    finally:
        await engine.dispose()
    assert [p.kind for p in rec.pool][:3] == ["connect", "checkout", "checkin"]
    assert rec.queries and all(q.success for q in rec.queries)  # server version, schema, settings
    assert rec.transactions == []  # no transaction block was used


@pytest.mark.commits
async def test_repository_call_in_transaction_emits_query_and_transaction_events(
    recorded: tuple[AsyncEngine, Recorder],
) -> None:
    engine, rec = recorded
    claims = ClaimRepository(engine)

    @transaction
    async def create_and_read() -> str:
        claim = await claims.add(external_id="c-1", content="Water is wet")
        again = await claims.get(claim.id)
        return again.external_id

    with correlation(trace_id="t-42", request_id="req-7"):
        assert await create_and_read() == "c-1"

    assert [(q.operation, q.table, q.success, q.rows) for q in rec.queries] == [
        ("INSERT", "claims", True, 1),
        ("SELECT", "claims", True, 1),
    ]
    for query in rec.queries:
        assert query.duration > 0
        assert (query.trace_id, query.request_id) == ("t-42", "req-7")
        assert query.database == engine.url.database
        assert query.sqlstate is None and query.error is None
    assert "Water is wet" not in rec.queries[0].statement  # values are bound, never in the text
    assert [(s.depth, s.attempt) for s in rec.starts] == [(0, 1)]
    [tx] = rec.transactions
    assert (tx.outcome, tx.attempts, tx.depth, tx.max_depth, tx.sqlstate) == ("commit", 1, 0, 0, None)
    assert tx.duration >= sum(q.duration for q in rec.queries)
    # One connection: checked out (with its wait measured) and back in.
    kinds = [p.kind for p in rec.pool if p.kind in ("checkout", "checkin")]
    assert kinds == ["checkout", "checkin"]
    checkout = next(p for p in rec.pool if p.kind == "checkout")
    checkin = next(p for p in rec.pool if p.kind == "checkin")
    assert checkout.wait is not None and checkout.wait > 0
    assert (checkout.stats.in_use, checkin.stats.in_use, checkin.stats.idle) == (1, 0, 1)
    assert checkout.stats.size == 5  # the test configs' pool_size


@pytest.mark.commits
async def test_savepoints_rollbacks_and_failures_are_reported(
    recorded: tuple[AsyncEngine, Recorder],
) -> None:
    engine, rec = recorded
    claims = ClaimRepository(engine)
    verifications = VerificationRepository(engine)

    async with transaction():
        await claims.add(external_id="outer", content="kept")
        with pytest.raises(RuntimeError):
            async with transaction():
                await claims.add(external_id="inner", content="undone")
                raise RuntimeError("undo the savepoint")
    assert [(t.outcome, t.depth, t.max_depth) for t in rec.transactions] == [
        ("rollback", 1, 1),
        ("commit", 0, 1),
    ]

    rec.clear()
    with pytest.raises(ValueError, match="application"):
        async with transaction():
            await claims.add(external_id="x", content="y")
            raise ValueError("application error")
    assert [(t.outcome, t.sqlstate) for t in rec.transactions] == [("rollback", None)]

    rec.clear()
    with pytest.raises(IntegrityViolation):
        async with transaction():
            await verifications.add(claim_id="c", framework="empirical", result={}, confidence=1.5)
    [failed_query] = [q for q in rec.queries if not q.success]
    assert (failed_query.operation, failed_query.table) == ("INSERT", "verification_results")
    assert (failed_query.sqlstate, failed_query.error) == ("23514", "IntegrityViolation")
    assert [(t.outcome, t.sqlstate) for t in rec.transactions] == [("failed", "23514")]


@pytest.mark.commits
async def test_retried_transaction_reports_each_attempt(recorded: tuple[AsyncEngine, Recorder]) -> None:
    engine, rec = recorded
    claims = ClaimRepository(engine)
    runs = 0

    @transaction(retries=2)
    async def flaky() -> None:
        nonlocal runs
        runs += 1
        await claims.add(external_id=f"run-{runs}", content="x")
        if runs == 1:
            session = await current_session(engine)
            await session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
            )

    await flaky()
    assert runs == 2
    assert [(t.outcome, t.attempts, t.sqlstate) for t in rec.transactions] == [
        ("retried", 1, "40001"),
        ("commit", 2, None),
    ]
    assert [s.attempt for s in rec.starts] == [1, 2]
    do = next(q for q in rec.queries if q.operation == "DO")
    assert (do.success, do.sqlstate, do.error) == (False, "40001", "TransientError")


@pytest.mark.commits
async def test_calls_outside_a_block_are_one_transaction_each(
    recorded: tuple[AsyncEngine, Recorder],
) -> None:
    engine, rec = recorded
    claims = ClaimRepository(engine)
    claim = await claims.add(external_id="solo", content="x")
    await claims.get(claim.id)
    assert [(t.outcome, t.depth) for t in rec.transactions] == [("commit", 0), ("commit", 0)]
    rec.clear()
    with pytest.raises(ConflictError):  # refused by the server (a NULL is refused before any SQL)
        await claims.add(external_id="solo", content="x")
    assert [(t.outcome, t.sqlstate) for t in rec.transactions] == [("failed", "23505")]


class Exploding(BaseHook):
    def __init__(self) -> None:
        self.calls = 0

    def on_query(self, event: QueryEvent) -> None:
        self.calls += 1
        raise RuntimeError("sink is broken")

    def on_pool(self, event: object) -> None:
        raise ZeroDivisionError


@pytest.mark.commits
async def test_a_raising_sink_never_fails_the_query_and_is_logged_once(
    fresh_database: DatabaseConfig,
) -> None:
    broken, healthy = Exploding(), Recorder()
    engine = build_engine(fresh_database, hooks=[broken, healthy])
    claims = ClaimRepository(engine)
    try:
        await warm_up(engine)
        broken.calls = 0
        healthy.clear()
        with capture_logs() as logs:
            claim = await claims.add(external_id="ok", content="x")
            assert (await claims.get(claim.id)).external_id == "ok"
            assert await claims.count() == 1
    finally:
        await engine.dispose()
    assert broken.calls == 3  # it was called for every statement...
    assert len(healthy.queries) == 3  # ...and the sinks after it still got every event
    # Logged once each (both first failed during the warm-up, before the capture): nothing more now.
    assert [entry for entry in logs if entry["event"].startswith("metrics sink failed")] == []


@pytest.mark.commits
async def test_a_raising_sink_is_logged_once_per_method(fresh_database: DatabaseConfig) -> None:
    engine = build_engine(fresh_database, hooks=[Exploding()])
    try:
        with capture_logs() as logs:
            for _ in range(3):
                assert await ClaimRepository(engine).count() == 0
    finally:
        await engine.dispose()
    failures = [entry for entry in logs if entry["event"].startswith("metrics sink failed")]
    assert sorted((f["sink"], f["method"], f["error"]) for f in failures) == [
        ("Exploding", "on_pool", "ZeroDivisionError"),
        ("Exploding", "on_query", "RuntimeError"),
    ]


def test_hooks_refuse_an_object_that_is_not_a_sink() -> None:
    with pytest.raises(TypeError, match="is not a hook"):
        Hooks([object()])  # type: ignore[list-item]


async def test_an_engine_without_hooks_has_no_listeners(db_config: DatabaseConfig) -> None:
    engine = build_engine(db_config)
    try:
        assert not engine.sync_engine._has_events
        assert not engine.sync_engine.dispatch.before_cursor_execute
        assert isinstance(engine.pool, PersistencePool)
        assert engine.pool.persistence_hooks is None  # no checkout timing without hooks
    finally:
        await engine.dispose()


def test_transaction_start_goes_only_to_sinks_that_implement_it() -> None:
    assert not Hooks([BaseHook()]).wants_transaction_start
    assert Hooks([BaseHook(), Recorder()]).wants_transaction_start


@pytest.mark.commits
async def test_an_engine_with_execution_options_keeps_the_hooks(
    recorded: tuple[AsyncEngine, Recorder],
) -> None:
    engine, rec = recorded
    claims = ClaimRepository(engine.execution_options(logging_token="x"))
    await claims.add(external_id="opt", content="x")
    assert [(q.operation, q.table) for q in rec.queries] == [("INSERT", "claims")]
    assert [t.outcome for t in rec.transactions] == ["commit"]


@pytest.mark.commits
async def test_a_connection_killed_by_the_server_is_reported_invalidated(
    recorded: tuple[AsyncEngine, Recorder],
) -> None:
    engine, rec = recorded
    async with engine.connect() as victim:
        pid = await victim.scalar(text("SELECT pg_backend_pid()"))
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(Exception):  # noqa: B017,PT011  (the driver's own "connection lost" error)
            await victim.execute(text("SELECT 1"))
    assert "invalidate" in [p.kind for p in rec.pool]
    async with engine.connect() as conn:  # the pool replaced it
        assert await conn.scalar(text("SELECT 1")) == 1
