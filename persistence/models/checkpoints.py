"""Model checkpoints: versions of a model, at most one active per (model_name, framework)."""

from __future__ import annotations

from sqlalchemy import Index, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import JSON, Base, CreatedAt, UUIDPrimaryKey


class ModelCheckpoint(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "model_checkpoints"

    model_name: Mapped[str] = mapped_column(String(255))
    framework: Mapped[str | None] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(50))
    checkpoint_path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[JSON]
    training_config: Mapped[JSON | None]
    is_active: Mapped[bool] = mapped_column(default=False, server_default=false())

    __table_args__ = (UniqueConstraint("model_name", "version"),)


Index("ix_model_checkpoints_is_active_framework", ModelCheckpoint.is_active, ModelCheckpoint.framework)
# The database, not the application, guarantees a single active checkpoint per model and framework
# (a NULL framework counts as one framework).
Index(
    "uq_model_checkpoints_one_active",
    ModelCheckpoint.model_name,
    ModelCheckpoint.framework,
    unique=True,
    postgresql_where=text("is_active"),
    postgresql_nulls_not_distinct=True,
)
