"""The ledger -> cost event link: one call, one cost event carrying its id, never counted twice, and
a tenant's daily cost from the events equal to the ledger's."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger
from persistence.errors import ValidationError
from persistence.events import (
    CostEvent,
    CostEventLink,
    TimescaleIntegration,
    backfill_cost_events,
    call_event_id,
)
from persistence.events.records import decode_event, encode_event
from tests.events.conftest import scalar

T0 = datetime(2026, 3, 10, 9, 15, tzinfo=UTC)
README = Path(__file__).resolve().parents[2] / "README.md"
ROWS = "SELECT count(*) FROM analytics.tenant_cost_events WHERE tenant_id = :t"


def recorder(engine: AsyncEngine) -> TimescaleIntegration:
    return TimescaleIntegration(engine, flush_interval=0.05)


async def test_a_logged_call_emits_one_cost_event_with_its_id_and_the_ledgers_cost(
    engine: AsyncEngine,
) -> None:
    async with recorder(engine) as events:
        link = CostEventLink(events)
        async with AICallLogger(engine, cost_events=link) as log:
            # No cost given: the ledger prices it from vendor_prices; the event carries that price.
            call_id = await log.log_call("openai", "gpt-4o", 1200, 300, organization_id="link-one",
                                         customer_id="cust_1", request_id="req-link-1", created_at=T0)  # fmt: skip
        await events.flush_all()
        assert link.stats.emitted == 1
    stored = await scalar(engine, "SELECT cost_usd FROM ai_calls WHERE id = :i", i=call_id)
    assert stored is not None and stored > 0
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT call_id, event_id, time, cost_usd, cost_type, service, service_tier, quantity, "
                    "user_id FROM analytics.tenant_cost_events WHERE tenant_id = 'link-one'"
                )
            )
        ).all()
    assert len(rows) == 1
    cid, event_id, at, cost, cost_type, service, tier, quantity, user = rows[0]
    assert (cid, event_id, at) == (call_id, call_event_id(call_id), T0)
    assert cost == stored  # the ledger's priced cost, exactly
    assert (cost_type, service, tier, quantity, user) == ("llm", "openai", "gpt-4o", 1500, "cust_1")


async def test_emitting_a_call_twice_writes_one_row(engine: AsyncEngine) -> None:
    calls: list[dict[str, Any]] = [
        {"provider": "anthropic", "model": "claude-sonnet-4-20250514", "input_tokens": 100 + i,
         "output_tokens": 20, "cost_usd": Decimal("0.001000") * (i + 1), "organization_id": "link-twice",
         "request_id": f"req-twice-{i}", "created_at": T0 + timedelta(minutes=i)}
        for i in range(5)
    ]  # fmt: skip
    async with recorder(engine) as events:
        link = CostEventLink(events)
        async with AICallLogger(engine, cost_events=link) as log:
            assert await log.log_batch(calls[:3]) == 3
            assert await log.log_batch(calls) == 2  # partly new: only the 2 new calls emit
            assert await log.log_batch(calls) == 0  # a retried batch: nothing new, nothing emitted
            first = await log.log_call(**calls[0])  # a retried call: its stored id, not emitted again
        # The caller also logs one by hand with the call id and time, and a backfill runs over the window.
        await events.log_cost_event(
            CostEvent(
                tenant_id="link-twice",
                cost_type="llm",
                cost_usd=Decimal("0.001"),
                service="anthropic",
                time=T0,
                call_id=first,
            )
        )
        assert await backfill_cost_events(engine, events, T0, T0 + timedelta(hours=1)) == 5
        await events.flush_all()
        assert link.stats.emitted == 5
    assert await scalar(engine, ROWS, t="link-twice") == 5
    total = await scalar(
        engine, "SELECT sum(cost_usd) FROM analytics.tenant_cost_events WHERE tenant_id = 'link-twice'"
    )
    assert total == Decimal("0.015")


async def test_daily_cost_from_events_equals_the_ledgers_for_the_tenant_day(engine: AsyncEngine) -> None:
    day = date(2026, 3, 11)
    start = datetime(2026, 3, 10, 20, tzinfo=UTC)  # 20:00 UTC the day before .. 27 h later
    calls: list[dict[str, Any]] = [
        {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 500 + 37 * i, "output_tokens": 50 + i,
         "organization_id": "link-day", "request_id": f"req-day-{i}",
         "created_at": start + timedelta(minutes=41 * i)}
        for i in range(40)
    ]  # fmt: skip
    # Unpriced (no price in force, no cost given): the ledger counts 0 for it, the link emits nothing.
    unpriced: dict[str, Any] = {"provider": "openai", "model": "no-such-model-x", "input_tokens": 10, "output_tokens": 1,
                "organization_id": "link-day", "request_id": "req-day-unpriced", "created_at": start}  # fmt: skip
    async with recorder(engine) as events:
        link = CostEventLink(events)
        async with AICallLogger(engine, cost_events=link) as log:
            await log.log_batch(calls[:20])
            for c in calls[20:]:
                await log.log_call(**c)
            await log.log_call(**unpriced)
            await log.fold_rollups()
            await link.drain()
            assert link.stats.skipped == 1
            for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
                ledger = await log.get_tenant_daily_cost("link-day", day, time_zone=zone)
                from_events = await events.get_tenant_daily_cost("link-day", day, time_zone=zone)
                assert from_events == ledger, zone
                assert ledger > 0
    assert await scalar(engine, ROWS, t="link-day") == 40


async def test_a_closed_recorder_never_fails_the_call(engine: AsyncEngine) -> None:
    events = recorder(engine)
    await events.close()
    link = CostEventLink(events)
    async with AICallLogger(engine, cost_events=link) as log:
        call_id = await log.log_call("openai", "gpt-4o", 10, 1, cost_usd=Decimal("0.01"), organization_id="link-closed",
                                     request_id="req-closed")  # fmt: skip
    assert call_id > 0
    assert link.stats.failed == 1 and link.stats.emitted == 0
    assert await scalar(engine, ROWS, t="link-closed") == 0


def test_a_call_id_fixes_the_event_id_and_needs_the_calls_time() -> None:
    event = CostEvent(tenant_id="t", cost_type="llm", cost_usd=1, service="openai", time=T0, call_id=7)
    assert event.event_id == call_event_id(7)
    assert decode_event(encode_event(event)) == event  # the spool keeps the call id
    with pytest.raises(ValidationError, match="call's time"):
        CostEvent(tenant_id="t", cost_type="llm", cost_usd=1, service="openai", call_id=7)
    with pytest.raises(ValidationError, match="event_id of call 7"):
        CostEvent(tenant_id="t", cost_type="llm", cost_usd=1, service="openai", time=T0, call_id=7,
                  event_id=call_event_id(8))  # fmt: skip


async def test_the_table_holds_a_call_to_its_event_id(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        with pytest.raises(IntegrityError, match="ck_tenant_cost_events_event_id_of_call"):
            await conn.execute(
                text(
                    "INSERT INTO analytics.tenant_cost_events (tenant_id, time, event_id, cost_type, cost_usd, "
                    "service, call_id) VALUES ('t', now(), gen_random_uuid(), 'llm', 1, 'openai', 7)"
                )
            )
        await conn.rollback()
        ok = call_event_id(7)
        await conn.execute(
            text(
                "INSERT INTO analytics.tenant_cost_events (tenant_id, time, event_id, cost_type, cost_usd, "
                "service, call_id) VALUES ('t', now(), :e, 'llm', 1, 'openai', 7)"
            ),
            {"e": ok},
        )


async def test_readme_link_block_runs(engine: AsyncEngine) -> None:
    section = README.read_text().split("**Cost events and the ledger.**", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec("async def snippet(engine):\n" + "".join(f"    {line}\n" for line in code.splitlines()), namespace)  # noqa: S102 (our README)
    await namespace["snippet"](engine)
    assert await scalar(engine, ROWS, t="acme") == 1
    assert await scalar(
        engine,
        "SELECT e.cost_usd = c.cost_usd FROM analytics.tenant_cost_events e JOIN ai_calls c ON c.id = e.call_id",
    )
