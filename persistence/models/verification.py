"""Verification results: one framework's verdict on one claim."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import JSON, Base, Timestamps, UUIDPrimaryKey


class VerificationResult(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "verification_results"

    # The claim's external id (or its UUID as text): verifications may arrive before the claim row.
    claim_id: Mapped[str] = mapped_column(String(255))
    framework: Mapped[str] = mapped_column(String(50))
    result: Mapped[JSON]
    confidence: Mapped[float]
    evidence: Mapped[JSON | None]
    processing_time_ms: Mapped[int | None]
    model_version: Mapped[str | None] = mapped_column(String(50))

    __table_args__ = (
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
        CheckConstraint("processing_time_ms >= 0", name="processing_time_non_negative"),
    )


Index("ix_verification_results_claim_id_framework", VerificationResult.claim_id, VerificationResult.framework)
Index("ix_verification_results_created_at", VerificationResult.created_at.desc())
# Results are filtered by verdict (`result @> '{"valid": true}'`).
Index(
    "ix_verification_results_result",
    VerificationResult.result,
    postgresql_using="gin",
    postgresql_ops={"result": "jsonb_path_ops"},
)
