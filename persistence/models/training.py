"""Training data: labelled examples derived from claims, consumed in training batches."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from persistence.models.base import JSON, Base, CreatedAt, UUIDPrimaryKey

if TYPE_CHECKING:
    from persistence.models.claims import Claim


class TrainingData(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "training_data"

    framework: Mapped[str] = mapped_column(String(50))
    # The example keeps its own copy of the text, so deleting a claim only unlinks it.
    claim_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("claims.id", ondelete="SET NULL"))
    claim_text: Mapped[str] = mapped_column(Text)
    evidence: Mapped[JSON]
    validity: Mapped[bool]
    confidence: Mapped[float | None]
    metadata_: Mapped[JSON | None] = mapped_column("metadata")
    used_in_training: Mapped[bool] = mapped_column(default=False, server_default=false())
    training_batch_id: Mapped[str | None] = mapped_column(String(255))

    claim: Mapped[Claim | None] = relationship(back_populates="training_examples")

    __table_args__ = (CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),)


Index("ix_training_data_framework_training_batch_id", TrainingData.framework, TrainingData.training_batch_id)
Index("ix_training_data_used_in_training_framework", TrainingData.used_in_training, TrainingData.framework)
# The hot query: the next unused examples of one framework, oldest first.
Index(
    "ix_training_data_unused",
    TrainingData.framework,
    TrainingData.created_at,
    postgresql_where=text("NOT used_in_training"),
)
Index("ix_training_data_claim_id", TrainingData.claim_id)
