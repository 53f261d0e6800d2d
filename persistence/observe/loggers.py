"""The package's loggers: key=value call sites, routed through the standard `logging` tree.

A library must not decide where its log lines go. Every line we emit goes to the stdlib logger of
the same name under `persistence` (`persistence.transaction`, `persistence.slow_query`, ...), so
`logging.getLogger("persistence")` silences, raises or redirects all of it, and nothing is written
anywhere until the application configures logging (the `NullHandler` below also keeps Python's
last-resort stderr handler quiet). `configure_logging()` is the opt-in for JSON lines.

Call sites keep structlog's shape, `log.warning("slow query", statement=..., duration_ms=...)`.
The fields survive three ways: in the message (`slow query statement='SELECT 1' duration_ms=3.2`,
as %-style args, so plain `basicConfig` shows them and the template stays stable), as attributes
of the `LogRecord` (for `caplog` and structured handlers; names the record already uses get a
trailing `_`), and whole as `record.persistence_fields`, which `configure_logging` renders.
structlog context variables (`correlation()` ids) are merged in at call time. structlog itself is
not configured here: that is the application's choice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import structlog

ROOT = "persistence"
FIELDS = "persistence_fields"
"""`LogRecord` attribute holding a line's event name and fields (a dict, `event` included)."""

logging.getLogger(ROOT).addHandler(logging.NullHandler())

ExcInfo = BaseException | bool | None
"""An exception to attach to the line (or True: the one being handled), as stdlib's `exc_info`."""

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", FIELDS}


class Logger:
    """A stdlib logger with keyword fields: `log.info("event", key=value, ...)`."""

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    @property
    def name(self) -> str:
        return self._logger.name

    def debug(self, event: str, *, exc_info: ExcInfo = None, **fields: object) -> None:
        self._log(logging.DEBUG, event, fields, exc_info)

    def info(self, event: str, *, exc_info: ExcInfo = None, **fields: object) -> None:
        self._log(logging.INFO, event, fields, exc_info)

    def warning(self, event: str, *, exc_info: ExcInfo = None, **fields: object) -> None:
        self._log(logging.WARNING, event, fields, exc_info)

    def error(self, event: str, *, exc_info: ExcInfo = None, **fields: object) -> None:
        self._log(logging.ERROR, event, fields, exc_info)

    def exception(self, event: str, **fields: object) -> None:
        """ERROR with the exception being handled attached (call it in an `except` block)."""
        self._log(logging.ERROR, event, fields, True)

    def _log(self, level: int, event: str, fields: Mapping[str, object], exc_info: ExcInfo) -> None:
        if not self._logger.isEnabledFor(level):
            return
        merged: dict[str, object] = {**structlog.contextvars.get_contextvars(), **fields}
        template = event.replace("%", "%%") + "".join(
            f" {key}=%r" if isinstance(value, str) else f" {key}=%s" for key, value in merged.items()
        )
        extra: dict[str, object] = {
            key + "_" if key in _RESERVED else key: value for key, value in merged.items()
        }
        extra[FIELDS] = {"event": event, **merged}
        # stacklevel 3: the record names our caller's file and line, not this module's.
        self._logger.log(level, template, *merged.values(), exc_info=exc_info, extra=extra, stacklevel=3)


def get_logger(name: str) -> Logger:
    """The logger for `name`, which must be `persistence` or below it."""
    if name != ROOT and not name.startswith(ROOT + "."):
        raise ValueError(f"{name!r} is not under the {ROOT!r} logger")
    return Logger(name)
