"""Event rollups: the two seed queries (rollups + deltas for whole hours, raw rows at the edges)
equal a raw scan for any zone's day, with late and replayed events; folds racing writers lose
nothing; retention keeps answers and refuses partitions whose rows are not in the rollups."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.rollups import _on_raw
from persistence.events.partitions import SkippedDrop, maintain_event_partitions
from persistence.events.queries import (
    AgentRuns,
    agent_runs,
    agent_runs_scan,
    daily_cost,
    daily_cost_scan,
    tenant_day,
)
from persistence.events.records import AgentExecution, CostEvent, Event
from persistence.events.rollups import fold_event_rollups, fold_event_rollups_raw
from persistence.events.writer import write_events

T = TypeVar("T")

# A whole-hour zone, a half-hour one, a 45-minute one and one with DST.
ZONES = {
    "t-utc": "UTC",
    "t-kolkata": "Asia/Kolkata",
    "t-kathmandu": "Asia/Kathmandu",
    "t-ny": "America/New_York",
}
AGENTS = ("ask-expert-v1", "workflow-2")
COSTS = (("llm", "openai"), ("llm", "anthropic"), ("embedding", "openai"), ("storage", "pinecone"))
WINDOWS = (0.25, 1, 1.5, 5.75, 24, 47.3, 24 * 5)

# Rollup rows after a full fold vs a GROUP BY of the raw rows: equal, bucket for bucket.
COST_DIFF = """
SELECT count(*) FROM (
    (SELECT tenant_id, hour, cost_type, service, cost_usd, events FROM analytics.tenant_cost_hourly WHERE events <> 0
     EXCEPT
     SELECT tenant_id, date_trunc('hour', time, 'UTC'), cost_type, service, sum(cost_usd), count(*)
       FROM analytics.tenant_cost_events GROUP BY 1, 2, 3, 4)
    UNION ALL
    (SELECT tenant_id, date_trunc('hour', time, 'UTC'), cost_type, service, sum(cost_usd), count(*)
       FROM analytics.tenant_cost_events GROUP BY 1, 2, 3, 4
     EXCEPT
     SELECT tenant_id, hour, cost_type, service, cost_usd, events FROM analytics.tenant_cost_hourly)
) d
"""
AGENT_DIFF = """
SELECT count(*) FROM (
    (SELECT tenant_id, agent_id, hour, runs, successes, quality_sum, quality_count, cost_usd
       FROM analytics.agent_execution_hourly WHERE runs <> 0
     EXCEPT
     SELECT tenant_id, agent_id, date_trunc('hour', time, 'UTC'), count(*), count(*) FILTER (WHERE success),
            coalesce(sum(quality_score), 0), count(quality_score), coalesce(sum(cost_usd), 0)
       FROM analytics.agent_executions GROUP BY 1, 2, 3)
    UNION ALL
    (SELECT tenant_id, agent_id, date_trunc('hour', time, 'UTC'), count(*), count(*) FILTER (WHERE success),
            coalesce(sum(quality_score), 0), count(quality_score), coalesce(sum(cost_usd), 0)
       FROM analytics.agent_executions GROUP BY 1, 2, 3
     EXCEPT
     SELECT tenant_id, agent_id, hour, runs, successes, quality_sum, quality_count, cost_usd
       FROM analytics.agent_execution_hourly)
) d
"""


def events_between(rng: random.Random, count: int, lo: datetime, hi: datetime) -> list[Event]:
    """`count` cost events and agent executions at random instants of [lo, hi)."""
    span = (hi - lo).total_seconds()
    out: list[Event] = []
    for _ in range(count):
        tenant = rng.choice(list(ZONES))
        at = lo + timedelta(seconds=rng.random() * span)
        if rng.random() < 0.5:
            cost_type, service = rng.choice(COSTS)
            out.append(CostEvent(tenant_id=tenant, cost_type=cost_type, service=service, time=at,
                                 cost_usd=Decimal(rng.randrange(0, 10**7)).scaleb(-8)))  # fmt: skip
        else:
            out.append(AgentExecution(
                tenant_id=tenant, agent_id=rng.choice(AGENTS), agent_type="ask_expert", time=at,
                execution_time_ms=rng.randrange(5000), success=rng.random() < 0.8,
                quality_score=None if rng.random() < 0.2 else Decimal(rng.randrange(10**6)).scaleb(-6),
                cost_usd=None if rng.random() < 0.3 else Decimal(rng.randrange(10**6)).scaleb(-8),
            ))  # fmt: skip
    return out


async def on_raw(engine: AsyncEngine, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    return await _on_raw(engine, work)


async def assert_queries_equal_scans(engine: AsyncEngine, days: list[date]) -> int:
    """Every tenant's local days and every agent's windows: rollup answer == raw scan. Returns the
    number of non-zero answers (so a test knows it compared something)."""

    async def check(raw: asyncpg.Connection) -> int:
        nonzero = 0
        async with raw.transaction():  # one transaction: now() is the same for both sides
            for tenant, zone in ZONES.items():
                for day in days:
                    window = tenant_day(tenant, day, zone)
                    fast, scan = await daily_cost(raw, window), await daily_cost_scan(raw, window)
                    assert fast == scan, (tenant, zone, day)
                    nonzero += scan != 0
                for agent in AGENTS:
                    for hours in WINDOWS:
                        runs = await agent_runs(raw, agent, tenant, hours)
                        assert runs == await agent_runs_scan(raw, agent, tenant, hours), (
                            tenant,
                            agent,
                            hours,
                        )
                        nonzero += runs.runs != 0
        return nonzero

    return await on_raw(engine, check)


async def rollup_diffs(engine: AsyncEngine) -> tuple[int, int]:
    async def diff(raw: asyncpg.Connection) -> tuple[int, int]:
        return await raw.fetchval(COST_DIFF), await raw.fetchval(AGENT_DIFF)

    return await on_raw(engine, diff)


async def write(engine: AsyncEngine, events: list[Event]) -> int:
    return await on_raw(engine, lambda raw: write_events(raw, events))


async def test_queries_equal_a_raw_scan_with_late_and_replayed_events_in_any_zone(
    engine: AsyncEngine,
) -> None:
    rng = random.Random(4)
    now = datetime.now(UTC)
    lo, hi = now - timedelta(days=3), now + timedelta(hours=2)
    days = [(now + timedelta(days=k)).date() for k in range(-4, 2)]
    first = events_between(rng, 1500, lo, now - timedelta(days=1))
    for i in range(0, len(first), 100):
        await write(engine, first[i : i + 100])
    folded = await fold_event_rollups(engine)
    assert folded.cost_deltas > 0 and folded.agent_deltas > 0
    assert await assert_queries_equal_scans(engine, days) > 20

    # Late events land in hours already folded; a replay of a stored batch adds nothing.
    late = events_between(rng, 600, lo, hi)
    assert await write(engine, late[:300]) == 300
    assert await write(engine, first[:100] + late[300:]) == 300  # COPY refused, INSERT ON CONFLICT
    assert await assert_queries_equal_scans(engine, days) > 20  # deltas unfolded
    await fold_event_rollups(engine)
    assert await rollup_diffs(engine) == (0, 0)
    assert await assert_queries_equal_scans(engine, days) > 20

    # Deletes and updates through the parent are deltas too.
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM analytics.tenant_cost_events WHERE tenant_id = 't-kolkata' "
                                "AND cost_type = 'storage'"))  # fmt: skip
        await conn.execute(text("UPDATE analytics.agent_executions SET success = NOT success "
                                "WHERE tenant_id = 't-ny' AND agent_id = 'workflow-2'"))  # fmt: skip
    assert await assert_queries_equal_scans(engine, days) > 20
    await fold_event_rollups(engine)
    assert await rollup_diffs(engine) == (0, 0)


async def test_a_kolkata_day_takes_its_half_hour_edges_from_raw_rows(engine: AsyncEngine) -> None:
    # 2026-03-10 in Asia/Kolkata is [03-09 18:30, 03-10 18:30) UTC: whole hours 19:00 .. 18:00.
    at = [datetime(2026, 3, 9, 18, 29, 59, 999999, tzinfo=UTC), datetime(2026, 3, 9, 18, 30, tzinfo=UTC),
          datetime(2026, 3, 9, 18, 59, tzinfo=UTC), datetime(2026, 3, 10, 12, tzinfo=UTC),
          datetime(2026, 3, 10, 18, 29, tzinfo=UTC), datetime(2026, 3, 10, 18, 30, tzinfo=UTC)]  # fmt: skip
    events: list[Event] = [
        CostEvent(tenant_id="t-edge", cost_type="llm", service="openai", cost_usd=Decimal(10**k), time=t)
        for k, t in enumerate(at)
    ]
    await write(engine, events)
    await fold_event_rollups(engine)
    window = tenant_day("t-edge", date(2026, 3, 10), "Asia/Kolkata")
    assert window.start == datetime(2026, 3, 9, 18, 30, tzinfo=UTC)
    assert window.first_hour == datetime(2026, 3, 9, 19, tzinfo=UTC)

    async def both(raw: asyncpg.Connection) -> tuple[Decimal, Decimal]:
        return await daily_cost(raw, window), await daily_cost_scan(raw, window)

    assert await on_raw(engine, both) == (Decimal(11110), Decimal(11110))
    local = datetime(2026, 3, 10, 12, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert tenant_day("t-edge", local, "Asia/Kolkata") == window


async def test_a_dst_day_and_a_45_minute_zone_equal_a_raw_scan(engine: AsyncEngine) -> None:
    # 2026-03-08 has 23 hours in America/New_York; Asia/Kathmandu is UTC+05:45.
    rng = random.Random(8)
    lo = datetime(2026, 3, 6, tzinfo=UTC)
    await write(engine, events_between(rng, 800, lo, lo + timedelta(days=4)))
    await fold_event_rollups(engine)
    await write(engine, events_between(rng, 200, lo, lo + timedelta(days=4)))  # late, unfolded
    days = [date(2026, 3, d) for d in range(6, 11)]
    assert tenant_day("t-ny", date(2026, 3, 8), "America/New_York").end - tenant_day(
        "t-ny", date(2026, 3, 8), "America/New_York"
    ).start == timedelta(hours=23)

    async def compare(raw: asyncpg.Connection) -> int:
        nonzero = 0
        for tenant, zone in ZONES.items():
            for day in days:
                window = tenant_day(tenant, day, zone)
                scan = await daily_cost_scan(raw, window)
                assert await daily_cost(raw, window) == scan, (tenant, zone, day)
                nonzero += scan != 0
        return nonzero

    assert await on_raw(engine, compare) >= 12


def test_fold_interval_is_validated() -> None:
    from persistence import TimescaleIntegration
    from persistence.errors import ValidationError

    for bad in (0, -1, True, "60"):
        with pytest.raises(ValidationError):
            TimescaleIntegration(fold_interval=bad)  # type: ignore[arg-type]


@pytest.mark.commits
async def test_a_fold_racing_four_writers_loses_nothing(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    rng = random.Random(18)
    batches = [events_between(rng, 50, now - timedelta(days=2), now + timedelta(hours=1)) for _ in range(80)]
    stop = asyncio.Event()
    folds: list[int] = []

    async def writer(mine: list[list[Event]]) -> None:
        for batch in mine:
            await write(engine, batch)

    async def folder() -> None:
        while not stop.is_set():
            result = await fold_event_rollups(engine)
            folds.append(result.cost_deltas + result.agent_deltas)
            await asyncio.sleep(0)

    fold_task = asyncio.create_task(folder())
    await asyncio.gather(*(writer(batches[k::4]) for k in range(4)))
    stop.set()
    await fold_task
    assert len(folds) > 1 and sum(folds) > 0  # folds ran while the writers wrote
    await fold_event_rollups(engine)
    assert await rollup_diffs(engine) == (0, 0)
    days = [(now + timedelta(days=k)).date() for k in range(-3, 2)]
    assert await assert_queries_equal_scans(engine, days) > 20

    async def left(raw: asyncpg.Connection) -> tuple[int, int]:
        return (await raw.fetchval("SELECT count(*) FROM analytics.tenant_cost_hourly_deltas"),
                await raw.fetchval("SELECT count(*) FROM analytics.agent_execution_hourly_deltas"))  # fmt: skip

    assert await on_raw(engine, left) == (0, 0)


async def test_a_second_fold_waits_or_skips_and_never_counts_twice(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    await write(engine, events_between(random.Random(1), 200, now - timedelta(hours=5), now))

    async def two(raw: asyncpg.Connection) -> tuple[int, bool]:
        first = await fold_event_rollups_raw(raw)
        again = await fold_event_rollups_raw(raw, wait=False)
        return (
            first.cost_deltas + first.agent_deltas,
            again.skipped or again.cost_deltas + again.agent_deltas > 0,
        )

    folded, second_did_something = await on_raw(engine, two)
    assert folded > 0 and not second_did_something
    assert await rollup_diffs(engine) == (0, 0)


JAN = date(2031, 1, 1)
JAN_DAYS = [date(2031, 1, d) for d in (1, 2, 15, 31)] + [date(2031, 2, 1)]


async def jan_events(engine: AsyncEngine, events: list[Event] | None = None) -> list[Event]:
    if events is None:
        lo = datetime(2031, 1, 1, tzinfo=UTC)
        events = events_between(random.Random(31), 800, lo, lo + timedelta(days=31))
    for i in range(0, len(events), 200):
        await write(engine, events[i : i + 200])
    return events


async def daily_answers(engine: AsyncEngine, zones: dict[str, str]) -> dict[tuple[str, date], Decimal]:
    async def answers(raw: asyncpg.Connection) -> dict[tuple[str, date], Decimal]:
        return {
            (t, d): await daily_cost(raw, tenant_day(t, d, z)) for t, z in zones.items() for d in JAN_DAYS
        }

    return await on_raw(engine, answers)


async def test_retention_folds_then_drops_and_the_answers_stay(engine: AsyncEngine) -> None:
    events = await jan_events(engine)  # into the default partition: January 2031 has none yet
    await maintain_event_partitions(
        engine, months_ahead=1, today=date(2031, 1, 15)
    )  # moves them: -delta +delta
    assert await rollup_diffs(engine) == (0, 0)
    whole_hours = {t: z for t, z in ZONES.items() if z in ("UTC", "America/New_York")}
    before = await daily_answers(engine, ZONES)
    assert sum(before.values()) > 0

    async def scans(raw: asyncpg.Connection) -> dict[tuple[str, date], Decimal]:
        return {
            (t, d): await daily_cost_scan(raw, tenant_day(t, d, z))
            for t, z in ZONES.items()
            for d in JAN_DAYS
        }

    assert await on_raw(engine, scans) == before
    await jan_events(engine, events)  # replayed: nothing new
    assert await daily_answers(engine, ZONES) == before

    report = await maintain_event_partitions(
        engine, months_ahead=0, today=date(2031, 4, 10), retention_months=2
    )
    assert JAN in report.dropped["tenant_cost_events"] and JAN in report.dropped["agent_executions"]
    assert report.skipped == []
    gone = "SELECT count(*) FROM analytics.tenant_cost_events WHERE time < '2031-02-01'"
    assert await on_raw(engine, lambda raw: raw.fetchval(gone)) == 0
    after = await daily_answers(engine, whole_hours)
    assert after == {key: value for key, value in before.items() if key[0] in whole_hours}
    assert sum(after.values()) > 0


async def test_a_default_partition_made_again_gets_its_trigger(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE analytics.tenant_cost_events_default"))
    report = await maintain_event_partitions(engine, months_ahead=1, today=date(2031, 1, 15))
    assert report.defaults_created == ["tenant_cost_events"]
    triggers = (
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'analytics.tenant_cost_events_default'::regclass"
    )
    assert await on_raw(engine, lambda raw: raw.fetchval(triggers)) == 1
    lo = datetime(2031, 3, 1, tzinfo=UTC)  # past the partitions made: into the default partition
    await write(engine, events_between(random.Random(3), 200, lo, lo + timedelta(days=10)))
    await maintain_event_partitions(engine, months_ahead=3, today=date(2031, 1, 15))  # moves them
    assert await on_raw(engine, lambda raw: raw.fetchval(
        "SELECT count(*) FROM analytics.tenant_cost_events_default")) == 0  # fmt: skip
    assert await rollup_diffs(engine) == (0, 0)


async def test_retention_keeps_a_partition_whose_rows_are_not_in_the_rollups(engine: AsyncEngine) -> None:
    await maintain_event_partitions(engine, months_ahead=1, today=date(2031, 1, 15))
    async with (
        engine.begin() as conn
    ):  # rows that bypass the trigger (as under session_replication_role = replica)
        await conn.execute(text("ALTER TABLE analytics.tenant_cost_events DISABLE TRIGGER tenant_cost_events_hourly_insert"))  # fmt: skip
    await jan_events(engine)
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE analytics.tenant_cost_events ENABLE TRIGGER tenant_cost_events_hourly_insert"))  # fmt: skip
    plan = await maintain_event_partitions(engine, months_ahead=0, today=date(2031, 4, 10), retention_months=2, dry_run=True)  # fmt: skip
    report = await maintain_event_partitions(
        engine, months_ahead=0, today=date(2031, 4, 10), retention_months=2
    )
    for done in (plan, report):
        assert JAN not in done.dropped["tenant_cost_events"]
        assert JAN in done.dropped["agent_executions"]  # its rows went through the trigger
        [skip] = done.skipped
        assert skip == SkippedDrop("tenant_cost_events", JAN, "not_in_rollups", skip.buckets)
        assert skip.buckets > 10
    kept = "SELECT count(*) FROM analytics.tenant_cost_events_p2031_01"
    assert await on_raw(engine, lambda raw: raw.fetchval(kept)) > 300


async def test_the_recorder_folds_on_its_own(engine: AsyncEngine) -> None:
    from persistence import TimescaleIntegration

    now = datetime.now(UTC)
    async with TimescaleIntegration(engine, fold_interval=0.05) as recorder:
        for event in events_between(random.Random(2), 50, now - timedelta(hours=3), now):
            if isinstance(event, CostEvent):
                await recorder.log_cost_event(event)
            elif isinstance(event, AgentExecution):
                await recorder.log_agent_execution(event)
        await recorder.flush_all()
        for _ in range(200):
            left = await on_raw(engine, lambda raw: raw.fetchval(
                "SELECT count(*) FROM analytics.tenant_cost_hourly_deltas"))  # fmt: skip
            if left == 0:
                break
            await asyncio.sleep(0.05)
        assert left == 0
        assert await rollup_diffs(engine) == (0, 0)
        assert await recorder.agent_runs("ask-expert-v1", "t-utc", 24) == await on_raw(
            engine, lambda raw: agent_runs_scan(raw, "ask-expert-v1", "t-utc", 24)
        )
    assert isinstance(AgentRuns(1, 2).success_rate, float)


@pytest.mark.stress
def test_one_million_events_equal_a_raw_scan() -> None:
    """Must-show 3: 1M cost events and 1M agent executions (2% written late, after a fold; tenants
    in UTC, Asia/Kolkata and America/New_York): every tenant's every local day and every agent's
    windows equal a raw scan. bench_event_queries.py checks it (and exits 1 otherwise) before timing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "bench_event_queries.py"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("DB_")}
    done = subprocess.run(
        [sys.executable, str(bench), "--events", "1000000", "--samples", "1", "--rounds", "1"],
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1,020,000 cost events and 1,020,000 agent executions" in done.stdout
    assert "(all equal)" in done.stdout
