"""placeholder"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.events.conftest import scalar


async def test_probe(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO analytics.tenant_cost_events (tenant_id, time, event_id, cost_type, cost_usd, service) VALUES ('a', now(), gen_random_uuid(), 'llm', 1.5, 'openai') ON CONFLICT DO NOTHING"))
    assert await scalar(engine, "SELECT sum(cost_usd) FROM analytics.tenant_cost_hourly_deltas") == 1.5
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM analytics.tenant_cost_events_default"))
        await conn.execute(text("DELETE FROM analytics.tenant_cost_events"))
    assert await scalar(engine, "SELECT sum(cost_usd) FROM analytics.tenant_cost_hourly_deltas") == 0
