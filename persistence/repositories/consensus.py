"""Consensus decisions: exactly one per claim."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from persistence.models import ConsensusDecision
from persistence.repository import Repository

_ONE_PER_CLAIM = "uq_consensus_decisions_claim_id"


class ConsensusRepository(Repository[ConsensusDecision]):
    model = ConsensusDecision

    async def record_decision(
        self,
        *,
        claim_id: str | uuid.UUID,
        consensus_result: Mapping[str, Any],
        participating_frameworks: Sequence[str] | Mapping[str, Any],
        consensus_type: str,
        consensus_confidence: float,
        decision_time_ms: int | None = None,
        replace: bool = False,
    ) -> ConsensusDecision:
        """Record the claim's decision. A second decision for the same claim raises `ConflictError`
        (naming `uq_consensus_decisions_claim_id`) unless `replace=True`, which overwrites it atomically."""
        values: dict[str, Any] = {
            "claim_id": str(claim_id),
            "consensus_result": dict(consensus_result),
            "participating_frameworks": (
                dict(participating_frameworks)
                if isinstance(participating_frameworks, Mapping)
                else list(participating_frameworks)
            ),
            "consensus_type": consensus_type,
            "consensus_confidence": consensus_confidence,
            "decision_time_ms": decision_time_ms,
        }
        if replace:
            return await self.upsert(values, on=_ONE_PER_CLAIM)
        return await self.add(**values)

    async def get_for_claim(self, claim_id: str | uuid.UUID) -> ConsensusDecision | None:
        found = await self.list(claim_id=str(claim_id), limit=1)
        return found[0] if found else None
