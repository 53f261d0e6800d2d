"""DatabaseMetrics: seed 003's API, the snapshot, and its use as a hook on a real engine."""

from __future__ import annotations

import math

import pytest

from persistence import ClaimRepository, transaction
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.monitoring import DatabaseMetrics


def test_snapshot_counts_sums_and_nearest_rank_percentiles() -> None:
    metrics = DatabaseMetrics()
    for ms in range(1, 101):  # 1..100 ms
        metrics.record_query_duration("get_verification", ms / 1000)
    metrics.record_query_duration("other", 0.5)
    metrics.record_connection_pool_size(15)
    metrics.record_transaction_status("success")
    metrics.record_transaction_status("success")
    metrics.record_transaction_status("rollback")
    snap = metrics.snapshot()
    stats = snap.queries["get_verification"]
    assert stats.count == 100
    assert math.isclose(stats.total, 5.05)
    assert (stats.p50, stats.p95, stats.p99, stats.max) == (0.05, 0.095, 0.099, 0.1)
    assert list(snap.queries) == ["get_verification", "other"]
    assert snap.pool_size == 15
    assert dict(snap.transactions) == {"rollback": 1, "success": 2}


def test_percentiles_use_a_bounded_window_but_counts_do_not() -> None:
    metrics = DatabaseMetrics(window=10)
    for _ in range(1000):
        metrics.record_query_duration("q", 1.0)
    for _ in range(10):
        metrics.record_query_duration("q", 0.001)
    stats = metrics.snapshot().queries["q"]
    assert stats.count == 1010
    assert stats.p99 == 0.001  # only the 10 most recent samples are kept for percentiles


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_rejects_impossible_durations(bad: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        DatabaseMetrics().record_query_duration("q", bad)


def test_rejects_bad_names_sizes_and_statuses() -> None:
    metrics = DatabaseMetrics()
    with pytest.raises(ValueError, match="name"):
        metrics.record_query_duration("", 0.1)
    with pytest.raises(ValueError, match="pool size"):
        metrics.record_connection_pool_size(-1)
    with pytest.raises(ValueError, match="status"):
        metrics.record_transaction_status("")


@pytest.mark.commits
async def test_as_a_hook_it_records_every_statement_and_transaction(fresh_database: DatabaseConfig) -> None:
    metrics = DatabaseMetrics()
    engine = build_engine(fresh_database, hooks=[metrics])
    claims = ClaimRepository(engine)
    try:

        @transaction
        async def work() -> None:
            claim = await claims.add(external_id="m-1", content="x")
            await claims.get(claim.id)
            await claims.get(claim.id)

        await work()
        with pytest.raises(ValueError, match="boom"):
            async with transaction():
                await claims.count()
                raise ValueError("boom")
    finally:
        await engine.dispose()
    snap = metrics.snapshot()
    assert snap.queries["INSERT claims"].count == 1
    assert snap.queries["SELECT claims"].count == 3
    assert snap.queries["SELECT claims"].p50 > 0
    assert dict(snap.transactions) == {"commit": 1, "rollback": 1}
    assert snap.pool_size == 1 and snap.pool is not None and snap.pool.idle == 1
    assert snap.pool_checkouts == 2 and snap.pool_wait_total > 0
