"""The audit log, read-only to callers: rows are written by the audited repositories themselves."""

from __future__ import annotations

import uuid

from persistence.models import AuditLog
from persistence.repository import Repository
from persistence.repository.coerce import required, text_key


class AuditLogRepository(Repository[AuditLog]):
    model = AuditLog
    append_only = True

    async def for_entity(self, entity_type: str, entity_id: str | uuid.UUID) -> list[AuditLog]:
        """The history of one entity, oldest first."""
        return await self.list(
            entity_type=required(entity_type, "entity_type"),
            entity_id=text_key(required(entity_id, "entity_id")),
            order_by="created_at",
        )

    async def recent(self, limit: int = 100) -> list[AuditLog]:
        return await self.list(order_by="-created_at", limit=limit)
