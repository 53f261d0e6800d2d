"""Observability: typed hooks for queries, pool and transactions; logging; health.

Prometheus (`persistence.observe.prometheus`) and OpenTelemetry (`persistence.observe.otel`) sinks
need the `prometheus` / `otel` extras and are imported only when asked for.
"""

from persistence.observe.health import HealthReport, SchemaStatus, health
from persistence.observe.hooks import (
    BaseHook,
    Hook,
    Hooks,
    PoolEvent,
    PoolStats,
    QueryEvent,
    ReplicaEvent,
    TransactionEvent,
    TransactionStart,
)
from persistence.observe.logging import SlowQueryLog, configure_logging, correlation

__all__ = [
    "BaseHook",
    "HealthReport",
    "Hook",
    "Hooks",
    "PoolEvent",
    "PoolStats",
    "QueryEvent",
    "ReplicaEvent",
    "SchemaStatus",
    "SlowQueryLog",
    "TransactionEvent",
    "TransactionStart",
    "configure_logging",
    "correlation",
    "health",
]
