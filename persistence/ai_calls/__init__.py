"""The AI-call ledger (seed 000): validated records, the logger, prices, rollups, partitions;
reconciliation against the metering vendor, read-only access and monitoring (their own modules)."""

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
    "Price",
    "PriceBook",
    "RepriceReport",
    "SyncAICallLogger",
    "TokenUsage",
    "UnpricedCallError",
    "UsageMismatchError",
    "UsageShapeError",
    "fold_rollups",
    "normalise_usage",
    "rebuild_rollups",
    "reprice_calls",
]
