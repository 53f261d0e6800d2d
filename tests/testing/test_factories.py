"""Every factory builds an object the real schema accepts, and `create` persists it (and its parents)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import factory
import factory.random
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from persistence.ai_calls import TokenUsage, normalise_usage
from persistence.models import AICall, Base, Claim, ModelCheckpoint, TrainingData
from persistence.seeding import call_cost, decide_consensus
from persistence.testing import (
    AgentExecutionHourlyDeltaFactory,
    AgentExecutionHourlyFactory,
    AgentExecutionRowFactory,
    AICallFactory,
    AICallKeyFactory,
    AICallModelHourlyFactory,
    AICallPendingBatchFactory,
    AICallUsageDeltaFactory,
    AICallUsageHourlyFactory,
    ApiKeyFactory,
    AuditLogFactory,
    BillingDataFactory,
    BillingPeriodFactory,
    BillingValidationFactory,
    ClaimFactory,
    CompanyFactory,
    CompanyQuotaFactory,
    ConsensusDecisionFactory,
    CostAccuracyValidationFactory,
    CostAlertFactory,
    CostAlertFiringFactory,
    CostAlertLogFactory,
    ModelCheckpointFactory,
    PlatformEventRowFactory,
    QuotaCounterFactory,
    QuotaFactory,
    QuotaHoldFactory,
    QuotaReservationFactory,
    RateLimitConfigFactory,
    RateLimitResetFactory,
    RateLimitSlotFactory,
    RateLimitStateFactory,
    ReconciliationReportFactory,
    RequestHistoryFactory,
    RequestInflightFactory,
    RequestStatsDailyFactory,
    RequestStatsDeltaFactory,
    RequestTransitionFactory,
    ResultCacheEntryFactory,
    ResultChunkFactory,
    ResultFactory,
    ServiceHealthFactory,
    TenantCostEventRowFactory,
    TenantCostHourlyDeltaFactory,
    TenantCostHourlyFactory,
    TrainingDataFactory,
    UsageFactory,
    UserFactory,
    VendorPriceFactory,
    VerificationResultFactory,
    create,
    create_batch,
)

ALL_FACTORIES: list[type[factory.Factory[Any]]] = [
    ClaimFactory,
    VerificationResultFactory,
    ConsensusDecisionFactory,
    TrainingDataFactory,
    ModelCheckpointFactory,
    ServiceHealthFactory,
    AuditLogFactory,
    AICallFactory,
    ReconciliationReportFactory,
    AICallKeyFactory,
    VendorPriceFactory,
    AICallUsageDeltaFactory,
    AICallUsageHourlyFactory,
    AICallModelHourlyFactory,
    AICallPendingBatchFactory,
    CostAlertFactory,
    CostAlertFiringFactory,
    CostAlertLogFactory,
    RateLimitConfigFactory,
    RateLimitStateFactory,
    RateLimitSlotFactory,
    CompanyQuotaFactory,
    BillingPeriodFactory,
    BillingDataFactory,
    BillingValidationFactory,
    CostAccuracyValidationFactory,
    CompanyFactory,
    UserFactory,
    ApiKeyFactory,
    QuotaFactory,
    QuotaCounterFactory,
    QuotaReservationFactory,
    QuotaHoldFactory,
    RateLimitResetFactory,
    UsageFactory,
    RequestInflightFactory,
    RequestHistoryFactory,
    RequestStatsDailyFactory,
    RequestStatsDeltaFactory,
    RequestTransitionFactory,
    ResultFactory,
    ResultChunkFactory,
    ResultCacheEntryFactory,
    PlatformEventRowFactory,
    TenantCostEventRowFactory,
    AgentExecutionRowFactory,
    TenantCostHourlyFactory,
    TenantCostHourlyDeltaFactory,
    AgentExecutionHourlyFactory,
    AgentExecutionHourlyDeltaFactory,
]


def test_there_is_a_factory_for_every_model() -> None:
    covered = {f._meta.get_model_class() for f in ALL_FACTORIES}
    assert covered == {mapper.class_ for mapper in Base.registry.mappers}


@pytest.mark.parametrize("factory_class", ALL_FACTORIES, ids=lambda f: f.__name__)
async def test_factory_output_is_accepted_by_the_database(
    session: AsyncSession, factory_class: type[factory.Factory[Any]]
) -> None:
    model = factory_class._meta.get_model_class()
    # Reference data loaded by migrations (vendor_prices) is already there: count what create adds.
    before = await session.scalar(select(func.count()).select_from(model))
    obj = await create(session, factory_class)
    await session.refresh(obj)
    count = await session.scalar(select(func.count()).select_from(model))
    assert count == (before or 0) + 1
    for name in ("created_at", "updated_at", "last_heartbeat", "period_start", "period_end", "generated_at"):
        value = getattr(obj, name, None)
        if value is not None and not (
            isinstance(value, date) and not isinstance(value, datetime)
        ):  # local dates
            assert isinstance(value, datetime)
            assert value.utcoffset() is not None, f"{model.__name__}.{name} is naive"


async def test_create_batch_persists_distinct_rows(session: AsyncSession) -> None:
    claims = await create_batch(session, ClaimFactory, 5)
    checkpoints = await create_batch(
        session, ModelCheckpointFactory, 5, model_name="verifier", framework="logical"
    )
    assert len({c.external_id for c in claims}) == 5
    assert len({c.version for c in checkpoints}) == 5
    assert await session.scalar(select(func.count()).select_from(Claim)) == 5
    assert await session.scalar(select(func.count()).select_from(ModelCheckpoint)) == 5


async def test_training_data_claim_is_persisted_with_it(session: AsyncSession) -> None:
    example = await create(session, TrainingDataFactory)
    assert example.claim is not None
    assert example.claim_id == example.claim.id
    stored = await session.get(Claim, example.claim_id)
    assert stored is not None
    assert example.claim_text == stored.content


async def test_training_data_can_share_an_existing_claim(session: AsyncSession) -> None:
    claim = await create(session, ClaimFactory, claim_type="medical")
    examples = await create_batch(session, TrainingDataFactory, 3, claim=claim)
    assert {e.claim_id for e in examples} == {claim.id}
    assert await session.scalar(select(func.count()).select_from(Claim)) == 1
    assert await session.scalar(select(func.count()).where(TrainingData.claim_id == claim.id)) == 3


async def test_training_data_used_trait_sets_a_batch(session: AsyncSession) -> None:
    example = await create(session, TrainingDataFactory, used=True, framework="logical")
    assert example.used_in_training is True
    assert example.training_batch_id is not None
    assert example.training_batch_id.startswith("tb-logical-")


async def test_overrides_win(session: AsyncSession) -> None:
    claim = await create(session, ClaimFactory, external_id="claim-override", content="Water boils at 90 C.")
    call = await create(
        session, AICallFactory, model="gpt-4o", input_tokens=1000, output_tokens=500, cache_read_tokens=0
    )
    assert (claim.external_id, claim.content) == ("claim-override", "Water boils at 90 C.")
    assert call.provider == "openai"
    # 1000 * $2.50/M + 500 * $10/M
    assert call.cost_usd == Decimal("0.007500")


async def test_ai_call_costs_are_exact_decimals(session: AsyncSession) -> None:
    calls = await create_batch(session, AICallFactory, 50)
    for call in calls:
        assert isinstance(call.cost_usd, Decimal)
        exponent = call.cost_usd.as_tuple().exponent
        assert isinstance(exponent, int)
        assert exponent >= -6
        assert call.cost_usd == call_cost(
            call.model, call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens
        )
        assert call.usage is not None
        assert normalise_usage(call.provider, call.usage) == TokenUsage(
            call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens, 0
        )
    await session.flush()
    stored = (await session.scalars(select(AICall).order_by(AICall.id))).all()
    assert all(isinstance(c.cost_usd, Decimal) for c in stored)
    assert sum(c.cost_usd or 0 for c in stored) == sum(c.cost_usd or 0 for c in calls)
    assert all(c.total_tokens == c.input_tokens + c.output_tokens + c.cache_read_tokens for c in stored)
    assert any(c.cache_read_tokens for c in stored)  # a realistic mix: some calls read a cached prompt


def test_unknown_model_needs_explicit_provider_and_cost() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        AICallFactory.build(model="my-finetune")
    call = AICallFactory.build(
        model="my-finetune",
        provider="local",
        cost_usd=Decimal(0),
        latency_ms=10,
        input_tokens=5,
        output_tokens=5,
    )
    assert call.provider == "local"


def test_consensus_factory_is_consistent_with_its_votes() -> None:
    votes = {
        "empirical": {"valid": True, "confidence": 0.9},
        "logical": {"valid": False, "confidence": 0.6},
        "statistical": {"valid": True, "confidence": 0.75},
    }
    decision = ConsensusDecisionFactory.build(participating_frameworks=votes)
    assert decision.consensus_result["valid"] is True
    assert decision.consensus_type == "majority"
    assert decision.consensus_confidence == pytest.approx(0.75)
    for _ in range(20):
        d = ConsensusDecisionFactory.build()
        verdict = decide_consensus(
            [(v["valid"], v["confidence"]) for v in d.participating_frameworks.values()]
        )
        assert d.consensus_result["valid"] == verdict.valid
        assert 0 <= d.consensus_confidence <= 1


def test_reconciliation_report_factory_totals_add_up() -> None:
    report = ReconciliationReportFactory.build()
    stats = report.provider_stats or {}
    assert report.total_calls == sum(p["calls"] for p in stats.values())
    assert report.total_cost_usd == sum(
        (Decimal(p["cost_usd"]) for p in stats.values()), Decimal(0)
    ).quantize(Decimal("0.01"))
    assert report.status == "PASS"
    assert report.period_end - report.period_start == timedelta(days=7)
    assert report.period_end.date() == report.report_date


def test_reseeding_makes_factories_reproducible() -> None:
    def snapshot() -> list[tuple[Any, ...]]:
        factory.random.reseed_random(1234)
        claim = ClaimFactory.build()
        call = AICallFactory.build()
        return [
            (claim.content, claim.claim_type, claim.source, claim.metadata_),
            (call.model, call.input_tokens, call.output_tokens, call.cost_usd, call.trace_id),
        ]

    assert snapshot() == snapshot()


async def test_a_factory_call_builds_a_typed_complete_instance_for_any_claim_type(engine: Any) -> None:
    from typing import assert_type

    from persistence import ClaimRepository
    from persistence.testing.factories import ClaimFactory, create

    claim = ClaimFactory(claim_type="legal")  # a type the seed catalogue does not know
    assert_type(claim, Claim)
    assert isinstance(claim, Claim)
    assert claim.claim_type == "legal" and "legal" in claim.content
    stored = await ClaimRepository(engine).add(claim)
    assert (stored.claim_type, stored.content) == ("legal", claim.content)
    saved = await create(ClaimFactory, claim_type="legal")
    assert (await ClaimRepository(engine).get(saved.id)).claim_type == "legal"
