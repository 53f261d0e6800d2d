"""persistence: typed async PostgreSQL persistence for AI platform services.

This module is the public API; everything else may change without notice.
"""

from persistence.ai_calls import AICallLogger, AICallRecord, SyncAICallLogger, UnpricedCallError
from persistence.audit import audit_context, current_audit
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer, ServerStatus
from persistence.engine import create_database_engine
from persistence.errors import (
    ConfigurationError,
    ConflictError,
    DatabaseConnectionError,
    DatabaseError,
    EmbeddedServerError,
    IntegrityViolation,
    InvalidRequestError,
    NotFoundError,
    PersistenceError,
    TransactionError,
    TransientError,
    ValidationError,
)
from persistence.repositories import (
    AuditLogRepository,
    CheckpointRepository,
    ClaimRepository,
    ConsensusRepository,
    ServiceHealthRepository,
    TrainingDataRepository,
    VerificationRepository,
)
from persistence.repository import Page, Repository
from persistence.transaction import current_session, in_transaction, on_commit, transaction

__all__ = [
    "AICallLogger",
    "AICallRecord",
    "AuditLogRepository",
    "CheckpointRepository",
    "ClaimRepository",
    "ConfigurationError",
    "ConflictError",
    "ConsensusRepository",
    "DatabaseConfig",
    "DatabaseConnectionError",
    "DatabaseError",
    "EmbeddedConfig",
    "EmbeddedServer",
    "EmbeddedServerError",
    "IntegrityViolation",
    "InvalidRequestError",
    "NotFoundError",
    "Page",
    "PersistenceError",
    "Repository",
    "ServerStatus",
    "ServiceHealthRepository",
    "SyncAICallLogger",
    "TrainingDataRepository",
    "TransactionError",
    "TransientError",
    "UnpricedCallError",
    "ValidationError",
    "VerificationRepository",
    "audit_context",
    "create_database_engine",
    "current_audit",
    "current_session",
    "in_transaction",
    "on_commit",
    "transaction",
]
__version__ = "0.1.0"
