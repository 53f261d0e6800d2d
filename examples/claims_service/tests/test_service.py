"""The service layer on its own (no HTTP), on the plugin's `engine` and the factories."""

from __future__ import annotations

import pytest
from claims_service.events import Event, Outbox
from claims_service.service import ClaimService, Verdict
from helpers import AICalls, unique
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import ClaimRepository, IntegrityViolation, NotFoundError, set_rollback, transaction
from persistence.testing.factories import ClaimFactory, create


async def test_submit_stores_the_claim_with_its_ai_call(service: ClaimService, engine: AsyncEngine) -> None:
    done = await service.submit(external_id=unique("c"), content="inflation hit the bond market", actor="bob")
    assert done.claim.claim_type == "financial"
    assert done.claim.metadata_ == {
        "classified_by": "claude-sonnet-4-20250514",
        "ai_call_id": done.ai_call_id,
    }
    stored = await ClaimRepository(engine).get(done.claim.id)
    assert stored.external_id == done.claim.external_id
    [call] = await AICalls(engine).list(id=done.ai_call_id)
    assert call.input_tokens > 0 and call.output_tokens == 5


async def test_submit_in_a_callers_transaction_is_undone_with_it(
    service: ClaimService, engine: AsyncEngine, outbox: Outbox
) -> None:
    external_id = unique("c")
    async with transaction():
        await service.submit(external_id=external_id, content="x", actor="bob")  # a savepoint here
        set_rollback(True)
    assert not await ClaimRepository(engine).exists(external_id=external_id)
    assert outbox.published == []  # on_commit callbacks of a rolled-back block never run


async def test_verify_a_factory_claim(service: ClaimService, outbox: Outbox) -> None:
    claim = await create(ClaimFactory, claim_type="medical")  # saved on the test's engine
    rows = await service.verify(str(claim.id), [Verdict("empirical", True, 0.8)])
    assert [(r.claim_id, r.framework) for r in rows] == [(str(claim.id), "empirical")]
    assert outbox.published == [Event("claim.verified", f"{claim.id}:{rows[0].id}")]


async def test_verify_is_all_or_nothing(service: ClaimService, engine: AsyncEngine, outbox: Outbox) -> None:
    claim = await ClaimRepository(engine).add(ClaimFactory.build())
    with pytest.raises(IntegrityViolation):
        await service.verify(str(claim.id), [Verdict("empirical", True, 0.8), Verdict("logical", True, -1)])
    assert await service.verifications.count(claim_id=str(claim.id)) == 0
    assert outbox.published == []


async def test_get_of_a_missing_claim_raises_not_found(service: ClaimService) -> None:
    with pytest.raises(NotFoundError):
        await service.get("00000000-0000-4000-8000-000000000002")
