"""Seed 004's events: platform events, tenant cost events and agent executions, never dropped.

`records` (validated models and enums), `writer` (idempotent batch inserts, the ledger's
`BatchWriter` over them), `queries` (daily cost, success rate), `rollups` (folds of the hourly
rollups), `recorder` (`TimescaleIntegration` and its process-wide accessor), `partitions`
(partitions ahead and the default one, retention guarded by the rollups), `ledger_link` (a ledger
call's cost event, one per call).
"""

from persistence.events.ledger_link import (
    CostEventLink,
    CostLinkStats,
    backfill_cost_events,
    call_cost_event,
)
from persistence.events.partitions import EventPartitionReport, SkippedDrop, maintain_event_partitions
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
from persistence.events.rollups import FoldResult, fold_event_rollups

__all__ = [
    "AgentExecution",
    "AgentRuns",
    "CostEvent",
    "CostEventLink",
    "CostLinkStats",
    "CostType",
    "EventCategory",
    "EventPartitionReport",
    "FoldResult",
    "PlatformEvent",
    "ServiceProvider",
    "SkippedDrop",
    "TimescaleIntegration",
    "backfill_cost_events",
    "call_cost_event",
    "call_event_id",
    "fold_event_rollups",
    "get_timescale_integration",
    "maintain_event_partitions",
]
