"""Type inference of the public API: `mypy --strict` (run by CI) checks every `assert_type` below,
and pytest runs the same code against a real database, so the types are those of real results."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import assert_type

from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    AuditLogRepository,
    CheckpointRepository,
    ClaimRepository,
    Page,
    Repository,
    VerificationRepository,
    transaction,
)
from persistence.models import AuditLog, Claim, ModelCheckpoint, VerificationResult


class Verifications(Repository[VerificationResult]):
    model = VerificationResult


@transaction
async def create_pair(
    repo: VerificationRepository, claim_id: str
) -> tuple[VerificationResult, VerificationResult]:
    a = await repo.create_verification(claim_id=claim_id, framework="empirical", result={}, confidence=0.5)
    b = await repo.create_verification(claim_id=claim_id, framework="logical", result={}, confidence=0.6)
    return a, b


async def test_inferred_types(engine: AsyncEngine) -> None:
    repo = VerificationRepository(engine)
    generic = Verifications(engine)

    made = await repo.create_verification(claim_id="c", framework="f", result={"valid": True}, confidence=0.9)
    assert_type(made, VerificationResult)
    assert_type(made.id, uuid.UUID)
    assert_type(made.confidence, float)

    assert_type(await repo.get(made.id), VerificationResult)
    assert_type(await generic.get(made.id), VerificationResult)
    assert_type(await generic.get_or_none(made.id), VerificationResult | None)
    assert_type(await generic.get_many([made.id]), list[VerificationResult])
    assert_type(await generic.list(framework="f"), list[VerificationResult])
    assert_type(await generic.page(order_by="-created_at", limit=10), Page[VerificationResult])
    assert_type(await generic.count(), int)
    assert_type(await generic.exists(VerificationResult.confidence > 0.5), bool)
    assert_type(await generic.add(claim_id="d", framework="f", result={}, confidence=0.1), VerificationResult)
    assert_type(await generic.update(made.id, confidence=0.8), VerificationResult)
    assert_type(await repo.get_by_claim_id("c"), list[VerificationResult])

    stream = generic.stream(order_by="created_at")
    assert_type(stream, AsyncGenerator[VerificationResult, None])
    streamed = [v.id async for v in stream]
    assert made.id in streamed  # created_at ties: now() is one instant in the test's transaction

    pair = await create_pair(repo, "tx")  # @transaction keeps the signature and the return type
    assert_type(pair, tuple[VerificationResult, VerificationResult])

    claim = await ClaimRepository(engine).create_claim(external_id="e", content="x")
    assert_type(claim, Claim)
    checkpoint = await CheckpointRepository(engine).register(
        model_name="m", version="1", checkpoint_path="p", metrics={}
    )
    assert_type(await CheckpointRepository(engine).activate("m", "1"), ModelCheckpoint)
    assert_type(checkpoint, ModelCheckpoint)
    assert_type(await AuditLogRepository(engine).recent(), list[AuditLog])

    claims = ClaimRepository(engine)
    assert_type(await claims.add_many([{"external_id": "m1", "content": "x"}]), int)
    many = await claims.add_many([{"external_id": "m2", "content": "x"}], returning=True)
    assert_type(many, list[Claim])
    upserted = await claims.upsert({"external_id": "m2", "content": "y"}, on="uq_claims_external_id")
    assert_type(upserted, Claim)
    assert upserted.id == many[0].id and upserted.content == "y"
    rows = [{"external_id": "m3", "content": "z"}]
    assert_type(await claims.upsert_many(rows, on="uq_claims_external_id"), list[Claim])
    assert_type(await claims.update_many(values={"content": "w"}, external_id="m3"), int)
    assert_type(await claims.delete(upserted.id), None)
    assert_type(await claims.delete_many(external_id="m3"), int)
