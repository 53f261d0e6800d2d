"""One repository per seed 003 aggregate, each constructed as `XRepository(engine)`."""

from persistence.repositories.audit_log import AuditLogRepository
from persistence.repositories.checkpoints import CheckpointRepository
from persistence.repositories.claims import ClaimRepository
from persistence.repositories.consensus import ConsensusRepository
from persistence.repositories.service_health import ServiceHealthRepository
from persistence.repositories.training import TrainingDataRepository
from persistence.repositories.verifications import VerificationRepository

__all__ = [
    "AuditLogRepository",
    "CheckpointRepository",
    "ClaimRepository",
    "ConsensusRepository",
    "ServiceHealthRepository",
    "TrainingDataRepository",
    "VerificationRepository",
]
