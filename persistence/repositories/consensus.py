"""Consensus decisions: exactly one per claim."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from persistence.models import ConsensusDecision
from persistence.repository import Repository
from persistence.repository.coerce import mapping_argument, refuse, required, text_key

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
        if not isinstance(replace, bool):  # "no" would be truthy and overwrite the decision
            raise refuse("replace", f"expects a bool, got {type(replace).__name__}")
        frameworks: object
        if isinstance(participating_frameworks, Mapping):
            frameworks = dict(participating_frameworks)
        elif isinstance(participating_frameworks, list | tuple):
            frameworks = list(participating_frameworks)
        else:  # a str would become a list of its characters
            raise refuse(
                "participating_frameworks",
                f"expects a list of framework names or a mapping, got {type(participating_frameworks).__name__}",
            )
        values: dict[str, Any] = {
            "claim_id": text_key(claim_id),
            "consensus_result": mapping_argument(consensus_result, "consensus_result"),
            "participating_frameworks": frameworks,
            "consensus_type": consensus_type,
            "consensus_confidence": consensus_confidence,
            "decision_time_ms": decision_time_ms,
        }
        if replace:
            return await self.upsert(values, on=_ONE_PER_CLAIM)
        return await self.add(**values)

    async def get_for_claim(self, claim_id: str | uuid.UUID) -> ConsensusDecision | None:
        found = await self.list(claim_id=text_key(required(claim_id, "claim_id")), limit=1)
        return found[0] if found else None
