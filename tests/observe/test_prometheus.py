"""The Prometheus sink after real queries: query histogram, pool gauges, transaction outcomes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from persistence import ClaimRepository, transaction
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.observe.hooks import Hooks, ReplicaEvent
from persistence.observe.prometheus import PrometheusHook


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, parsed back from the exposition text a scraper would read."""
    exposition = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


@pytest.mark.commits
async def test_registry_has_query_histogram_and_pool_gauges_after_real_queries(
    fresh_database: DatabaseConfig,
) -> None:
    registry = CollectorRegistry()
    engine = build_engine(fresh_database, hooks=[PrometheusHook(registry)])
    claims = ClaimRepository(engine)
    try:
        claim = await claims.add(external_id="p-1", content="x")
        await claims.get(claim.id)
        await claims.get(claim.id)

        @transaction
        async def two() -> None:
            await claims.add(external_id="p-2", content="y")
            await claims.add(external_id="p-2", content="dup")  # unique violation

        with pytest.raises(Exception, match="uq_claims_external_id"):
            await two()
    finally:
        await engine.dispose()

    text = generate_latest(registry).decode()
    assert "# TYPE persistence_query_duration_seconds histogram" in text
    assert "# TYPE persistence_pool_connections gauge" in text
    got = samples(registry)
    db = fresh_database.database or ""
    select_ok = labels(operation="SELECT", table="claims", outcome="ok")
    insert_ok = labels(operation="INSERT", table="claims", outcome="ok")
    insert_err = labels(operation="INSERT", table="claims", outcome="error")
    assert got["persistence_query_duration_seconds_count", select_ok] == 2
    assert got["persistence_query_duration_seconds_count", insert_ok] == 2
    assert got["persistence_query_duration_seconds_count", insert_err] == 1
    assert got["persistence_query_duration_seconds_sum", select_ok] > 0
    assert (
        got["persistence_query_errors_total", labels(operation="INSERT", table="claims", sqlstate="23505")]
        == 1
    )
    assert got["persistence_query_rows_total", labels(operation="SELECT", table="claims")] == 2
    # After the last checkin: one connection open and idle, none in use; pool size from the config.
    assert got["persistence_pool_connections", labels(database=db, state="in_use")] == 0
    assert got["persistence_pool_connections", labels(database=db, state="idle")] == 1
    assert got["persistence_pool_connections", labels(database=db, state="overflow")] == 0
    assert got["persistence_pool_size", labels(database=db)] == 5
    assert got["persistence_pool_checkout_wait_seconds_count", labels(database=db)] == 4
    assert got["persistence_pool_events_total", labels(database=db, event="connect")] == 1
    commit = labels(outcome="commit", level="transaction")
    failed = labels(outcome="failed", level="transaction")
    assert got["persistence_transaction_duration_seconds_count", commit] == 3
    assert got["persistence_transaction_duration_seconds_count", failed] == 1
    # Nothing in the exposition carries statement text or values.
    assert "p-1" not in text and "SELECT claims.id" not in text


def test_two_sinks_on_one_registry_need_their_own_namespace() -> None:
    registry = CollectorRegistry()
    PrometheusHook(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusHook(registry)
    PrometheusHook(registry, namespace="billing_db")
    assert "billing_db_query_duration_seconds" in generate_latest(registry).decode()


def test_replica_routing_counts_and_lag() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    hooks = Hooks([hook])
    assert hooks.wants_replica
    hooks.replica(ReplicaEvent("routed", "ro@r1:5432/app", None, 0.25, 0.0, "app"))
    hooks.replica(ReplicaEvent("fallback", None, "no replica", None, 0.0, "app"))
    labels = {"replica": "ro@r1:5432/app", "outcome": "routed", "reason": "none"}
    assert registry.get_sample_value("persistence_replica_blocks_total", labels) == 1
    fallback = {"replica": "none", "outcome": "fallback", "reason": "no replica"}
    assert registry.get_sample_value("persistence_replica_blocks_total", fallback) == 1
    assert registry.get_sample_value("persistence_replica_lag_seconds", {"replica": "ro@r1:5432/app"}) == 0.25
