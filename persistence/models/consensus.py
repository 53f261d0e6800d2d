"""Consensus decisions: the single combined verdict for a claim."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import JSON, Base, CreatedAt, UUIDPrimaryKey


class ConsensusDecision(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "consensus_decisions"

    claim_id: Mapped[str] = mapped_column(String(255), unique=True)
    consensus_result: Mapped[JSON]
    participating_frameworks: Mapped[JSON]
    consensus_type: Mapped[str] = mapped_column(String(50))
    consensus_confidence: Mapped[float]
    decision_time_ms: Mapped[int | None]

    __table_args__ = (
        CheckConstraint(
            "consensus_confidence >= 0 AND consensus_confidence <= 1", name="consensus_confidence_range"
        ),
        CheckConstraint("decision_time_ms >= 0", name="decision_time_non_negative"),
    )


Index("ix_consensus_decisions_created_at", ConsensusDecision.created_at.desc())
