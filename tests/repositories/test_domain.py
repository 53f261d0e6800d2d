"""Domain repositories (seed 003 aggregates) against a real database, including their concurrency rules."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    AuditLogRepository,
    CheckpointRepository,
    ClaimRepository,
    ConflictError,
    ConsensusRepository,
    IntegrityViolation,
    InvalidRequestError,
    NotFoundError,
    ServiceHealthRepository,
    TrainingDataRepository,
    ValidationError,
    VerificationRepository,
    audit_context,
    transaction,
)


async def scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql))


async def test_claims_create_find_and_search(engine: AsyncEngine) -> None:
    repo = ClaimRepository(engine)
    made = await repo.create_claim(
        {
            "external_id": "c-1",
            "content": "Aspirin lowers fever",
            "claim_type": "medical",
            "metadata": {"topic": "pharma"},
        }
    )
    await repo.create_claim(external_id="c-2", content="GDP grew 3%", claim_type="financial")
    assert (await repo.get_by_external_id("c-1")).id == made.id
    assert [c.external_id for c in await repo.search_by_type("medical")] == ["c-1"]
    assert [c.id for c in await repo.list(metadata___contains={"topic": "pharma"})] == [made.id]
    with pytest.raises(NotFoundError, match="c-404"):
        await repo.get_by_external_id("c-404")
    with pytest.raises(ConflictError) as info:
        await repo.create_claim(external_id="c-1", content="again")
    assert info.value.constraint == "uq_claims_external_id"


@pytest.mark.commits
async def test_verifications_seed_methods(engine: AsyncEngine) -> None:
    repo = VerificationRepository(engine)
    claim_uuid = uuid.uuid4()
    first = await repo.create_verification(
        claim_id="claim-123", framework="empirical", result={"valid": True}, confidence=0.95
    )
    second = await repo.create_verification(
        claim_id="claim-123",
        framework="logical",
        result={"valid": False},
        confidence=0.4,
        evidence={"steps": 2},
    )
    await repo.create_verification(claim_id=claim_uuid, framework="empirical", result={}, confidence=0.1)
    assert [v.id for v in await repo.get_by_claim_id("claim-123")] == [first.id, second.id]
    assert len(await repo.get_by_claim_id(claim_uuid)) == 1
    assert len(await repo.get_recent_verifications(limit=2)) == 2
    assert {v.framework for v in await repo.get_recent_verifications(framework="logical")} == {"logical"}


async def test_bad_input_gives_typed_errors_and_writes_nothing(engine: AsyncEngine) -> None:
    repo = VerificationRepository(engine)
    with pytest.raises(InvalidRequestError, match="no field 'colour'"):
        await repo.list(colour="red")
    with pytest.raises(IntegrityViolation) as check:
        await repo.create_verification(claim_id="c", framework="f", result={}, confidence=1.5)
    assert check.value.constraint == "ck_verification_results_confidence_range"
    with pytest.raises(ValidationError) as too_long:
        await repo.create_verification(claim_id="x" * 300, framework="f", result={}, confidence=0.5)
    assert too_long.value.column == "claim_id" and "at most 255" in str(too_long.value)
    assert await scalar(engine, "SELECT count(*) FROM verification_results") == 0
    assert await scalar(engine, "SELECT count(*) FROM audit_log") == 0

    evil = "claim'); DROP TABLE claims; --"
    stored = await repo.create_verification(claim_id=evil, framework="f", result={"q": evil}, confidence=0.5)
    assert (await repo.get_by_claim_id(evil))[0].id == stored.id
    assert await scalar(engine, "SELECT count(*) FROM claims") == 0  # the table is still there


async def test_consensus_one_per_claim_or_explicit_replace(engine: AsyncEngine) -> None:
    repo = ConsensusRepository(engine)
    decision = {
        "consensus_result": {"valid": True},
        "participating_frameworks": ["empirical", "logical"],
        "consensus_type": "majority",
        "consensus_confidence": 0.8,
    }
    first = await repo.record_decision(claim_id="c-1", **decision)  # type: ignore[arg-type]
    with pytest.raises(ConflictError) as info:
        await repo.record_decision(claim_id="c-1", **decision)  # type: ignore[arg-type]
    assert info.value.constraint == "uq_consensus_decisions_claim_id"
    replaced = await repo.record_decision(
        claim_id="c-1",
        consensus_result={"valid": False},
        participating_frameworks=["empirical"],
        consensus_type="unanimous",
        consensus_confidence=0.6,
        replace=True,
    )
    assert replaced.id == first.id and replaced.consensus_type == "unanimous"
    found = await repo.get_for_claim("c-1")
    assert found is not None and found.consensus_result == {"valid": False}
    assert await repo.get_for_claim("c-2") is None


async def test_checkpoints_register_activate_switches_atomically(engine: AsyncEngine) -> None:
    repo = CheckpointRepository(engine)
    for version in ("1", "2"):
        await repo.register(
            model_name="verifier",
            version=version,
            checkpoint_path=f"s3://m/{version}",
            metrics={"f1": 0.9},
            framework="empirical",
        )
    await repo.register(
        model_name="verifier", version="9", checkpoint_path="s3://m/9", metrics={}, framework="logical"
    )
    with pytest.raises(ConflictError):
        await repo.register(
            model_name="verifier", version="1", checkpoint_path="dup", metrics={}, framework="empirical"
        )
    assert await repo.get_active("verifier", "empirical") is None
    await repo.activate("verifier", "1")
    await repo.activate("verifier", "9")  # another framework: independent
    active = await repo.activate("verifier", "2")
    assert active.version == "2" and active.is_active
    current = await repo.get_active("verifier", "empirical")
    assert current is not None and current.version == "2"
    other = await repo.get_active("verifier", "logical")
    assert other is not None and other.version == "9"
    with pytest.raises(NotFoundError):
        await repo.activate("verifier", "404")


async def test_fifty_concurrent_activations_leave_exactly_one_active(engine: AsyncEngine) -> None:
    repo = CheckpointRepository(engine)
    for v in range(10):
        await repo.register(
            model_name="m", version=str(v), checkpoint_path=f"p{v}", metrics={}, framework=None
        )
    await asyncio.gather(*(repo.activate("m", str(i % 10)) for i in range(50)))
    assert await scalar(engine, "SELECT count(*) FROM model_checkpoints WHERE is_active") == 1


async def test_training_data_flow(engine: AsyncEngine) -> None:
    claims = ClaimRepository(engine)
    claim = await claims.create_claim(external_id="c", content="text")
    repo = TrainingDataRepository(engine)
    added = await repo.add_examples(
        [
            {
                "framework": "empirical",
                "claim_id": claim.id,
                "claim_text": f"t{i}",
                "evidence": {"i": i},
                "validity": i % 2 == 0,
                "metadata": {"source": "test"},
            }
            for i in range(30)
        ]
    )
    assert added == 30
    unused = await repo.unused_for_framework("empirical", limit=10)
    assert len(unused) == 10
    assert await repo.mark_used_in_batch([e.id for e in unused], "batch-1") == 10
    assert await repo.mark_used_in_batch([e.id for e in unused], "batch-2") == 0  # already taken
    assert len(await repo.unused_for_framework("empirical")) == 20
    assert await repo.mark_used_in_batch([], "b") == 0


async def test_service_heartbeats_upsert_and_stale_instances(engine: AsyncEngine) -> None:
    repo = ServiceHealthRepository(engine)
    await asyncio.gather(*(repo.heartbeat("api", "i-1") for _ in range(50)))
    await repo.heartbeat("api", "i-2", status="degraded", metadata={"load": 0.9})
    assert await scalar(engine, "SELECT count(*) FROM service_health") == 2
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE service_health SET last_heartbeat = now() - interval '10 minutes' "
                "WHERE instance_id = 'i-2'"
            )
        )
    stale = await repo.stale_instances(timedelta(minutes=5))
    assert [s.instance_id for s in stale] == ["i-2"]
    with pytest.raises(ValidationError, match="unknown status"):
        await repo.heartbeat("api", "i-3", status="sleepy")
    with pytest.raises(ValidationError, match="older_than"):
        await repo.stale_instances(timedelta(0))


async def test_audit_log_history_and_append_only(engine: AsyncEngine) -> None:
    claims = ClaimRepository(engine)
    with audit_context(user_id="alice", request_id="r-1"):
        async with transaction():
            claim = await claims.create_claim(external_id="c", content="v1")
            await claims.update(claim.id, content="v2")
    audit = AuditLogRepository(engine)
    history = await audit.for_entity("claim", claim.id)
    assert [h.action for h in history] == ["insert", "update"]
    assert history[1].changes == {"content": ["v1", "v2"]}
    assert {h.user_id for h in history} == {"alice"}
    assert history[0].metadata_ == {"request_id": "r-1"}
    assert len(await audit.recent(limit=1)) == 1
    with pytest.raises(InvalidRequestError):
        await audit.update(history[0].id, action="forged")
    with pytest.raises(InvalidRequestError):
        await audit.delete(history[0].id)
