"""Prometheus sink (extra `prometheus`: `pip install 'persistence[prometheus]'`).

    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry()
    engine = await create_database_engine(config, hooks=[PrometheusHook(registry)])

Metric names are stable; labels are low-cardinality (operation keyword, table name, outcome,
SQLSTATE, pool event kind), never statement text or values:

| metric | type | labels |
|---|---|---|
| `persistence_query_duration_seconds` | histogram | operation, table, outcome (`ok`/`error`) |
| `persistence_query_errors_total` | counter | operation, table, sqlstate |
| `persistence_query_rows_total` | counter | operation, table |
| `persistence_pool_checkout_wait_seconds` | histogram | database |
| `persistence_pool_connections` | gauge | database, state (`in_use`/`idle`/`overflow`) |
| `persistence_pool_size` | gauge | database |
| `persistence_pool_events_total` | counter | database, event (`connect`/`invalidate`/`close`) |
| `persistence_transaction_duration_seconds` | histogram | outcome, level (`transaction`/`savepoint`) |
| `persistence_transaction_attempts` | histogram | outcome |

`namespace` replaces the `persistence` prefix (e.g. one sink per service on a shared registry).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from persistence.observe.hooks import BaseHook, PoolEvent, QueryEvent, TransactionEvent

QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
ATTEMPT_BUCKETS = (1, 2, 3, 5, 10)
_NONE = "none"


class PrometheusHook(BaseHook):
    """Records every query, pool and transaction event into Prometheus metrics on `registry`."""

    def __init__(self, registry: CollectorRegistry, *, namespace: str = "persistence") -> None:
        self.registry = registry
        ns = namespace
        self.query_duration = Histogram(
            "query_duration_seconds",
            "Time from sending a statement to its result, by operation and main table.",
            ["operation", "table", "outcome"],
            namespace=ns,
            registry=registry,
            buckets=QUERY_BUCKETS,
        )
        self.query_errors = Counter(
            "query_errors",
            "Statements the server rejected, by SQLSTATE.",
            ["operation", "table", "sqlstate"],
            namespace=ns,
            registry=registry,
        )
        self.query_rows = Counter(
            "query_rows",
            "Rows returned or affected, as the driver reports them.",
            ["operation", "table"],
            namespace=ns,
            registry=registry,
        )
        self.checkout_wait = Histogram(
            "pool_checkout_wait_seconds",
            "Time a caller waited for a usable pooled connection (queue, connect, pre-ping).",
            ["database"],
            namespace=ns,
            registry=registry,
            buckets=WAIT_BUCKETS,
        )
        self.pool_connections = Gauge(
            "pool_connections",
            "Pool connections by state after the last checkout or checkin.",
            ["database", "state"],
            namespace=ns,
            registry=registry,
        )
        self.pool_size = Gauge(
            "pool_size", "Configured pool size.", ["database"], namespace=ns, registry=registry
        )
        self.pool_events = Counter(
            "pool_events",
            "Connections opened, invalidated and closed by the pool.",
            ["database", "event"],
            namespace=ns,
            registry=registry,
        )
        self.transaction_duration = Histogram(
            "transaction_duration_seconds",
            "Time from a transaction's first statement to its end, by outcome.",
            ["outcome", "level"],
            namespace=ns,
            registry=registry,
            buckets=QUERY_BUCKETS,
        )
        self.transaction_attempts = Histogram(
            "transaction_attempts",
            "Runs of a transaction function (1 unless it was retried).",
            ["outcome"],
            namespace=ns,
            registry=registry,
            buckets=ATTEMPT_BUCKETS,
        )
        # Labelled children, cached: `labels()` costs a lock and a dict build per call.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_query(self, event: QueryEvent) -> None:
        table = event.table or _NONE
        outcome = "ok" if event.success else "error"
        self._child(self.query_duration, event.operation, table, outcome).observe(event.duration)
        if not event.success:
            self._child(self.query_errors, event.operation, table, event.sqlstate or _NONE).inc()
        if event.rows:
            self._child(self.query_rows, event.operation, table).inc(event.rows)

    def on_pool(self, event: PoolEvent) -> None:
        database = event.database or _NONE
        stats = event.stats
        if event.kind == "checkout" or event.kind == "checkin":
            if event.wait is not None:
                self._child(self.checkout_wait, database).observe(event.wait)
            self._child(self.pool_connections, database, "in_use").set(stats.in_use)
            self._child(self.pool_connections, database, "idle").set(stats.idle)
            self._child(self.pool_connections, database, "overflow").set(stats.overflow)
            self._child(self.pool_size, database).set(stats.size)
        else:
            self._child(self.pool_events, database, event.kind).inc()

    def on_transaction(self, event: TransactionEvent) -> None:
        level = "transaction" if event.depth == 0 else "savepoint"
        self._child(self.transaction_duration, event.outcome, level).observe(event.duration)
        if event.depth == 0:
            self._child(self.transaction_attempts, event.outcome).observe(event.attempts)
