"""persistence: typed async PostgreSQL persistence for AI platform services.

This module is the public API; everything else may change without notice.
"""

from persistence.ai_calls import AICallLogger, AICallRecord, SyncAICallLogger, UnpricedCallError
from persistence.ai_calls.access import grant_reader
from persistence.ai_calls.batch import (
    BatchLogger,
    BatchStats,
    RejectedCall,
    RejectedCallsError,
    UnwrittenCallsError,
)
from persistence.ai_calls.monitoring_queries import (
    HourlyCount,
    LedgerHealth,
    ReportSummary,
    ledger_health,
    quiet_hours,
    recent_reports,
    rows_today,
    table_size_bytes,
)
from persistence.ai_calls.reconciliation import (
    Reconciler,
    ReconciliationLine,
    ReconciliationResult,
    reconcile,
)
from persistence.ai_calls.sources import (
    FileUsageSource,
    HttpUsageSource,
    UsageAmount,
    UsageLine,
    UsageSource,
    VendorUsage,
)
from persistence.audit import audit_context, current_audit
from persistence.config import DatabaseConfig, EmbeddedConfig, ReconciliationConfig
from persistence.embedded import EmbeddedServer, ServerStatus
from persistence.engine import create_database_engine
from persistence.errors import (
    ArgumentTypeError,
    ConfigurationError,
    ConflictError,
    ConnectionLostError,
    DatabaseConnectionError,
    DatabaseError,
    EmbeddedServerError,
    IntegrityViolation,
    InvalidRequestError,
    MigrationLockTimeout,
    NotFoundError,
    PersistenceError,
    PoolExhaustedError,
    ServerUnavailableError,
    TransactionError,
    TransientError,
    UsageSourceError,
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
from persistence.transaction import (
    current_session,
    get_rollback,
    in_transaction,
    on_commit,
    set_rollback,
    transaction,
)

__all__ = [
    "AICallLogger",
    "AICallRecord",
    "ArgumentTypeError",
    "AuditLogRepository",
    "BatchLogger",
    "BatchStats",
    "CheckpointRepository",
    "ClaimRepository",
    "ConfigurationError",
    "ConflictError",
    "ConnectionLostError",
    "ConsensusRepository",
    "DatabaseConfig",
    "DatabaseConnectionError",
    "DatabaseError",
    "EmbeddedConfig",
    "EmbeddedServer",
    "EmbeddedServerError",
    "FileUsageSource",
    "HourlyCount",
    "HttpUsageSource",
    "IntegrityViolation",
    "InvalidRequestError",
    "LedgerHealth",
    "MigrationLockTimeout",
    "NotFoundError",
    "Page",
    "PersistenceError",
    "PoolExhaustedError",
    "Reconciler",
    "ReconciliationConfig",
    "ReconciliationLine",
    "ReconciliationResult",
    "RejectedCall",
    "RejectedCallsError",
    "ReportSummary",
    "Repository",
    "ServerStatus",
    "ServerUnavailableError",
    "ServiceHealthRepository",
    "SyncAICallLogger",
    "TrainingDataRepository",
    "TransactionError",
    "TransientError",
    "UnpricedCallError",
    "UnwrittenCallsError",
    "UsageAmount",
    "UsageLine",
    "UsageSource",
    "UsageSourceError",
    "ValidationError",
    "VendorUsage",
    "VerificationRepository",
    "audit_context",
    "create_database_engine",
    "current_audit",
    "current_session",
    "get_rollback",
    "grant_reader",
    "in_transaction",
    "ledger_health",
    "on_commit",
    "quiet_hours",
    "recent_reports",
    "reconcile",
    "rows_today",
    "set_rollback",
    "table_size_bytes",
    "transaction",
]
__version__ = "0.1.0"
