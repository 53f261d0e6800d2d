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
| `persistence_pool_connections` | gauge (after the last checkout/checkin) | database, state (`in_use`/`idle`/`overflow`) |
| `persistence_pool_size` | gauge | database |
| `persistence_pool_events_total` | counter | database, event (`connect`/`invalidate`/`close`) |
| `persistence_transaction_duration_seconds` | histogram | outcome (`commit`/`rollback`/`retried`/`failed`), level (`transaction`/`savepoint`) |
| `persistence_replica_blocks_total` | counter | replica (`none` when none was available), outcome (`routed`/`waited`/`fallback`), reason |
| `persistence_replica_lag_seconds` | gauge (last measured) | replica |

`namespace` replaces the `persistence` prefix (e.g. one sink per service on a shared registry).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from persistence.observe.hooks import (
    BaseHook,
    PoolEvent,
    PoolStats,
    QueryEvent,
    ReplicaEvent,
    TransactionEvent,
)

QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
_NONE = "none"


class PrometheusHook(BaseHook):
    """Records every query, pool and transaction event into Prometheus metrics on `registry`."""

    def __init__(self, registry: CollectorRegistry, *, namespace: str = "persistence") -> None:
        self.registry = registry
        self.namespace = ns = namespace
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
        self.pool_events = Counter(
            "pool_events",
            "Connections opened, invalidated and closed by the pool.",
            ["database", "event"],
            namespace=ns,
            registry=registry,
        )
        self.transaction_duration = Histogram(
            "transaction_duration_seconds",
            "Time from a transaction's first statement to its end, by outcome (retried: one per retry).",
            ["outcome", "level"],
            namespace=ns,
            registry=registry,
            buckets=QUERY_BUCKETS,
        )
        self.replica_blocks = Counter(
            "replica_blocks",
            "Read-only blocks by where they ran: on a replica (at once or after waiting for the caller's "
            "last commit) or on the primary instead, and why.",
            ["replica", "outcome", "reason"],
            namespace=ns,
            registry=registry,
        )
        self.replica_lag = Gauge(
            "replica_lag_seconds",
            "A replica's replay lag at its last check.",
            ["replica"],
            namespace=ns,
            registry=registry,
        )
        # The pool gauges are read at scrape time from the numbers of the last checkout/checkin,
        # so the hot path stores one reference instead of setting four gauges.
        self._pools: dict[str, PoolStats] = {}
        registry.register(_PoolCollector(self))
        # Labelled children, cached: `labels()` takes a lock and builds a key on every call.
        self._durations: dict[tuple[str, str, str], Any] = {}
        self._rows: dict[tuple[str, str], Any] = {}
        self._waits: dict[str, Any] = {}
        self._transactions: dict[tuple[str, str], Any] = {}

    def on_query(self, event: QueryEvent) -> None:
        table = event.table or _NONE
        key = (event.operation, table, "ok" if event.success else "error")
        child = self._durations.get(key)
        if child is None:
            child = self._durations[key] = self.query_duration.labels(*key)
        child.observe(event.duration)
        if not event.success:
            self.query_errors.labels(event.operation, table, event.sqlstate or _NONE).inc()
        elif event.rows:
            rows_key = (event.operation, table)
            counter = self._rows.get(rows_key)
            if counter is None:
                counter = self._rows[rows_key] = self.query_rows.labels(*rows_key)
            counter.inc(event.rows)

    def on_pool(self, event: PoolEvent) -> None:
        database = event.database or _NONE
        kind = event.kind
        if kind == "checkout":
            child = self._waits.get(database)
            if child is None:
                child = self._waits[database] = self.checkout_wait.labels(database)
            child.observe(event.wait or 0.0)
            self._pools[database] = event.stats
        elif kind == "checkin":
            self._pools[database] = event.stats
        else:
            self.pool_events.labels(database, kind).inc()

    def on_transaction(self, event: TransactionEvent) -> None:
        key = (event.outcome, "transaction" if event.depth == 0 else "savepoint")
        child = self._transactions.get(key)
        if child is None:
            child = self._transactions[key] = self.transaction_duration.labels(*key)
        child.observe(event.duration)

    def on_replica(self, event: ReplicaEvent) -> None:
        replica = event.replica or _NONE
        self.replica_blocks.labels(replica, event.outcome, event.reason or _NONE).inc()
        if event.replica is not None and event.lag_s is not None:
            self.replica_lag.labels(replica).set(event.lag_s)


class _PoolCollector(Collector):
    """`<ns>_pool_connections{database, state}` and `<ns>_pool_size{database}` from the last pool numbers."""

    def __init__(self, hook: PrometheusHook) -> None:
        self._hook = hook

    def collect(self) -> Iterator[Metric]:
        ns = self._hook.namespace
        connections = GaugeMetricFamily(
            f"{ns}_pool_connections",
            "Pool connections by state after the last checkout or checkin.",
            labels=["database", "state"],
        )
        size = GaugeMetricFamily(f"{ns}_pool_size", "Configured pool size.", labels=["database"])
        for database, stats in list(self._hook._pools.items()):
            connections.add_metric([database, "in_use"], stats.in_use)
            connections.add_metric([database, "idle"], stats.idle)
            connections.add_metric([database, "overflow"], stats.overflow)
            size.add_metric([database], stats.size)
        yield connections
        yield size

    def describe(self) -> Iterator[Metric]:
        # Names known up front, so a second sink with the same namespace is refused at registration.
        ns = self._hook.namespace
        yield GaugeMetricFamily(f"{ns}_pool_connections", "", labels=["database", "state"])
        yield GaugeMetricFamily(f"{ns}_pool_size", "", labels=["database"])
