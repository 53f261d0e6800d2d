"""Queue health: dead tuples of the in-flight table and the oldest open snapshot."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.requests import Requests, Worker


@pytest.mark.commits
async def test_health_reports_dead_tuples_and_the_snapshot_holding_them(
    engine: AsyncEngine, fresh_database: DatabaseConfig
) -> None:
    # One connection does the churn, so its statistics can be flushed on demand.
    single = build_engine(fresh_database.model_copy(update={"pool_size": 1, "max_overflow": 0}))
    try:
        requests = Requests(single)
        before = await requests.health()
        assert before.oldest_snapshot_pid is None and not before.snapshot_older_than(timedelta(0))
        async with engine.connect() as holder:
            await holder.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            await holder.execute(text("SELECT count(*) FROM request_inflight"))
            pid = (await holder.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            for k in range(20):
                await requests.create("acme", "u1", "m", f"p{k}")
            for claim in await requests.claim(Worker("w"), 20):
                await requests.complete(claim)
            async with single.connect() as conn:
                await conn.execute(text("SELECT pg_stat_force_next_flush()"))
                await conn.commit()
            health = await requests.health()
            assert (health.queued, health.processing) == (0, 0)
            assert health.dead_tuples >= 20  # a claim's old row version and the deleted row, each
            assert health.oldest_snapshot_pid == pid and health.oldest_snapshot_state == "idle in transaction"
            assert health.oldest_snapshot_age is not None and health.snapshot_older_than(timedelta(0))
            assert health.oldest_snapshot_xid_age is not None and health.oldest_snapshot_xid_age >= 1
    finally:
        await single.dispose()


async def test_the_inflight_table_is_vacuumed_after_a_fixed_number_of_dead_rows(engine: AsyncEngine) -> None:
    """Revision 0018's storage parameters (the default scale factor would wait for 20 % of the table)."""
    async with engine.connect() as conn:
        options = (
            await conn.execute(
                text("SELECT reloptions FROM pg_class WHERE oid = 'request_inflight'::regclass")
            )
        ).scalar_one()
    assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=500", "fillfactor=70"} <= set(
        options
    )


@pytest.mark.commits
async def test_a_snapshot_in_another_database_is_not_reported(
    shared_engine: AsyncEngine, fresh_database: DatabaseConfig
) -> None:
    """Vacuum of this database's in-flight table is not held back by another database's sessions:
    health names only snapshots that hold its dead rows."""
    single = build_engine(fresh_database.model_copy(update={"pool_size": 1, "max_overflow": 0}))
    try:
        async with shared_engine.connect() as elsewhere:  # the session's shared test database
            await elsewhere.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            await elsewhere.execute(text("SELECT 1"))
            other = (await elsewhere.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            health = await Requests(single).health()
            assert health.oldest_snapshot_pid != other
    finally:
        await single.dispose()
