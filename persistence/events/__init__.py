"""Seed 004's events: platform events, tenant cost events and agent executions, never dropped.

`records` (validated models and enums), `writer` (idempotent batch inserts, the ledger's
`BatchWriter` over them), `queries` (daily cost, success rate), `recorder` (`TimescaleIntegration`
and its process-wide accessor), `partitions` (partitions ahead and the default one).
"""

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
)

__all__ = [
    "AgentExecution",
    "AgentRuns",
    "CostEvent",
    "CostType",
    "EventCategory",
    "EventPartitionReport",
    "PlatformEvent",
    "ServiceProvider",
    "TimescaleIntegration",
    "get_timescale_integration",
    "maintain_event_partitions",
]
