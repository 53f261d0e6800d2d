"""In-process database metrics (seed 003's `DatabaseMetrics`), readable as a snapshot.

    from persistence.monitoring import DatabaseMetrics

    metrics = DatabaseMetrics()
    metrics.record_query_duration("get_verification", 0.025)
    metrics.record_connection_pool_size(15)
    metrics.record_transaction_status("success")
    metrics.snapshot().queries["get_verification"].p95

It is also a hook: `create_database_engine(config, hooks=[metrics])` records every statement (named
`"<OPERATION> <table>"`, e.g. `"SELECT claims"`), the pool's open connections after each checkout and
checkin, and each transaction's outcome. Percentiles come from the most recent `window` samples per
query name, so memory stays bounded however long the process runs.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from persistence.observe.hooks import BaseHook, PoolEvent, PoolStats, QueryEvent, TransactionEvent


@dataclass(frozen=True)
class QueryStats:
    """One query name: `count` and `total` seconds over the process's life; `p50`/`p95`/`p99`/`max`
    over the most recent samples (nearest-rank percentiles); `errors` counts failed statements."""

    count: int
    total: float
    mean: float
    p50: float
    p95: float
    p99: float
    max: float
    errors: int


@dataclass(frozen=True)
class MetricsSnapshot:
    queries: Mapping[str, QueryStats]
    transactions: Mapping[str, int]
    pool_size: int | None
    pool: PoolStats | None
    pool_checkouts: int
    pool_wait_total: float


class _Series:
    __slots__ = ("count", "errors", "recent", "total")

    def __init__(self, window: int) -> None:
        self.count = 0
        self.errors = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=window)


class DatabaseMetrics(BaseHook):
    """Counts, sums and percentiles per query name, transaction outcomes, and pool size. Thread-safe."""

    def __init__(self, *, window: int = 2048) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._window = window
        self._lock = threading.Lock()
        self._queries: dict[str, _Series] = {}
        self._transactions: Counter[str] = Counter()
        self._pool_size: int | None = None
        self._pool: PoolStats | None = None
        self._checkouts = 0
        self._wait_total = 0.0

    # -- seed 003 API -----------------------------------------------------------------------------
    def record_query_duration(self, name: str, seconds: float, *, error: bool = False) -> None:
        """One execution of the query `name` that took `seconds`."""
        if not name:
            raise ValueError("query name must not be empty")
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"duration must be a finite number of seconds >= 0, got {seconds!r}")
        with self._lock:
            series = self._queries.get(name)
            if series is None:
                series = self._queries[name] = _Series(self._window)
            series.count += 1
            series.total += seconds
            series.recent.append(seconds)
            if error:
                series.errors += 1

    def record_connection_pool_size(self, size: int) -> None:
        """The pool's current number of open connections."""
        if size < 0:
            raise ValueError("pool size must be >= 0")
        with self._lock:
            self._pool_size = size

    def record_transaction_status(self, status: str) -> None:
        """One finished transaction with this status (`success`, `commit`, `rollback`, ...)."""
        if not status:
            raise ValueError("status must not be empty")
        with self._lock:
            self._transactions[status] += 1

    # -- reading ----------------------------------------------------------------------------------
    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            queries = {name: _stats(series) for name, series in sorted(self._queries.items())}
            return MetricsSnapshot(
                queries=MappingProxyType(queries),
                transactions=MappingProxyType(dict(sorted(self._transactions.items()))),
                pool_size=self._pool_size,
                pool=self._pool,
                pool_checkouts=self._checkouts,
                pool_wait_total=self._wait_total,
            )

    def reset(self) -> None:
        with self._lock:
            self._queries.clear()
            self._transactions.clear()
            self._pool_size = None
            self._pool = None
            self._checkouts = 0
            self._wait_total = 0.0

    # -- hook -------------------------------------------------------------------------------------
    def on_query(self, event: QueryEvent) -> None:
        name = f"{event.operation} {event.table}" if event.table else event.operation
        self.record_query_duration(name, event.duration, error=not event.success)

    def on_pool(self, event: PoolEvent) -> None:
        if event.kind != "checkout" and event.kind != "checkin":
            return  # mid-change numbers (a connection being closed still counts as checked out)
        with self._lock:
            self._pool = event.stats
            self._pool_size = event.stats.open
            if event.wait is not None:
                self._checkouts += 1
                self._wait_total += event.wait

    def on_transaction(self, event: TransactionEvent) -> None:
        if event.depth == 0:
            self.record_transaction_status(event.outcome)
        else:
            self.record_transaction_status(f"savepoint_{event.outcome}")


def _stats(series: _Series) -> QueryStats:
    ordered = sorted(series.recent)
    return QueryStats(
        count=series.count,
        total=series.total,
        mean=series.total / series.count,
        p50=_nearest_rank(ordered, 50),
        p95=_nearest_rank(ordered, 95),
        p99=_nearest_rank(ordered, 99),
        max=ordered[-1],
        errors=series.errors,
    )


def _nearest_rank(ordered: list[float], percent: int) -> float:
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]
