"""Claims: the statements the system verifies, keyed by the caller's `external_id`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from persistence.models.base import JSON, Base, CreatedAt, UUIDPrimaryKey

if TYPE_CHECKING:
    from persistence.models.training import TrainingData


class Claim(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "claims"

    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    content: Mapped[str] = mapped_column(Text)
    claim_type: Mapped[str | None] = mapped_column(String(100), index=True)
    source: Mapped[str | None] = mapped_column(String(255))
    # `metadata` is reserved on declarative classes; the column keeps the seed's name.
    metadata_: Mapped[JSON | None] = mapped_column("metadata")

    training_examples: Mapped[list[TrainingData]] = relationship(back_populates="claim", passive_deletes=True)


Index("ix_claims_created_at", Claim.created_at.desc())
# Claims are searched by metadata containment (`metadata @> '{"topic": ...}'`).
Index(
    "ix_claims_metadata",
    Claim.metadata_,
    postgresql_using="gin",
    postgresql_ops={"metadata": "jsonb_path_ops"},
)
