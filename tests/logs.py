"""Capturing the package's log lines in a test, as the stdlib `logging` tree delivers them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from persistence.observe.loggers import FIELDS, ROOT


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, FIELDS, None)
        if not isinstance(fields, dict):  # SQLAlchemy's own lines about our pool class
            return
        self.entries.append({**fields, "log_level": record.levelname.lower(), "logger": record.name})


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Every line logged under `persistence` inside the block (any level): its event, fields,
    `log_level` and `logger` name, like `structlog.testing.capture_logs`, but read from the
    stdlib tree, which is the only place our lines go."""
    logger = logging.getLogger(ROOT)
    capture, level = _Capture(), logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        yield capture.entries
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
