"""Test support for users of `persistence`: a throwaway migrated PostgreSQL and factory-boy factories.

Enable the fixtures in a test suite with `pytest_plugins = ["persistence.testing.pytest_plugin"]`.
"""

from persistence.testing.database import ThrowawayPostgres
from persistence.testing.factories import (
    AICallFactory,
    AICallKeyFactory,
    AICallModelHourlyFactory,
    AICallPendingBatchFactory,
    AICallUsageDeltaFactory,
    AICallUsageHourlyFactory,
    AuditLogFactory,
    ClaimFactory,
    ConsensusDecisionFactory,
    CostAlertFactory,
    CostAlertFiringFactory,
    CostAlertLogFactory,
    ModelCheckpointFactory,
    ModelFactory,
    ReconciliationReportFactory,
    ServiceHealthFactory,
    TrainingDataFactory,
    VendorPriceFactory,
    VerificationResultFactory,
    bind_engine,
    create,
    create_batch,
)

__all__ = [
    "AICallFactory",
    "AICallKeyFactory",
    "AICallModelHourlyFactory",
    "AICallPendingBatchFactory",
    "AICallUsageDeltaFactory",
    "AICallUsageHourlyFactory",
    "AuditLogFactory",
    "ClaimFactory",
    "ConsensusDecisionFactory",
    "CostAlertFactory",
    "CostAlertFiringFactory",
    "CostAlertLogFactory",
    "ModelCheckpointFactory",
    "ModelFactory",
    "ReconciliationReportFactory",
    "ServiceHealthFactory",
    "ThrowawayPostgres",
    "TrainingDataFactory",
    "VendorPriceFactory",
    "VerificationResultFactory",
    "bind_engine",
    "create",
    "create_batch",
]
