"""Event partitions: what the migration leaves, partitions made ahead, default rows moved."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import CostEvent, PlatformEvent, TimescaleIntegration, maintain_event_partitions
from persistence.events.partitions import event_partitions
from tests.events.conftest import scalar
from tests.logs import capture_logs

WHERE = "SELECT tableoid::regclass::text FROM analytics.{table} WHERE tenant_id = :t"


async def test_the_migration_leaves_days_months_and_defaults(engine: AsyncEngine) -> None:
    existing, defaults = await event_partitions(engine)
    today = datetime.now(UTC).date()
    assert today in existing["platform_events"]
    assert today.replace(day=1) in existing["tenant_cost_events"]
    assert today.replace(day=1) in existing["agent_executions"]
    assert defaults == {"platform_events", "tenant_cost_events", "agent_executions"}


async def test_partitions_made_ahead_take_their_rows_out_of_the_default(engine: AsyncEngine) -> None:
    day = date(2031, 1, 30)
    at = datetime(2031, 1, 31, 23, 59, 59, tzinfo=UTC)
    recorder = TimescaleIntegration(engine)
    try:
        await recorder.log_platform_event(
            PlatformEvent(tenant_id="t-part", event_type="x", event_category="system_health", time=at)
        )
        await recorder.log_cost_event(
            CostEvent(tenant_id="t-part", cost_type="compute", cost_usd=Decimal(1), service="aws", time=at)
        )
        await recorder.flush_all()
    finally:
        await recorder.close()
    assert await scalar(engine, WHERE.format(table="platform_events"), t="t-part") == (
        "analytics.platform_events_default"
    )

    plan = await maintain_event_partitions(engine, days_ahead=2, months_ahead=1, today=day, dry_run=True)
    assert plan.created["platform_events"] == [day, day + timedelta(days=1), day + timedelta(days=2)]
    assert plan.created["tenant_cost_events"] == [date(2031, 1, 1), date(2031, 2, 1)]
    assert plan.defaults_created == []
    assert await scalar(engine, WHERE.format(table="platform_events"), t="t-part") == (
        "analytics.platform_events_default"
    )  # a dry run changes nothing

    report = await maintain_event_partitions(engine, days_ahead=2, months_ahead=1, today=day)
    assert report.created == plan.created
    assert await scalar(engine, WHERE.format(table="platform_events"), t="t-part") == (
        "analytics.platform_events_p2031_01_31"
    )
    assert await scalar(engine, WHERE.format(table="tenant_cost_events"), t="t-part") == (
        "analytics.tenant_cost_events_p2031_01"
    )
    again = await maintain_event_partitions(engine, days_ahead=2, months_ahead=1, today=day)
    assert again.created == {"platform_events": [], "tenant_cost_events": [], "agent_executions": []}
    async with engine.connect() as conn:
        bounds = await conn.scalar(
            text(
                "SELECT pg_get_expr(relpartbound, oid) FROM pg_class "
                "WHERE relname = 'platform_events_p2031_01_31'"
            )
        )
    assert bounds == "FOR VALUES FROM ('2031-01-31 00:00:00+00') TO ('2031-02-01 00:00:00+00')"


async def test_retention_drops_whole_partitions_past_the_cutoff_and_rows_in_a_default_alert(
    engine: AsyncEngine,
) -> None:
    day = date(2031, 3, 10)
    await maintain_event_partitions(engine, days_ahead=1, months_ahead=0, today=day)
    recorder = TimescaleIntegration(engine)
    try:
        for at in (datetime(2031, 3, 10, 12, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC)):
            await recorder.log_cost_event(
                CostEvent(
                    tenant_id="t-keep", cost_type="storage", cost_usd=Decimal(2), service="supabase", time=at
                )
            )
        await recorder.flush_all()
    finally:
        await recorder.close()
    later = date(2031, 4, 2)
    with capture_logs() as logs:
        report = await maintain_event_partitions(
            engine, days_ahead=0, months_ahead=0, retention_days=20, retention_months=1, today=later
        )
    # Platform days ending on or before 2031-03-13 go; months ending on or before 2031-03-01 go.
    assert report.dropped["platform_events"][-2:] == [date(2031, 3, 10), date(2031, 3, 11)]
    assert date(2031, 3, 1) not in report.dropped["tenant_cost_events"]
    assert datetime.now(UTC).date().replace(day=1) in report.dropped["tenant_cost_events"]
    existing, _ = await event_partitions(engine)
    assert existing["platform_events"] == [later]
    assert existing["tenant_cost_events"] == [date(2031, 3, 1), date(2031, 4, 1)]
    assert (
        await scalar(engine, "SELECT count(*) FROM analytics.tenant_cost_events WHERE tenant_id = 't-keep'")
        == 2
    )
    assert report.default_rows == {"platform_events": 0, "tenant_cost_events": 1, "agent_executions": 0}
    alerts = [line for line in logs if line["event"].startswith("rows in a default partition")]
    assert [line["table"] for line in alerts] == ["analytics.tenant_cost_events_default"]
