"""Service health: one row per service instance, refreshed by heartbeats."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from persistence.models import ServiceHealth
from persistence.models.service_health import SERVICE_STATUSES
from persistence.repository import Repository
from persistence.repository.coerce import mapping_argument, refuse

_ONE_PER_INSTANCE = "uq_service_health_service_name_instance_id"


class ServiceHealthRepository(Repository[ServiceHealth]):
    model = ServiceHealth

    async def heartbeat(
        self,
        service_name: str,
        instance_id: str,
        *,
        status: str = "healthy",
        metadata: Mapping[str, Any] | None = None,
    ) -> ServiceHealth:
        """Record that the instance is alive (one atomic upsert; concurrent beats never duplicate)."""
        if not isinstance(status, str) or status not in SERVICE_STATUSES:
            raise refuse("status", f"unknown status; one of {', '.join(SERVICE_STATUSES)}")
        values: dict[str, Any] = {
            "service_name": service_name,
            "instance_id": instance_id,
            "status": status,
            "last_heartbeat": datetime.now(UTC),
        }
        if metadata is not None:
            values["metadata_"] = mapping_argument(metadata, "metadata")
        return await self.upsert(values, on=_ONE_PER_INSTANCE)

    async def stale_instances(
        self, older_than: timedelta, *, service_name: str | None = None
    ) -> list[ServiceHealth]:
        """Instances whose last heartbeat is older than `older_than`, stalest first."""
        if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
            raise refuse("older_than", "must be a positive timedelta")
        try:
            cutoff = datetime.now(UTC) - older_than
        except OverflowError:  # before year 1: no heartbeat can be that old
            raise refuse("older_than", "out of range (reaches before year 1)") from None
        lookups: dict[str, Any] = {"service_name": service_name} if service_name is not None else {}
        return await self.list(
            ServiceHealth.last_heartbeat < cutoff,
            order_by="last_heartbeat",
            **lookups,
        )
