"""Seeded events (seed 004): counts per table, determinism, a month of days, realistic agents, cost
events that agree with the seeded ledger, partitions for the window, idempotence and refusal."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.events import call_event_id
from persistence.seeding import SeedPlan, seed_database
from persistence.seeding.events import (
    AGENTS,
    make_agent_executions,
    make_cost_events,
    make_platform_events,
)
from persistence.seeding.generate import Clock

AS_OF = datetime(2026, 10, 14, tzinfo=UTC)
MONTH = SeedPlan(
    claims=5, ai_calls=600, platform_events=3000, agent_executions=1500, cost_events=300, days=30, as_of=AS_OF
)
EVENT_TABLES = ("analytics.platform_events", "analytics.tenant_cost_events", "analytics.agent_executions")


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def test_each_event_table_gets_the_planned_rows_and_each_seeded_call_its_cost_event(
    engine: AsyncEngine,
) -> None:
    report = await seed_database(engine, MONTH)
    assert report.inserted["analytics.platform_events"] == 3000
    assert report.inserted["analytics.agent_executions"] == 1500
    # The non-LLM costs, plus one llm event per seeded call (every seeded call is priced and tenanted).
    assert report.inserted["analytics.tenant_cost_events"] == 300 + 600
    [(linked, llm, calls)] = await rows(
        engine,
        "SELECT count(call_id), count(*) FILTER (WHERE cost_type = 'llm'), (SELECT count(*) FROM ai_calls) "
        "FROM analytics.tenant_cost_events",
    )
    assert linked == llm == calls == 600


async def test_a_month_of_days_is_covered_by_every_event_table(engine: AsyncEngine) -> None:
    await seed_database(engine, MONTH)
    days = {(AS_OF - timedelta(days=d + 1)).date() for d in range(30)}
    for table in EVENT_TABLES:
        found = await rows(
            engine,
            f"SELECT DISTINCT (time AT TIME ZONE 'UTC')::date FROM {table}",
        )
        assert {d for (d,) in found} == days, table
    # Nothing outside [as_of - 30 days, as_of), nothing in a default partition.
    for table in EVENT_TABLES:
        [(lo, hi)] = await rows(engine, f"SELECT min(time), max(time) FROM {table}")
        assert AS_OF - timedelta(days=30) <= lo and hi < AS_OF
        assert await rows(engine, f"SELECT 1 FROM {table}_default") == []


async def test_the_calls_cost_events_give_the_ledgers_daily_cost_per_tenant(engine: AsyncEngine) -> None:
    await seed_database(engine, MONTH)
    ledger = await rows(
        engine,
        "SELECT organization_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd) FROM ai_calls "
        "GROUP BY 1, 2 ORDER BY 1, 2",
    )
    events = await rows(
        engine,
        "SELECT tenant_id, (time AT TIME ZONE 'UTC')::date, sum(cost_usd) FROM analytics.tenant_cost_events "
        "WHERE call_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert len(ledger) > 30 and events == ledger
    mismatched = await rows(
        engine,
        "SELECT e.call_id FROM analytics.tenant_cost_events e JOIN ai_calls c ON c.id = e.call_id "
        "WHERE (e.time, e.tenant_id, e.cost_usd) IS DISTINCT FROM (c.created_at, c.organization_id, c.cost_usd)",
    )
    assert mismatched == []
    [(event_id, call_id)] = await rows(
        engine, "SELECT event_id, call_id FROM analytics.tenant_cost_events WHERE call_id IS NOT NULL LIMIT 1"
    )
    assert event_id == call_event_id(call_id)


async def test_agents_have_realistic_success_rates_and_scores(engine: AsyncEngine) -> None:
    await seed_database(engine, dataclasses.replace(MONTH, agent_executions=6000))
    per_agent = await rows(
        engine,
        "SELECT agent_id, avg(success::int), avg(quality_score), count(*) FILTER (WHERE NOT success AND "
        "(error_message IS NULL OR quality_score IS NOT NULL)), count(*) FILTER (WHERE success AND "
        "error_message IS NOT NULL), min(quality_score), max(quality_score), "
        "avg(hallucination_detected::int) FILTER (WHERE success) "
        "FROM analytics.agent_executions GROUP BY agent_id",
    )
    expected = {a.agent_id: a for a in AGENTS}
    assert {r[0] for r in per_agent} == set(expected)
    for agent_id, rate, quality, bad_failures, bad_successes, low, high, hallucinated in per_agent:
        assert abs(float(rate) - expected[agent_id].success) < 0.04, agent_id
        assert 0.7 < quality < 0.97 and Decimal(0) <= low and high <= Decimal(1)
        assert bad_failures == bad_successes == 0  # failures carry an error and no score
        assert 0 < hallucinated < 0.1


def test_generation_is_a_function_of_the_seed() -> None:
    clock = Clock(AS_OF, MONTH.days)
    small = dataclasses.replace(MONTH, platform_events=200, agent_executions=100, cost_events=50)
    for make in (make_platform_events, make_agent_executions, make_cost_events):
        first = make(small, clock)
        assert first == make(small, Clock(AS_OF, MONTH.days))  # same plan, same events (ids, times, data)
        other = make(dataclasses.replace(small, seed=7), clock)
        assert {e.event_id for e in other} == {e.event_id for e in first}  # keys depend on the index only
        assert [e.time for e in other] != [e.time for e in first]
        # A larger plan is a superset of a smaller one.
        larger = make(
            dataclasses.replace(small, platform_events=300, agent_executions=150, cost_events=80), clock
        )
        assert all(event in larger for event in first)


async def test_a_rerun_adds_no_event_and_another_seed_is_refused(engine: AsyncEngine) -> None:
    first = await seed_database(engine, MONTH)
    again = await seed_database(engine, dataclasses.replace(MONTH, as_of=None))
    assert all(again.inserted[t] == 0 for t in EVENT_TABLES)
    assert again.after == first.after
    grown = await seed_database(engine, dataclasses.replace(MONTH, platform_events=3500, ai_calls=650))
    assert grown.inserted["analytics.platform_events"] == 500
    assert grown.inserted["analytics.tenant_cost_events"] == 50  # the 50 new calls' cost events
    with pytest.raises(ValueError, match="pass --reset"):
        await seed_database(engine, dataclasses.replace(MONTH, seed=7))
    assert (
        await seed_database(engine, dataclasses.replace(MONTH, seed=7), reset=True)
    ).before == dict.fromkeys(first.after, 0)
