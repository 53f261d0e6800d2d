"""Opt-in log output, correlation ids, and the slow-query log.

- `configure_logging(json=True, level="INFO")`: one call for the whole process (JSON lines or a
  console renderer, ISO UTC timestamps, context variables merged into every line), for the
  application's structlog and the package's own `persistence` loggers. Without it (or the
  application's own `logging` setup) the package writes nothing: see `observe/loggers.py`.
- `correlation(trace_id=..., request_id=...)`: a `with` block whose ids are bound to every log line
  (structlog context variables) and carried by every `QueryEvent` made inside it.
- `SlowQueryLog`: a hook that logs each statement slower than a threshold once, with its normalised
  text (literals replaced by `?`) and duration; never its parameter values, which may hold personal
  data or secrets. The engine attaches one when `DatabaseConfig.slow_query_ms` is set.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TextIO

import structlog

from persistence.observe.hooks import BaseHook, QueryEvent
from persistence.observe.loggers import FIELDS, ROOT, get_logger

trace_id: ContextVar[str | None] = ContextVar("persistence_trace_id", default=None)
request_id: ContextVar[str | None] = ContextVar("persistence_request_id", default=None)

slow_log = get_logger("persistence.slow_query")


def configure_logging(*, json: bool = True, level: int | str = "INFO", stream: TextIO | None = None) -> None:
    """Opt in to JSON (or console) lines for the process: structlog for the application's own
    loggers, and a handler on the `persistence` logger rendering ours the same way, to the same
    stream (stderr by default). Our logger then stops propagating, so an application that also
    configured the root logger does not get each line twice. Calling it again replaces both."""
    numeric = logging.getLevelNamesMapping()[level.upper()] if isinstance(level, str) else level
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    chain: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *chain, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = _ConfiguredHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_our_fields, *chain],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    ours = logging.getLogger(ROOT)
    for old in [h for h in ours.handlers if isinstance(h, _ConfiguredHandler)]:
        ours.removeHandler(old)
    ours.addHandler(handler)
    ours.setLevel(numeric)
    ours.propagate = False


class _ConfiguredHandler(logging.StreamHandler[TextIO]):
    """The handler `configure_logging` installs (so a second call can find and replace it)."""


def _our_fields(
    logger: object, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Our records carry their event and fields whole: render those, not the flattened message."""
    fields = getattr(event_dict.get("_record"), FIELDS, None)
    if isinstance(fields, dict):
        event_dict.update(fields)
    return event_dict


@contextlib.contextmanager
def correlation(*, trace_id: str | None = None, request_id: str | None = None) -> Iterator[None]:
    """Tag every log line and `QueryEvent` made inside the block with these ids (None keeps the outer one)."""
    ids = {
        name: value
        for name, value in (("trace_id", trace_id), ("request_id", request_id))
        if value is not None
    }
    tokens = [(var, var.set(ids[name])) for name, var in _VARS.items() if name in ids]
    try:
        with structlog.contextvars.bound_contextvars(**ids):
            yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


_VARS = {"trace_id": trace_id, "request_id": request_id}


class SlowQueryLog(BaseHook):
    """Logs a statement that took at least `threshold` seconds, once, at WARNING, without parameters."""

    def __init__(self, threshold: float) -> None:
        if threshold < 0:
            raise ValueError("threshold must be >= 0 seconds")
        self.threshold = threshold

    def on_query(self, event: QueryEvent) -> None:
        if event.duration < self.threshold:
            return
        slow_log.warning(
            "slow query",
            statement=event.statement,
            duration_ms=round(event.duration * 1000, 3),
            threshold_ms=round(self.threshold * 1000, 3),
            operation=event.operation,
            table=event.table,
            rows=event.rows,
            sqlstate=event.sqlstate,
            database=event.database,
            trace_id=event.trace_id,
            request_id=event.request_id,
        )
