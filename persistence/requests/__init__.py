"""Seed 001's inference requests: lifecycle, leases with fencing, sweeper, history, stats, archiving."""

from persistence.requests.errors import InvalidTransitionError, LeaseLostError
from persistence.requests.lifecycle import Requests
from persistence.requests.partitions import (
    ArchiveReport,
    archive_requests,
    ensure_request_partitions,
    request_partition_months,
)
from persistence.requests.quota_tie import Pricing, RequestQuotas
from persistence.requests.types import (
    CancelOutcome,
    Claim,
    Heartbeat,
    HistoryCursor,
    HistoryPage,
    LedgerCall,
    QueueHealth,
    RequestHooks,
    RequestRecord,
    RequestResult,
    RequestStatsRow,
    SweepReport,
    TransitionRecord,
    Worker,
)

__all__ = [
    "ArchiveReport",
    "CancelOutcome",
    "Claim",
    "Heartbeat",
    "HistoryCursor",
    "HistoryPage",
    "InvalidTransitionError",
    "LeaseLostError",
    "LedgerCall",
    "Pricing",
    "QueueHealth",
    "RequestHooks",
    "RequestQuotas",
    "RequestRecord",
    "RequestResult",
    "RequestStatsRow",
    "Requests",
    "SweepReport",
    "TransitionRecord",
    "Worker",
    "archive_requests",
    "ensure_request_partitions",
    "request_partition_months",
]
