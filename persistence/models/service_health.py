"""Service health: the latest heartbeat of each service instance (one row per instance)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import JSON, Base, CreatedAt, UUIDPrimaryKey

SERVICE_STATUSES = ("starting", "healthy", "degraded", "unhealthy", "stopping")


class ServiceHealth(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "service_health"

    service_name: Mapped[str] = mapped_column(String(50))
    instance_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20))
    last_heartbeat: Mapped[datetime]
    metadata_: Mapped[JSON | None] = mapped_column("metadata")

    __table_args__ = (
        # Heartbeats upsert on this key.
        UniqueConstraint("service_name", "instance_id"),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in SERVICE_STATUSES) + ")", name="status_known"
        ),
    )


Index(
    "ix_service_health_service_name_last_heartbeat",
    ServiceHealth.service_name,
    ServiceHealth.last_heartbeat.desc(),
)
