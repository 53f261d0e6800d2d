"""OpenTelemetry spans: one per statement, nested under a span per transaction, with DB semconv attributes."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from persistence import ClaimRepository, transaction
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import ConflictError
from persistence.observe.otel import OpenTelemetryHook


@pytest.mark.commits
async def test_transaction_and_query_spans(fresh_database: DatabaseConfig) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = build_engine(fresh_database, hooks=[OpenTelemetryHook(provider)])
    claims = ClaimRepository(engine)

    @transaction
    async def work() -> None:
        claim = await claims.add(external_id="o-1", content="x")
        await claims.get(claim.id)

    try:
        async with engine.connect():  # the first connection's setup queries make spans of their own
            pass
        exporter.clear()
        await work()
        with pytest.raises(ConflictError):
            await claims.add(external_id="o-1", content="again")
    finally:
        await engine.dispose()

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [
        "INSERT claims",
        "SELECT claims",
        "transaction",
        "INSERT claims",
        "transaction",
    ]
    insert, select, tx, failed_insert, failed_tx = spans
    assert tx.parent is None
    for child in (insert, select):
        assert child.parent is not None and child.parent.span_id == tx.context.span_id
        assert child.context.trace_id == tx.context.trace_id
        assert child.kind is SpanKind.CLIENT
        assert child.start_time is not None and tx.start_time is not None
        assert child.start_time >= tx.start_time
    attrs = dict(insert.attributes or {})
    assert attrs["db.system.name"] == "postgresql"
    assert attrs["db.operation.name"] == "INSERT"
    assert attrs["db.collection.name"] == "claims"
    assert attrs["db.namespace"] == fresh_database.database
    assert attrs["db.response.returned_rows"] == 1
    assert "o-1" not in str(attrs["db.query.text"])
    assert dict(tx.attributes or {})["persistence.transaction.outcome"] == "commit"
    assert failed_insert.status.status_code is StatusCode.ERROR
    assert dict(failed_insert.attributes or {})["db.response.status_code"] == "23505"
    assert failed_insert.parent is not None and failed_insert.parent.span_id == failed_tx.context.span_id
    assert dict(failed_tx.attributes or {})["persistence.transaction.outcome"] == "failed"
