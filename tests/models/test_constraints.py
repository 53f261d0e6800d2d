"""The schema itself rejects bad rows: constraints are proven against a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from persistence.models import (
    AICall,
    AuditLog,
    Claim,
    ConsensusDecision,
    ModelCheckpoint,
    ReconciliationReport,
    ServiceHealth,
    TrainingData,
    VerificationResult,
)


def sqlstate_of(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


def constraint_of(exc: DBAPIError) -> str | None:
    cause = getattr(exc.orig, "__cause__", None)
    return getattr(cause, "constraint_name", None)


async def expect_violation(session: AsyncSession, obj: Any, sqlstate: str, constraint: str | None) -> None:
    session.add(obj)
    with pytest.raises(DBAPIError) as info:
        await session.flush()
    assert sqlstate_of(info.value) == sqlstate
    if constraint is not None:
        assert constraint_of(info.value) == constraint
    await session.rollback()


def verification(**overrides: Any) -> VerificationResult:
    fields: dict[str, Any] = {
        "claim_id": "claim-123",
        "framework": "empirical",
        "result": {"valid": True},
        "confidence": 0.95,
    }
    return VerificationResult(**{**fields, **overrides})


def checkpoint(**overrides: Any) -> ModelCheckpoint:
    fields: dict[str, Any] = {
        "model_name": "verifier",
        "framework": "empirical",
        "version": "1.0.0",
        "checkpoint_path": "s3://models/verifier/1.0.0",
        "metrics": {"f1": 0.9},
    }
    return ModelCheckpoint(**{**fields, **overrides})


async def test_seed_model_example_round_trips(session: AsyncSession) -> None:
    row = verification()
    session.add(row)
    await session.flush()
    await session.refresh(row)
    assert isinstance(row.id, uuid.UUID)
    assert row.created_at.tzinfo is not None
    assert row.updated_at >= row.created_at
    assert row.result == {"valid": True}


@pytest.mark.parametrize("confidence", [1.5, -0.01])
async def test_confidence_outside_unit_interval_rejected(session: AsyncSession, confidence: float) -> None:
    await expect_violation(
        session, verification(confidence=confidence), "23514", "ck_verification_results_confidence_range"
    )


@pytest.mark.parametrize("confidence", [0.0, 1.0])
async def test_confidence_bounds_are_inclusive(session: AsyncSession, confidence: float) -> None:
    session.add(verification(confidence=confidence))
    await session.flush()


async def test_claim_id_longer_than_255_rejected(session: AsyncSession) -> None:
    await expect_violation(session, verification(claim_id="x" * 256), "22001", None)


async def test_duplicate_model_version_rejected(session: AsyncSession) -> None:
    session.add(checkpoint())
    await session.flush()
    await expect_violation(
        session, checkpoint(checkpoint_path="elsewhere"), "23505", "uq_model_checkpoints_model_name_version"
    )


async def test_two_active_checkpoints_for_one_model_and_framework_rejected(session: AsyncSession) -> None:
    session.add(checkpoint(version="1", is_active=True))
    session.add(checkpoint(version="2", is_active=False, framework="logical"))
    await session.flush()
    await expect_violation(
        session, checkpoint(version="3", is_active=True), "23505", "uq_model_checkpoints_one_active"
    )


async def test_one_active_checkpoint_rule_treats_null_framework_as_one_value(session: AsyncSession) -> None:
    session.add(checkpoint(version="1", framework=None, is_active=True))
    await session.flush()
    await expect_violation(
        session,
        checkpoint(version="2", framework=None, is_active=True),
        "23505",
        "uq_model_checkpoints_one_active",
    )


async def test_many_inactive_checkpoints_allowed(session: AsyncSession) -> None:
    session.add_all([checkpoint(version=str(v)) for v in range(3)])
    await session.flush()
    count = await session.scalar(select(func.count()).select_from(ModelCheckpoint))
    assert count == 3


async def test_second_consensus_for_a_claim_rejected(session: AsyncSession) -> None:
    def decision() -> ConsensusDecision:
        return ConsensusDecision(
            claim_id="claim-9",
            consensus_result={"valid": False},
            participating_frameworks=["empirical"],
            consensus_type="majority",
            consensus_confidence=0.7,
        )

    session.add(decision())
    await session.flush()
    await expect_violation(session, decision(), "23505", "uq_consensus_decisions_claim_id")


async def test_duplicate_claim_external_id_rejected(session: AsyncSession) -> None:
    session.add(Claim(external_id="c-1", content="The sky is blue"))
    await session.flush()
    await expect_violation(
        session, Claim(external_id="c-1", content="again"), "23505", "uq_claims_external_id"
    )


async def test_training_data_needs_existing_claim(session: AsyncSession) -> None:
    row = TrainingData(
        framework="empirical", claim_id=uuid.uuid4(), claim_text="t", evidence={}, validity=True
    )
    await expect_violation(session, row, "23503", "fk_training_data_claim_id_claims")


async def test_deleting_a_claim_unlinks_its_training_data(session: AsyncSession) -> None:
    claim = Claim(external_id="c-2", content="Water boils at 100C")
    session.add(claim)
    await session.flush()
    example = TrainingData(
        framework="empirical", claim_id=claim.id, claim_text=claim.content, evidence={}, validity=True
    )
    session.add(example)
    await session.flush()
    await session.delete(claim)
    await session.flush()
    await session.refresh(example)
    assert example.claim_id is None
    assert example.used_in_training is False


async def test_one_heartbeat_row_per_service_instance(session: AsyncSession) -> None:
    def beat(status: str = "healthy") -> ServiceHealth:
        return ServiceHealth(
            service_name="api", instance_id="i-1", status=status, last_heartbeat=datetime.now(UTC)
        )

    session.add(beat())
    await session.flush()
    await expect_violation(session, beat(), "23505", "uq_service_health_service_name_instance_id")


async def test_unknown_service_status_rejected(session: AsyncSession) -> None:
    row = ServiceHealth(
        service_name="api", instance_id="i-2", status="sleepy", last_heartbeat=datetime.now(UTC)
    )
    await expect_violation(session, row, "23514", "ck_service_health_status_known")


def ai_call(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "provider": "anthropic",
        "model": "claude-sonnet-4",
        "input_tokens": 100,
        "output_tokens": 50,
        "cost_usd": Decimal("0.001050"),
    }
    return {**fields, **overrides}


async def test_ai_call_total_tokens_is_generated_and_money_is_exact(session: AsyncSession) -> None:
    row_id = await session.scalar(
        insert(AICall).values(**ai_call(cost_usd=Decimal("0.0016150"))).returning(AICall.id)
    )
    row = await session.get_one(AICall, row_id)
    assert row.total_tokens == 150
    assert row.cost_usd == Decimal("0.001615")
    assert isinstance(row.cost_usd, Decimal)


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"input_tokens": -1}, "ck_ai_calls_input_tokens_non_negative"),
        ({"output_tokens": -5}, "ck_ai_calls_output_tokens_non_negative"),
        ({"cost_usd": Decimal("-0.01")}, "ck_ai_calls_cost_non_negative"),
        ({"latency_ms": -3}, "ck_ai_calls_latency_non_negative"),
    ],
)
async def test_ai_call_negative_numbers_rejected(
    session: AsyncSession, overrides: dict[str, Any], constraint: str
) -> None:
    with pytest.raises(IntegrityError) as info:
        await session.execute(insert(AICall).values(**ai_call(**overrides)))
    assert constraint_of(info.value) == constraint


async def test_total_tokens_cannot_be_written(session: AsyncSession) -> None:
    with pytest.raises(DBAPIError) as info:
        await session.execute(insert(AICall).values(**ai_call(), total_tokens=1))
    assert sqlstate_of(info.value) == "428C9"  # generated_always


async def test_reconciliation_report_one_per_period_and_source_and_known_status(
    session: AsyncSession,
) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    end = datetime(2026, 11, 8, tzinfo=UTC)
    make: Callable[..., ReconciliationReport] = lambda **kw: ReconciliationReport(  # noqa: E731
        **{
            "report_date": end.date(),
            "period_start": start,
            "period_end": end,
            "total_calls": 10,
            "total_cost_usd": Decimal("1.25"),
            "total_tokens": 1000,
            **kw,
        }
    )
    session.add(make(status="PASS"))
    await session.flush()
    await expect_violation(
        session, make(status="FAIL"), "23505", "uq_reconciliation_reports_period_start_period_end_source"
    )
    session.add(make(status="PASS", source="openmeter-export"))  # another source, same period
    await session.flush()
    await expect_violation(
        session,
        make(report_date=start.date(), status="MAYBE"),
        "23514",
        "ck_reconciliation_reports_status_known",
    )
    await expect_violation(
        session,
        make(report_date=start.date(), period_end=start),
        "23514",
        "ck_reconciliation_reports_period_ordered",
    )


async def test_audit_log_row_shape(session: AsyncSession) -> None:
    session.add(
        AuditLog(
            entity_type="claim",
            entity_id="c-1",
            action="insert",
            user_id="u-1",
            changes={"content": [None, "x"]},
            metadata_={"request_id": "r-1"},
        )
    )
    await session.flush()
    found = await session.scalar(select(AuditLog).where(AuditLog.metadata_.contains({"request_id": "r-1"})))
    assert found is not None and found.changes == {"content": [None, "x"]}
