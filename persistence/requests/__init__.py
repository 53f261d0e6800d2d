"""Seed 001's inference requests: lifecycle, leases with fencing, sweeper, history, stats, archiving."""

from persistence.requests.errors import InvalidTransitionError, LeaseLostError
from persistence.requests.lifecycle import Requests
from persistence.requests.partitions import (
    ArchiveReport,
    archive_requests,
    ensure_request_partitions,
    request_partition_months,
)
from persistence.requests.types import (
    CancelOutcome,
    Claim,
    Heartbeat,
    HistoryCursor,
    HistoryPage,
    QueueHealth,
    RequestHooks,
    RequestRecord,
    RequestStatsRow,
    SweepReport,
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
    "QueueHealth",
    "RequestHooks",
    "RequestRecord",
    "RequestStatsRow",
    "Requests",
    "SweepReport",
    "Worker",
    "archive_requests",
    "ensure_request_partitions",
    "request_partition_months",
]
