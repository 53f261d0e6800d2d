"""Verification results: one framework's verdict on one claim (seed 003's VerificationRepository)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from persistence.models import Claim, VerificationResult
from persistence.repositories.claims import ClaimRepository
from persistence.repository import Repository
from persistence.repository.coerce import mapping_argument, required, text_key


class VerificationRepository(Repository[VerificationResult]):
    model = VerificationResult

    async def create_verification(
        self,
        *,
        claim_id: str | uuid.UUID,
        framework: str,
        result: Mapping[str, Any],
        confidence: float,
        evidence: Mapping[str, Any] | None = None,
        processing_time_ms: int | None = None,
        model_version: str | None = None,
    ) -> VerificationResult:
        """Record a verdict. `claim_id` is the claim's external id, or its UUID (stored as text)."""
        return await self.add(
            claim_id=text_key(claim_id),
            framework=framework,
            result=mapping_argument(result, "result"),
            confidence=confidence,
            evidence=mapping_argument(evidence, "evidence") if evidence is not None else None,
            processing_time_ms=processing_time_ms,
            model_version=model_version,
        )

    async def get_by_claim_id(self, claim_id: str | uuid.UUID) -> list[VerificationResult]:
        """Every verdict on one claim, oldest first."""
        return await self.list(claim_id=text_key(required(claim_id, "claim_id")), order_by="created_at")

    async def get_recent_verifications(
        self, limit: int = 100, *, framework: str | None = None
    ) -> list[VerificationResult]:
        """The newest verdicts, optionally of one framework."""
        lookups: dict[str, Any] = {"framework": framework} if framework is not None else {}
        return await self.list(order_by="-created_at", limit=limit, **lookups)

    async def create_claim(self, claim: Claim | Mapping[str, Any] | None = None, /, **fields: Any) -> Claim:
        """Create the claim being verified (seed 003's transaction example does this on this repository)."""
        return await ClaimRepository(self.engine).create_claim(claim, **fields)
