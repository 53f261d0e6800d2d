"""Audit log: append-only record of every change to an audited entity."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import JSON, Base, UUIDPrimaryKey


class AuditLog(UUIDPrimaryKey, Base):
    __tablename__ = "audit_log"

    entity_type: Mapped[str] = mapped_column(String(50))
    entity_id: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(50))
    user_id: Mapped[str | None] = mapped_column(String(255))
    # {field: [old, new]}
    changes: Mapped[JSON | None]
    metadata_: Mapped[JSON | None] = mapped_column("metadata")
    # The time of the write itself, not of its transaction's start: rows of one transaction keep their order.
    created_at: Mapped[datetime] = mapped_column(server_default=func.clock_timestamp(), sort_order=100)


Index("ix_audit_log_entity_type_entity_id", AuditLog.entity_type, AuditLog.entity_id)
# `recent()` reads the newest rows first, which needs a btree; a BRIN index cannot return rows in order.
Index("ix_audit_log_created_at", AuditLog.created_at.desc())
# Audit rows are found by request or trace id kept in metadata (`metadata @> '{"request_id": ...}'`).
Index(
    "ix_audit_log_metadata",
    AuditLog.metadata_,
    postgresql_using="gin",
    postgresql_ops={"metadata": "jsonb_path_ops"},
)
