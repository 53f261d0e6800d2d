"""The AI-call ledger and seed 004's events as a service logs in, under row-level security (revision 0026).

A service role writes each call and event as its own tenant (COPY, which PostgreSQL refuses under
RLS, replaced by per-tenant INSERTs in the batch's one transaction), cannot write for another tenant
inside a `tenant()` context, and reads a tenant's numbers as that tenant; folds and cross-tenant
reads are the owner's. Every count is checked as the superuser (the tables' owner) sees it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import logger as logger_module
from persistence.ai_calls.batch import BatchLogger
from persistence.ai_calls.leases import Leases
from persistence.ai_calls.logger import AICallLogger
from persistence.ai_calls.price_api import add_price
from persistence.ai_calls.record import AICallRecord
from persistence.ai_calls.rollups import fold_rollups
from persistence.ai_calls.tenant_cost import get_tenant_daily_cost
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import ConflictError, Endpoint, TenantIsolationError
from persistence.events import AgentExecution, CostEvent, PlatformEvent, TimescaleIntegration
from persistence.events.ledger_link import CostEventLink
from persistence.events.rollups import fold_event_rollups
from persistence.events.writer import write_events
from persistence.observe.hooks import BaseHook, QueryEvent
from persistence.tenancy import in_tenant_transaction, tenant
from persistence.testing.pytest_plugin import LoginAs

pytestmark = pytest.mark.commits

# Seconds before a writer that would retry forever (COPY refused under RLS, taken for an outage)
# counts as failed: a guard against a hang, not a measurement.
HANG = 30.0

CALLS = "SELECT organization_id, request_id FROM ai_calls ORDER BY organization_id, request_id"
KEYS = "SELECT organization_id, count(*) FROM ai_call_keys GROUP BY 1 ORDER BY 1"
EVENTS = (
    "SELECT 'platform', tenant_id, count(*) FROM analytics.platform_events GROUP BY 2 UNION ALL "
    "SELECT 'cost', tenant_id, count(*) FROM analytics.tenant_cost_events GROUP BY 2 UNION ALL "
    "SELECT 'agent', tenant_id, count(*) FROM analytics.agent_executions GROUP BY 2 ORDER BY 1, 2"
)


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


def call(organization_id: str | None, request_id: str, cost: str = "0.01") -> AICallRecord:
    return AICallRecord.coerce(
        {
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 10,
            "output_tokens": 5,
            "cost_usd": Decimal(cost),
            "organization_id": organization_id,
            "request_id": request_id,
        }
    )


async def test_log_call_as_a_service_acts_as_the_calls_organization(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    async with login_as("persistence_service") as svc, AICallLogger(svc, fold_every=None) as ledger:
        first = await ledger.log_record(call("a", "r1"))
        await ledger.log_record(call("b", "r2"))
        assert await ledger.log_record(call("a", "r1")) == first  # a retry: the same id, nothing new
        with pytest.raises(TenantIsolationError):  # no organization: no tenant's row, refused first
            await ledger.log_record(call(None, "r3"))
    assert await rows(engine, CALLS) == [("a", "r1"), ("b", "r2")]


async def test_the_row_security_argument_is_deprecated(login_as: LoginAs) -> None:
    async with login_as("persistence_service") as svc:
        with pytest.warns(DeprecationWarning, match="row_security"):
            ledger = AICallLogger(svc, fold_every=None, row_security=True)
        async with ledger:
            await ledger.log_record(call("a", "r1"))


async def test_log_batch_of_two_organizations_lands_once_with_its_rollup_bookkeeping(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    batch = [call("a", "a1"), call("b", "b1"), call("a", "a2", "0.5"), call("b", "b2")]
    async with login_as("persistence_service") as svc, AICallLogger(svc, fold_every=None) as ledger:
        assert await ledger.log_batch(batch) == 4
        assert await ledger.log_batch(batch) == 0  # a lost acknowledgement, replayed
        assert await ledger.log_batch([*batch, call("b", "b3")]) == 1
        with pytest.raises(ConflictError):  # a key reused for another call: nothing of the batch written
            await ledger.log_batch([call("a", "a4"), call("b", "b1", "9")])
        with pytest.raises(TenantIsolationError):
            await ledger.log_batch([call("a", "a5"), call(None, "none")])
        # The service reads its tenants' cost as them (the pending batches' rows, before any fold).
        assert await ledger.get_tenant_daily_cost("a") == Decimal("0.51")
        assert await get_tenant_daily_cost(svc, "b") == Decimal("0.03")
        with pytest.raises(TenantIsolationError):  # platform work: the service's folds would lose rows
            await ledger.fold_rollups()
        with pytest.raises(TenantIsolationError):
            await ledger.get_stats(
                datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(hours=1)
            )
    assert await rows(engine, CALLS) == [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"), ("b", "b3")]
    assert await rows(engine, KEYS) == [("a", 2), ("b", 3)]
    assert await fold_rollups(engine) == 5  # the owner folds every pending batch the service recorded
    assert await rows(
        engine, "SELECT organization_id, sum(calls)::int FROM ai_call_usage_hourly GROUP BY 1 ORDER BY 1"
    ) == [("a", 2), ("b", 3)]


async def test_ingest_and_batch_logger_as_a_service(engine: AsyncEngine, login_as: LoginAs) -> None:
    loaded = [call("ab"[i % 2], f"i{i}") for i in range(9)]
    async with login_as("persistence_service") as svc, AICallLogger(svc, fold_every=None) as ledger:
        assert await ledger.ingest(loaded, batch_size=4, concurrency=2) == 9
        assert await ledger.ingest(loaded, batch_size=4) == 0
        # The writer task starts inside tenant("a"), yet writes b's calls logged outside the context.
        buffered = BatchLogger(ledger, batch_size=2)
        try:
            async with tenant("a"):
                await buffered.log(call("a", "q1"))
            await buffered.log(call("b", "q2"))
            await buffered.log(call("b", "q3"))
            await asyncio.wait_for(buffered.flush(), HANG)
            assert buffered.stats.written == 3
        finally:
            await buffered.close(timeout=HANG)
    assert await rows(engine, KEYS) == [("a", 6), ("b", 6)]


async def test_a_batch_writer_started_inside_a_tenant_context_serves_every_tenant(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    """The writer task (and the cost events it hands on) must not keep the context it started in."""
    async with login_as("persistence_service") as svc:
        recorder = TimescaleIntegration(svc, fold_interval=None)
        try:
            link = CostEventLink(recorder)
            async with AICallLogger(svc, fold_every=None, cost_events=link) as ledger:
                buffered = BatchLogger(ledger, batch_size=1)
                try:
                    async with tenant("a"):
                        await buffered.log(call("a", "w1"))
                    await buffered.log(call("b", "w2"))
                    await asyncio.wait_for(buffered.flush(), HANG)
                finally:
                    await buffered.close(timeout=HANG)
            await asyncio.wait_for(recorder.flush_all(), HANG)
            assert (link.stats.emitted, link.stats.failed) == (2, 0)
        finally:
            await recorder.close(timeout=HANG)
    assert await rows(engine, KEYS) == [("a", 1), ("b", 1)]
    assert await rows(engine, EVENTS) == [("cost", "a", 1), ("cost", "b", 1)]


async def test_a_tenant_context_cannot_log_another_tenants_call_or_event(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    async with login_as("persistence_service") as svc, tenant("a"):
        async with AICallLogger(svc, fold_every=None) as ledger:
            with pytest.raises(TenantIsolationError):
                await ledger.log_record(call("b", "b1"))
            with pytest.raises(TenantIsolationError):  # the whole batch, a's call too
                await ledger.log_batch([call("a", "a1"), call("b", "b2")])
            buffered = BatchLogger(ledger)
            try:
                with pytest.raises(TenantIsolationError):
                    await buffered.log(call("b", "b3"))
            finally:
                await buffered.close(timeout=HANG)
            with pytest.raises(TenantIsolationError):
                await ledger.get_tenant_daily_cost("b")
        recorder = TimescaleIntegration(svc, fold_interval=None)
        try:
            with pytest.raises(TenantIsolationError):
                await recorder.log_cost_event(
                    CostEvent(tenant_id="b", cost_type="llm", cost_usd=1, service="openai")
                )
            await recorder.flush_all()
            assert recorder.stats.queued == 0
            with pytest.raises(TenantIsolationError):
                await recorder.get_tenant_daily_cost("b")
        finally:
            await recorder.close(timeout=HANG)
    assert await rows(engine, CALLS) == []
    assert await rows(engine, EVENTS) == []


def tenant_events(
    tenant_id: str, cost: str, now: datetime
) -> list[PlatformEvent | CostEvent | AgentExecution]:
    return [
        PlatformEvent(tenant_id=tenant_id, event_type="page_view", event_category="user_behavior", time=now),
        CostEvent(tenant_id=tenant_id, cost_type="llm", cost_usd=Decimal(cost), service="openai", time=now),
        CostEvent(tenant_id=tenant_id, cost_type="llm", cost_usd=Decimal(cost), service="openai", time=now),
        AgentExecution(tenant_id=tenant_id, agent_id="ask", agent_type="ask_expert", execution_time_ms=5,
                       success=True, time=now),
        AgentExecution(tenant_id=tenant_id, agent_id="ask", agent_type="ask_expert", execution_time_ms=5,
                       success=tenant_id == "a", time=now),
    ]  # fmt: skip


async def test_events_of_two_tenants_land_once_and_the_seed_queries_answer_per_tenant(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    now = datetime.now(UTC) - timedelta(minutes=1)
    mixed = [
        e
        for pair in zip(tenant_events("a", "0.25", now), tenant_events("b", "2", now), strict=True)
        for e in pair
    ]
    async with login_as("persistence_service") as svc:
        recorder = TimescaleIntegration(svc, batch_size=len(mixed), fold_interval=0.01)
        try:
            for event in mixed:
                if isinstance(event, PlatformEvent):
                    await recorder.log_platform_event(event)
                elif isinstance(event, CostEvent):
                    await recorder.log_cost_event(event)
                else:
                    await recorder.log_agent_execution(event)
            await asyncio.wait_for(recorder.flush_all(), HANG)
            assert recorder.stats.written == len(mixed)
            assert await recorder.get_tenant_daily_cost("a", now) == Decimal("0.5")
            assert await recorder.get_tenant_daily_cost("b", now) == Decimal("4")
            assert await recorder.get_agent_success_rate("ask", "a") == 100.0
            assert await recorder.get_agent_success_rate("ask", "b") == 50.0
            async with tenant("b"):
                assert await recorder.get_tenant_daily_cost("b", now) == Decimal("4")
            # The periodic fold is platform work: it ends at its first turn instead of failing each one.
            assert recorder._folder is not None
            await asyncio.wait_for(recorder._folder, HANG)
        finally:
            await recorder.close(timeout=HANG)
        leases = Leases(svc, 1, Endpoint.of_url(svc.url))
        try:
            assert await leases.attempts(write_events, mixed) == 0  # a replayed batch: nothing twice
        finally:
            await leases.close()
        with pytest.raises(TenantIsolationError):
            await fold_event_rollups(svc)
    assert await rows(engine, EVENTS) == [
        ("agent", "a", 2), ("agent", "b", 2), ("cost", "a", 2), ("cost", "b", 2), ("platform", "a", 1),
        ("platform", "b", 1),
    ]  # fmt: skip
    folded = await fold_event_rollups(engine)  # the triggers' deltas waited for the owner
    assert (folded.cost_deltas, folded.agent_deltas) == (2, 2)  # one delta row per tenant and hour


def unpriced_call(organization_id: str, request_id: str) -> AICallRecord:
    return AICallRecord.coerce(
        {"provider": "openai", "model": "rls-priced", "input_tokens": 1_000_000, "output_tokens": 0,
         "organization_id": organization_id, "request_id": request_id}
    )  # fmt: skip


async def test_a_service_prices_each_organizations_calls_at_its_own_override(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    """Under RLS a service sees the list prices and only the current tenant's overrides: the logger
    loads each organization's overrides as that tenant, so no call is priced at list price by mistake."""
    since = datetime.now(UTC) - timedelta(days=1)
    await add_price(engine, "openai", "rls-priced", input_per_mtok=Decimal("2"), output_per_mtok=Decimal("8"),
                    effective_from=since)  # fmt: skip
    await add_price(engine, "openai", "rls-priced", input_per_mtok=Decimal("1.5"), output_per_mtok=Decimal("6"),
                    effective_from=since, tenant_id="a")  # fmt: skip
    async with login_as("persistence_service") as svc, AICallLogger(svc, fold_every=None) as ledger:
        await ledger.log_record(unpriced_call("b", "one-b"))  # the book is loaded without a tenant first
        await ledger.log_record(unpriced_call("a", "one-a"))
        await ledger.log_batch([unpriced_call("a", "batch-a"), unpriced_call("b", "batch-b")])
        # A price entered while the logger runs reaches the next call of that organization too.
        await add_price(engine, "openai", "rls-priced", input_per_mtok=Decimal("1.25"),
                        output_per_mtok=Decimal("5"), effective_from=since, tenant_id="b",
                        min_input_tokens=500_000)  # fmt: skip
        await ledger.log_record(unpriced_call("b", "later-b"))
    costs = await rows(engine, "SELECT request_id, cost_usd FROM ai_calls ORDER BY request_id")
    assert costs == [("batch-a", Decimal("1.500000")), ("batch-b", Decimal("2.000000")),
                     ("later-b", Decimal("1.250000")), ("one-a", Decimal("1.500000")),
                     ("one-b", Decimal("2.000000"))]  # fmt: skip


@dataclass
class Queries(BaseHook):
    events: list[QueryEvent] = field(default_factory=list)

    def on_query(self, event: QueryEvent) -> None:
        self.events.append(event)


async def test_hooks_report_a_batch_under_rls_as_its_inserts(
    login_as: LoginAs, fresh_database: DatabaseConfig
) -> None:
    queries = Queries()
    async with login_as("persistence_service") as svc:
        hooked = build_engine(fresh_database.model_copy(update={"user": svc.url.username}), hooks=[queries])
        try:
            async with AICallLogger(hooked, fold_every=None) as ledger:
                assert await ledger.log_batch([call("a", "h1"), call("b", "h2")]) == 2
        finally:
            await hooked.dispose()
    batch = [e for e in queries.events if e.table == "ai_calls" and e.rows == 2]
    assert [(e.operation, e.statement.split(" (")[0]) for e in batch] == [("INSERT", "INSERT INTO ai_calls")]


async def test_a_price_book_reloaded_while_overrides_load_never_prices_at_list_price(
    engine: AsyncEngine, login_as: LoginAs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another task reloads the book (a price entered, a miss) while a batch loads its organizations'
    overrides one by one: the batch loads them again into the new book instead of pricing the
    organizations loaded before the reload at list price."""
    since = datetime.now(UTC) - timedelta(days=1)
    await add_price(engine, "openai", "rls-priced", input_per_mtok=Decimal("2"), output_per_mtok=Decimal("8"),
                    effective_from=since)  # fmt: skip
    for org, price in (("a", "1.5"), ("b", "1.75")):
        await add_price(engine, "openai", "rls-priced", input_per_mtok=Decimal(price), output_per_mtok=Decimal("6"),
                        effective_from=since, tenant_id=org)  # fmt: skip
    real = in_tenant_transaction
    reloads: list[int] = []

    async def reloading(raw: Any, tenant_id: str, work: Any) -> Any:
        if tenant_id == "b" and not reloads:
            reloads.append(await ledger.reload_prices())  # on another connection, as another task would
        return await real(raw, tenant_id, work)

    monkeypatch.setattr(logger_module, "in_tenant_transaction", reloading)
    async with login_as("persistence_service") as svc, AICallLogger(svc, fold_every=None) as ledger:
        await ledger.log_batch([unpriced_call("a", "r-a"), unpriced_call("b", "r-b")])
    assert reloads  # the reload happened between the two organizations' loads
    costs = await rows(engine, "SELECT request_id, cost_usd FROM ai_calls ORDER BY request_id")
    assert costs == [("r-a", Decimal("1.500000")), ("r-b", Decimal("1.750000"))]
