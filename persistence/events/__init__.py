"""Seed 004's events: platform events, tenant cost events and agent executions, never dropped.

`records` (validated models and enums), `writer` (idempotent batch inserts, the ledger's
`BatchWriter` over them), `queries` (daily cost, success rate), `recorder` (`TimescaleIntegration`
and its process-wide accessor), `partitions` (partitions ahead and the default one), `ledger_link`
(a ledger call's cost event, one per call).
"""

from persistence.events.ledger_link import (
    CostEventLink,
    CostLinkStats,
    backfill_cost_events,
    call_cost_event,
)
from persistence.events.partitions import EventPartitionReport, maintain_event_partitions
from persistence.events.queries import AgentRuns
from persistence.events.recorder import TimescaleIntegration, get_timescale_integration
from persistence.events.records import (
    AgentExecution,
    CostEvent,
    CostType,
    EventCategory,
    PlatformEvent,
    ServiceProvider,
    call_event_id,
)

__all__ = [
    "AgentExecution",
    "AgentRuns",
    "CostEvent",
    "CostEventLink",
    "CostLinkStats",
    "CostType",
    "EventCategory",
    "EventPartitionReport",
    "PlatformEvent",
    "ServiceProvider",
    "TimescaleIntegration",
    "backfill_cost_events",
    "call_cost_event",
    "call_event_id",
    "get_timescale_integration",
    "maintain_event_partitions",
]
