"""OpenTelemetry sink (extra `otel`: `pip install 'persistence[otel]'`).

One CLIENT span per statement, named `"<operation> <table>"` (`"SELECT claims"`), with the database
semantic-convention attributes: `db.system.name` (and the older `db.system`) = `postgresql`,
`db.namespace`, `db.operation.name`, `db.collection.name`, `db.query.text` (normalised: literals
replaced by `?`, never parameter values), `db.response.status_code` (SQLSTATE) and `error.type` on
failure, `db.response.returned_rows`. Each transaction and savepoint is a span too (`transaction`,
`savepoint`) that its statements nest under, with `persistence.transaction.outcome`, `.attempt`,
`.depth`. Spans go to `tracer_provider` (default: the global one).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from persistence.observe.hooks import BaseHook, QueryEvent, TransactionEvent, TransactionStart

_open: ContextVar[tuple[tuple[Span, object], ...]] = ContextVar("persistence_otel_spans", default=())


class OpenTelemetryHook(BaseHook):
    """Turns query and transaction events into OpenTelemetry spans."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("persistence", tracer_provider=tracer_provider)

    def on_query(self, event: QueryEvent) -> None:
        end = time.time_ns()
        name = f"{event.operation} {event.table}" if event.table else event.operation
        attributes: dict[str, Any] = {
            "db.system.name": "postgresql",
            "db.system": "postgresql",
            "db.operation.name": event.operation,
            "db.query.text": event.statement,
        }
        if event.database:
            attributes["db.namespace"] = event.database
        if event.table:
            attributes["db.collection.name"] = event.table
        if event.rows is not None:
            attributes["db.response.returned_rows"] = event.rows
        if event.executemany:
            attributes["db.operation.batch.size"] = 2  # semconv: batch when > 1; the exact size is unknown
        span = self.tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            start_time=end - int(event.duration * 1e9),
            attributes=attributes,
        )
        if not event.success:
            if event.sqlstate:
                span.set_attribute("db.response.status_code", event.sqlstate)
            span.set_attribute("error.type", event.sqlstate or event.error or "error")
            span.set_status(Status(StatusCode.ERROR, event.error))
        span.end(end_time=end)

    def on_transaction_start(self, event: TransactionStart) -> None:
        name = "transaction" if event.depth == 0 else "savepoint"
        attributes: dict[str, Any] = {
            "db.system.name": "postgresql",
            "db.system": "postgresql",
            "persistence.transaction.depth": event.depth,
            "persistence.transaction.attempt": event.attempt,
        }
        if event.database:
            attributes["db.namespace"] = event.database
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        _open.set((*_open.get(), (span, token)))

    def on_transaction(self, event: TransactionEvent) -> None:
        stack = _open.get()
        if not stack:
            return
        (span, token), rest = stack[-1], stack[:-1]
        _open.set(rest)
        span.set_attribute("persistence.transaction.outcome", event.outcome)
        span.set_attribute("persistence.transaction.attempts", event.attempts)
        span.set_attribute("persistence.transaction.max_depth", event.max_depth)
        if event.sqlstate:
            span.set_attribute("db.response.status_code", event.sqlstate)
        if event.outcome == "failed":
            span.set_attribute("error.type", event.sqlstate or "failed")
            span.set_status(Status(StatusCode.ERROR, "transaction failed"))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]
