"""The recorder: idempotent writes, the spool across an outage, overflow policies, disabled mode,
and seed 004's two queries against a scan done by hand."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    AgentExecution,
    CostEvent,
    EventsConfig,
    PlatformEvent,
    TimescaleIntegration,
    get_timescale_integration,
)
from persistence.ai_calls.batch import UnwrittenCallsError
from persistence.ai_calls.leases import Leases
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import ConfigurationError, Endpoint, ValidationError
from persistence.events.writer import SPLIT_AT, write_events
from persistence.testing.database import free_port
from tests.events.conftest import scalar
from tests.logs import capture_logs

COUNT = "SELECT count(*) FROM analytics.platform_events WHERE tenant_id = :t"


def unreachable_engine() -> AsyncEngine:
    """An engine whose server is down: nothing listens on its port."""
    return build_engine(
        DatabaseConfig.model_validate(
            {
                "host": "127.0.0.1",
                "port": free_port(),
                "user": "nobody",
                "database": "nothing",
                "connect_timeout": 1.0,
            }
        )
    )


def events(n: int, tenant: str = "t-idem") -> list[PlatformEvent]:
    return [
        PlatformEvent(
            tenant_id=tenant, event_type="page_view", event_category="user_behavior", event_data={"n": i}
        )
        for i in range(n)
    ]


async def test_a_replayed_batch_writes_nothing_twice(engine: AsyncEngine) -> None:
    batch = events(50)
    mixed = [
        *batch,
        CostEvent(tenant_id="t-idem", cost_type="llm", cost_usd=Decimal("0.5"), service="openai"),
    ]
    leases = Leases(engine, 1, Endpoint.of_url(engine.url))
    try:
        assert await leases.attempts(write_events, mixed) == 51
        assert await leases.attempts(write_events, mixed) == 0  # a lost acknowledgement, replayed
        assert await leases.attempts(write_events, [*events(2), *batch]) == 2
    finally:
        await leases.close()
    assert await scalar(engine, COUNT, t="t-idem") == 52


async def test_events_spooled_while_down_land_exactly_once_when_a_recorder_starts(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    down = unreachable_engine()
    # Spill: a full buffer sends the caller's event to the spool; nobody waits for the database.
    recorder = TimescaleIntegration(
        down, spool_dir=spool, batch_size=10, max_buffered=10, retry_interval=0.05, overflow="spill"
    )
    try:
        for event in events(1000, "t-outage"):
            await recorder.log_platform_event(event)
        stats = await recorder.close(timeout=10)
    finally:
        await down.dispose()
    assert (stats.queued, stats.waited, stats.dropped, stats.written) == (1000, 0, 0, 0)
    assert stats.spooled == stats.pending_in_spool == 1000
    # The next run's recorder replays the spool by itself (no new event needed); replaying the same
    # lines again (a crash before the segment was deleted) adds nothing.
    shutil.copytree(spool, tmp_path / "copy")
    for directory in (spool, tmp_path / "copy"):
        again = TimescaleIntegration(engine, spool_dir=directory, retry_interval=0.05)
        await again.start()
        await again.flush_all()
        stats = await again.close()
        assert (stats.replayed, stats.pending_in_spool, stats.rejected) == (1000, 0, 0)
        assert stats.written == (1000 if directory == spool else 0)
    assert await scalar(engine, COUNT, t="t-outage") == 1000


async def test_drop_policy_counts_what_it_drops_and_block_never_loses(tmp_path: Path) -> None:
    down = unreachable_engine()
    dropping = TimescaleIntegration(down, batch_size=5, max_buffered=5, retry_interval=0.05, overflow="drop")
    try:
        for event in events(20, "t-drop"):
            await dropping.log_platform_event(event)
        assert dropping.stats.dropped + dropping.stats.buffered == 20 and dropping.stats.dropped >= 15
        with pytest.raises(UnwrittenCallsError) as unwritten:  # nothing silently lost at close either
            await dropping.close(timeout=0.5)
        assert len(unwritten.value.calls) == unwritten.value.stats.buffered
    finally:
        await down.dispose()


async def test_disabled_by_configuration_says_so_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSISTENCE_EVENTS_ENABLED", "false")
    assert EventsConfig().enabled is False
    recorder = TimescaleIntegration(engine)
    with capture_logs() as logs:
        for event in events(3, "t-off"):
            await recorder.log_platform_event(event)
    assert [line["event"] for line in logs if line["log_level"] == "warning"] == [
        "event recording is disabled by configuration; events are not recorded"
    ]
    assert recorder.stats.dropped == 3
    with pytest.raises(ConfigurationError):
        await recorder.get_tenant_daily_cost("t-off")
    await recorder.close()
    assert await scalar(engine, COUNT, t="t-off") == 0


async def test_bad_arguments_are_refused(engine: AsyncEngine, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="spool_dir"):
        TimescaleIntegration(engine, overflow="spill")
    with pytest.raises(ValidationError, match="max_buffered"):
        TimescaleIntegration(engine, batch_size=100, max_buffered=10)
    recorder = get_timescale_integration(engine)
    assert get_timescale_integration() is recorder
    with pytest.raises(ValidationError, match="another engine"):
        get_timescale_integration(unreachable_engine())
    with pytest.raises(ValidationError, match="PlatformEvent"):
        wrong = CostEvent(tenant_id="t", cost_type="llm", cost_usd=1, service="openai")
        await recorder.log_platform_event(wrong)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="hours"):
        await recorder.get_agent_success_rate("a", "t", hours=0)
    with pytest.raises(ValidationError, match="time_zone"):
        await recorder.get_tenant_daily_cost("t", time_zone="Mars/Olympus")
    await recorder.close()
    assert get_timescale_integration(engine) is not recorder  # closed: the next call builds a new one


@pytest.mark.parametrize(
    ("zone", "day", "start", "end"),
    [
        ("Asia/Kolkata", date(2026, 3, 10), datetime(2026, 3, 9, 18, 30, tzinfo=UTC), datetime(2026, 3, 10, 18, 30, tzinfo=UTC)),
        ("America/New_York", date(2026, 3, 8), datetime(2026, 3, 8, 5, tzinfo=UTC), datetime(2026, 3, 9, 4, tzinfo=UTC)),
        ("UTC", date(2026, 3, 10), datetime(2026, 3, 10, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)),
    ],
)  # fmt: skip
async def test_daily_cost_is_the_local_day_to_the_cent(
    engine: AsyncEngine, zone: str, day: date, start: datetime, end: datetime
) -> None:
    tick = timedelta(microseconds=1)
    times = [start - tick, start, start + timedelta(hours=7, minutes=13), end - tick, end]
    recorder = TimescaleIntegration(engine)
    try:
        for i, at in enumerate(times):
            for tenant in ("t-day", "t-other"):
                await recorder.log_cost_event(CostEvent(
                    tenant_id=tenant, cost_type="llm", cost_usd=Decimal("0.0000000001") + i, service="openai", time=at
                ))  # fmt: skip
        expected = sum(
            (Decimal("0.0000000001") + i for i, at in enumerate(times) if start <= at < end), Decimal(0)
        )
        assert expected == Decimal("6.0000000003")
        assert await recorder.get_tenant_daily_cost("t-day", day, time_zone=zone) == expected
        assert await recorder.get_tenant_daily_cost("t-none", day, time_zone=zone) == 0
    finally:
        await recorder.close()


async def test_success_rate_is_a_ratio_of_counts_over_the_window(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    runs = [(1, True), (2, False), (3, True), (30, True)]  # hours ago; the last is outside 24 h
    recorder = TimescaleIntegration(engine)
    try:
        for hours_ago, success in runs:
            for agent in ("agent-a", "agent-b"):
                await recorder.log_agent_execution(AgentExecution(
                    tenant_id="t-rate", agent_id=agent, agent_type="ask_expert", execution_time_ms=5,
                    success=success if agent == "agent-a" else False, time=now - timedelta(hours=hours_ago),
                ))  # fmt: skip
        counts = await recorder.agent_runs("agent-a", "t-rate", hours=24)
        assert (counts.successes, counts.runs) == (2, 3)
        assert await recorder.get_agent_success_rate("agent-a", "t-rate", hours=24) == 200 / 3
        assert await recorder.get_agent_success_rate("agent-a", "t-rate", hours=48) == 75.0
        assert await recorder.get_agent_success_rate("agent-a", "t-other", hours=24) == 0.0
    finally:
        await recorder.close()


@pytest.mark.commits
async def test_plain_json_leases_never_give_their_codec_back_to_the_pool(
    fresh_database: DatabaseConfig,
) -> None:
    """The recorder's leases write JSON through asyncpg's own codec; the pool's other users keep
    SQLAlchemy's (JSON read back as Python values), because those connections are closed, not pooled."""
    one = build_engine(fresh_database.model_copy(update={"pool_size": 1, "max_overflow": 0}))
    value = """SELECT '{"a": 1}'::jsonb"""
    try:
        leases = Leases(one, 1, Endpoint.of_url(one.url), "TimescaleIntegration", plain_json=True)
        assert await leases.attempts(lambda raw: raw.fetchval(value)) == '{"a": 1}'  # text, in C
        await leases.close()
        async with one.connect() as conn:
            assert (await conn.exec_driver_sql(value)).scalar() == {"a": 1}
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            assert await raw.fetchval(value) == {"a": 1}  # SQLAlchemy's codec, on a new connection
        pooled = Leases(one, 1, Endpoint.of_url(one.url))
        assert await pooled.attempts(lambda raw: raw.fetchval(value)) == {"a": 1}
        await pooled.close()
    finally:
        await one.dispose()


REFUSE_POISON = """
CREATE FUNCTION analytics.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type = 'poison' THEN
        RAISE EXCEPTION 'poison' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON analytics.platform_events
    FOR EACH ROW EXECUTE FUNCTION analytics.refuse_poison();
"""


async def refuse_poison(engine: AsyncEngine) -> None:
    """From now on the database refuses (check_violation) every platform event of type 'poison'."""
    async with engine.begin() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute(REFUSE_POISON)


@pytest.mark.commits
async def test_a_batch_written_as_two_halves_counts_and_refuses_exactly(
    fresh_database: DatabaseConfig, tmp_path: Path
) -> None:
    """Batches of 2 * SPLIT_AT or more go out as two concurrent halves: every event lands once, the
    counters are exact, and a refused event is isolated in its half while the other half stands."""
    engine = build_engine(fresh_database)
    try:
        await refuse_poison(engine)
        batch = events(2 * SPLIT_AT * 2, "t-halves")  # two batches, each split in two
        poison = PlatformEvent(tenant_id="t-halves", event_type="poison", event_category="user_behavior")
        batch[-3] = poison  # in the second half of the second batch
        recorder = TimescaleIntegration(
            engine, spool_dir=tmp_path, batch_size=2 * SPLIT_AT, fold_interval=None
        )
        for event in batch:
            await recorder.log_platform_event(event)
        await recorder.flush_all()
        for event in batch[: 2 * SPLIT_AT]:  # the first batch again (a replay): nothing twice
            await recorder.log_platform_event(event)
        stats = await recorder.close()
        assert (stats.queued, stats.written, stats.rejected, stats.spooled) == (len(batch) + 2 * SPLIT_AT,
                                                                                 len(batch) - 1, 1, 0)  # fmt: skip
        assert await scalar(engine, COUNT, t="t-halves") == len(batch) - 1
        rejected = (tmp_path / "rejected.jsonl").read_text()
        assert str(poison.event_id) in rejected and rejected.count("\n") == 1
    finally:
        await engine.dispose()


@pytest.mark.commits
async def test_a_half_committed_when_close_times_out_is_counted_not_spooled(
    fresh_database: DatabaseConfig, tmp_path: Path
) -> None:
    """close(timeout) cancels a writer whose second half waits on a row lock (another session is
    inserting the same key): the first half, committed, is counted as written; only the second is
    spooled for the next run."""
    engine = build_engine(fresh_database)
    batch = events(2 * SPLIT_AT, "t-cancel")
    try:
        async with engine.connect() as blocking:
            raw = (await blocking.get_raw_connection()).driver_connection
            assert raw is not None
            held = raw.transaction()
            await held.start()
            await write_events(raw, batch[-1:])  # uncommitted: the second half's COPY waits for it
            recorder = TimescaleIntegration(
                engine, spool_dir=tmp_path, batch_size=2 * SPLIT_AT, fold_interval=None
            )
            for event in batch:
                await recorder.log_platform_event(event)
            for _ in range(200):  # the first half commits on its own
                if await scalar(engine, COUNT, t="t-cancel") == SPLIT_AT:
                    break
                await asyncio.sleep(0.05)
            stats = await recorder.close(timeout=1.0)
            await held.rollback()
        assert (stats.written, stats.spooled, stats.pending_in_spool) == (SPLIT_AT, SPLIT_AT, SPLIT_AT)
        assert await scalar(engine, COUNT, t="t-cancel") == SPLIT_AT
        again = TimescaleIntegration(engine, spool_dir=tmp_path, fold_interval=None)
        await again.start()
        await again.flush_all()
        stats = await again.close()
        assert (stats.replayed, stats.written) == (SPLIT_AT, SPLIT_AT)
        assert await scalar(engine, COUNT, t="t-cancel") == 2 * SPLIT_AT
    finally:
        await engine.dispose()


@pytest.mark.commits
async def test_both_halves_refused_after_an_outage_are_bisected_not_kept(
    fresh_database: DatabaseConfig, tmp_path: Path
) -> None:
    """After an outage (the writer marked the database unhealthy), a batch whose two halves are both
    refused is still judged event by event: the database answered, so it is bisected, not kept."""
    engine = build_engine(fresh_database)
    try:
        await refuse_poison(engine)
        batch = events(2 * SPLIT_AT, "t-refused")
        for n in (3, SPLIT_AT + 3):  # one refused event in each half
            batch[n] = PlatformEvent(
                tenant_id="t-refused", event_type="poison", event_category="user_behavior"
            )
        recorder = TimescaleIntegration(
            engine, spool_dir=tmp_path, batch_size=2 * SPLIT_AT, fold_interval=None
        )
        assert recorder._batcher is not None
        recorder._batcher._healthy = False  # as the last attempt, during an outage, left it
        for event in batch:
            await recorder.log_platform_event(event)
        stats = await recorder.close(timeout=10)
        assert (stats.written, stats.rejected, stats.spooled) == (len(batch) - 2, 2, 0)
        assert await scalar(engine, COUNT, t="t-refused") == len(batch) - 2
    finally:
        await engine.dispose()
