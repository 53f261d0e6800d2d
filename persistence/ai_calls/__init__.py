"""The AI-call ledger (seed 000): validated records, the logger, prices, rollups, partitions;
reconciliation against the metering vendor, read-only access and monitoring (their own modules);
cost accuracy (provided vs computed cost) and billing validation (vendor bills vs the ledger)."""

from persistence.ai_calls.billing import (
    BillingFileError,
    BillingImport,
    BillingLine,
    BillingPeriodInfo,
    BillingPolicy,
    BillingRow,
    BillingRowError,
    BillingValidationReport,
    PeriodTransition,
    close_due_periods,
    get_billing_period,
    import_billing_file,
    import_usage_source,
    load_billing_file,
    record_billing_rows,
    validate_billing,
)
from persistence.ai_calls.cost_accuracy import (
    CostAccuracyLine,
    CostAccuracyReport,
    CostTolerance,
    WorstCall,
    load_cost_accuracy,
    validate_cost_accuracy,
)
from persistence.ai_calls.logger import AICallLogger
from persistence.ai_calls.prices import Price, PriceBook, UnpricedCallError
from persistence.ai_calls.record import AICallRecord
from persistence.ai_calls.reprice import RepriceReport, reprice_calls
from persistence.ai_calls.rollups import fold_rollups, rebuild_rollups
from persistence.ai_calls.sync import SyncAICallLogger
from persistence.ai_calls.usage import TokenUsage, UsageMismatchError, UsageShapeError, normalise_usage

__all__ = [
    "AICallLogger",
    "AICallRecord",
    "BillingFileError",
    "BillingImport",
    "BillingLine",
    "BillingPeriodInfo",
    "BillingPolicy",
    "BillingRow",
    "BillingRowError",
    "BillingValidationReport",
    "CostAccuracyLine",
    "CostAccuracyReport",
    "CostTolerance",
    "PeriodTransition",
    "Price",
    "PriceBook",
    "RepriceReport",
    "SyncAICallLogger",
    "TokenUsage",
    "UnpricedCallError",
    "UsageMismatchError",
    "UsageShapeError",
    "WorstCall",
    "close_due_periods",
    "fold_rollups",
    "get_billing_period",
    "import_billing_file",
    "import_usage_source",
    "load_billing_file",
    "load_cost_accuracy",
    "normalise_usage",
    "rebuild_rollups",
    "record_billing_rows",
    "reprice_calls",
    "validate_billing",
    "validate_cost_accuracy",
]
