"""Every table of the package. Importing this module registers them all on `Base.metadata`."""

from persistence.models.ai_calls import AICall, AICallKey
from persistence.models.audit import AuditLog
from persistence.models.base import Base
from persistence.models.billing import BillingData, BillingPeriod, BillingValidation
from persistence.models.checkpoints import ModelCheckpoint
from persistence.models.claims import Claim
from persistence.models.consensus import ConsensusDecision
from persistence.models.cost_accuracy import CostAccuracyValidation
from persistence.models.cost_alerts import CostAlert, CostAlertFiring, CostAlertLog
from persistence.models.event_rollups import (
    AgentExecutionHourly,
    AgentExecutionHourlyDelta,
    TenantCostHourly,
    TenantCostHourlyDelta,
)
from persistence.models.events import AgentExecutionRow, PlatformEventRow, TenantCostEventRow
from persistence.models.limits import CompanyQuota, RateLimitConfig
from persistence.models.pricing import VendorPrice, vendor_prices_version
from persistence.models.quotas import Quota, QuotaCounter, QuotaHold, QuotaReservation, RateLimitReset
from persistence.models.rate_limits import RateLimitSlot, RateLimitState
from persistence.models.reconciliation import ReconciliationReport
from persistence.models.requests import (
    RequestHistory,
    RequestInflight,
    RequestStatsDaily,
    RequestStatsDelta,
    RequestTransition,
)
from persistence.models.results import Result, ResultCacheEntry, ResultChunk
from persistence.models.rollups import (
    AICallModelHourly,
    AICallPendingBatch,
    AICallUsageDelta,
    AICallUsageHourly,
)
from persistence.models.service_health import ServiceHealth
from persistence.models.subjects import ApiKey, Company, User
from persistence.models.training import TrainingData
from persistence.models.usage import Usage
from persistence.models.verification import VerificationResult

__all__ = [
    "AICall",
    "AICallKey",
    "AICallModelHourly",
    "AICallPendingBatch",
    "AICallUsageDelta",
    "AICallUsageHourly",
    "AgentExecutionHourly",
    "AgentExecutionHourlyDelta",
    "AgentExecutionRow",
    "ApiKey",
    "AuditLog",
    "Base",
    "BillingData",
    "BillingPeriod",
    "BillingValidation",
    "Claim",
    "Company",
    "CompanyQuota",
    "ConsensusDecision",
    "CostAccuracyValidation",
    "CostAlert",
    "CostAlertFiring",
    "CostAlertLog",
    "ModelCheckpoint",
    "PlatformEventRow",
    "Quota",
    "QuotaCounter",
    "QuotaHold",
    "QuotaReservation",
    "RateLimitConfig",
    "RateLimitReset",
    "RateLimitSlot",
    "RateLimitState",
    "ReconciliationReport",
    "RequestHistory",
    "RequestInflight",
    "RequestStatsDaily",
    "RequestStatsDelta",
    "RequestTransition",
    "Result",
    "ResultCacheEntry",
    "ResultChunk",
    "ServiceHealth",
    "TenantCostEventRow",
    "TenantCostHourly",
    "TenantCostHourlyDelta",
    "TrainingData",
    "Usage",
    "User",
    "VendorPrice",
    "VerificationResult",
    "vendor_prices_version",
]
