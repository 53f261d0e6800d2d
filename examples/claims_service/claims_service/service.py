"""The service layer: what the service does, on persistence's repositories and `transaction()`.

The HTTP layer (`api.py`) only translates; everything here works the same from a worker or a script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from claims_service.classifier import Classifier
from claims_service.events import Event, Outbox
from persistence import (
    AICallLogger,
    ClaimRepository,
    Page,
    VerificationRepository,
    audit_context,
    on_commit,
    transaction,
)
from persistence.integrations.fastapi import ListQuery
from persistence.models import Claim, VerificationResult


@dataclass(frozen=True, slots=True)
class Submitted:
    claim: Claim
    ai_call_id: int  # the classification's row in the AI-call ledger


@dataclass(frozen=True, slots=True)
class Verdict:
    framework: str
    valid: bool
    confidence: float


class ClaimService:
    def __init__(
        self, engine: AsyncEngine, ledger: AICallLogger, classifier: Classifier, outbox: Outbox
    ) -> None:
        self.claims = ClaimRepository(engine)
        self.verifications = VerificationRepository(engine)
        self.ledger = ledger
        self.classifier = classifier
        self.outbox = outbox

    async def submit(
        self, *, external_id: str, content: str, source: str | None = None, actor: str
    ) -> Submitted:
        """Classify a claim (an AI call, logged to the ledger) and store it, audited as `actor`.

        The AI call is logged first and commits by itself (the ledger has its own connections): it
        was made and paid for even if the claim is then refused, e.g. as a duplicate. Its idempotency
        key is the external id, so a retried request logs the call once. `claim.created` is published
        only once the claim is committed.
        """
        label = await self.classifier.classify(content)
        ai_call_id = await self.ledger.log_call(
            label.provider,
            label.model,
            usage=label.usage,
            latency_ms=label.latency_ms,
            customer_id=actor,
            request_id=f"classify:{external_id}",
        )
        with audit_context(user_id=actor):
            async with transaction():  # a savepoint when the caller already runs a transaction
                claim = await self.claims.create_claim(
                    external_id=external_id,
                    content=content,
                    source=source,
                    claim_type=label.claim_type,
                    metadata={"classified_by": label.model, "ai_call_id": ai_call_id},
                )
                await on_commit(partial(self.outbox.publish, Event("claim.created", str(claim.id))))
        return Submitted(claim, ai_call_id)

    async def get(self, claim_id: str) -> Claim:
        """The claim, or `NotFoundError` (a malformed id is an `InvalidRequestError`)."""
        return await self.claims.get(claim_id)

    async def page(self, query: ListQuery[Claim]) -> Page[Claim]:
        """One keyset page of claims as the list endpoint's query string asked."""
        return await query.page(self.claims)

    async def verify(self, claim_id: str, verdicts: Sequence[Verdict]) -> list[VerificationResult]:
        """Record several frameworks' verdicts on a claim: all of them, or (on any error) none.

        Each verdict registers its `claim.verified` event with `on_commit`: if a later verdict is
        refused, the block rolls back and the events registered so far are dropped, never published.
        """
        async with transaction():
            claim = await self.claims.get(claim_id)
            rows: list[VerificationResult] = []
            for verdict in verdicts:
                row = await self.verifications.create_verification(
                    claim_id=claim.id,
                    framework=verdict.framework,
                    result={"valid": verdict.valid},
                    confidence=verdict.confidence,
                )
                await on_commit(partial(self.outbox.publish, Event("claim.verified", f"{claim.id}:{row.id}")))
                rows.append(row)
        return rows
