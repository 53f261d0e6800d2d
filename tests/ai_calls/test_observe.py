"""The ledger's raw-asyncpg paths report to the engine's hooks like every other statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import ConflictError, IntegrityViolation
from persistence.monitoring import DatabaseMetrics
from tests.ai_calls.conftest import T0, call
from tests.observe.recorder import Recorder

pytestmark = pytest.mark.commits


@pytest_asyncio.fixture(loop_scope="session")
async def hooked(
    fresh_database: DatabaseConfig,
) -> AsyncIterator[tuple[AsyncEngine, Recorder, DatabaseMetrics]]:
    recorder, metrics = Recorder(), DatabaseMetrics()
    engine = build_engine(fresh_database, hooks=[recorder, metrics])
    try:
        yield engine, recorder, metrics
    finally:
        await engine.dispose()


async def test_ledger_writes_and_reads_reach_the_hooks(
    hooked: tuple[AsyncEngine, Recorder, DatabaseMetrics],
) -> None:
    engine, recorder, metrics = hooked
    async with AICallLogger(engine, fold_every=None) as log:
        recorder.clear()
        await log.log_call(**call(1))
        assert await log.log_batch([call(i) for i in range(2, 12)]) == 10
        with pytest.raises(ConflictError):
            await log.log_batch([{**call(2), "latency_ms": 1}])
        stats = await log.get_stats(T0 - timedelta(hours=1), T0 + timedelta(hours=1))
        assert stats["total_calls"] == 11
    ledger = [q for q in recorder.queries if q.table in ("ai_calls", "ai_call_model_hourly")]
    assert [(q.operation, q.table, q.success, q.rows) for q in ledger] == [
        ("INSERT", "ai_calls", True, 1),
        ("COPY", "ai_calls", True, 10),
        ("COPY", "ai_calls", False, None),
        ("SELECT", "ai_call_model_hourly", True, 1),  # one provider
    ]
    failed = ledger[2]
    assert failed.error == "ConflictError" and failed.sqlstate is None  # our own payload check
    assert all(q.duration > 0 and q.database == engine.url.database for q in ledger)
    assert "$1" in ledger[0].statement and "msg_" not in ledger[0].statement  # values never leak
    snapshot = metrics.snapshot()
    assert snapshot.queries["INSERT ai_calls"].count == 1
    assert snapshot.queries["COPY ai_calls"].count == 2
    assert snapshot.queries["COPY ai_calls"].errors == 1
    assert snapshot.queries["SELECT ai_call_model_hourly"].count == 1


async def test_a_server_error_reports_its_sqlstate(
    hooked: tuple[AsyncEngine, Recorder, DatabaseMetrics],
) -> None:
    engine, recorder, _ = hooked
    async with AICallLogger(engine, fold_every=None) as log:
        async with log._connection() as raw:
            await raw.execute("ALTER TABLE ai_call_keys ADD CONSTRAINT no_keys CHECK (false) NOT VALID")
        recorder.clear()
        with pytest.raises(IntegrityViolation, match="no_keys"):
            await log.log_call(**call(1))
    [event] = [q for q in recorder.queries if q.table == "ai_calls"]
    assert (event.operation, event.success, event.sqlstate) == ("INSERT", False, "23514")
    assert event.error == "IntegrityViolation"
