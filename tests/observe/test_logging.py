"""Slow-query log (duration, normalised text, never parameters), correlation ids, configure_logging."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from sqlalchemy import text

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.observe import SlowQueryLog, configure_logging, correlation
from persistence.observe.hooks import QueryEvent
from persistence.testing.database import ThrowawayPostgres
from tests.logs import capture_logs
from tests.processes import run_python


def unconfigure_logging() -> None:
    """Undo `configure_logging` so later tests see the library's defaults again."""
    structlog.reset_defaults()
    ours = logging.getLogger("persistence")
    for handler in [h for h in ours.handlers if not isinstance(h, logging.NullHandler)]:
        ours.removeHandler(handler)
    ours.setLevel(logging.NOTSET)
    ours.propagate = True


SECRET = "sk-live-4f9a1c7e2b8d"  # a bound parameter that must never reach a log line
SLOW = text("SELECT pg_sleep(:seconds), :token AS token")


async def test_slow_query_is_logged_once_with_duration_and_without_parameters(
    db_config: DatabaseConfig,
) -> None:
    engine = build_engine(db_config.model_copy(update={"slow_query_ms": 50}))
    try:
        with capture_logs() as logs, correlation(request_id="req-slow"):
            async with engine.connect() as conn:
                row = (await conn.execute(SLOW, {"seconds": 0.2, "token": SECRET})).one()
        assert row.token == SECRET  # the query itself got the value
    finally:
        await engine.dispose()
    # On a loaded machine a connect-time statement can pass the threshold too: only pg_sleep's counts.
    slow = [entry for entry in logs if entry["event"] == "slow query" and "pg_sleep" in entry["statement"]]
    assert len(slow) == 1
    [entry] = slow
    assert entry["log_level"] == "warning"
    assert entry["duration_ms"] >= 200  # pg_sleep(0.2) cannot finish sooner
    assert entry["threshold_ms"] == 50
    assert entry["statement"].startswith("SELECT pg_sleep($1")
    assert (entry["operation"], entry["request_id"]) == ("SELECT", "req-slow")
    assert SECRET not in repr(logs)
    assert "0.2" not in entry["statement"]


async def test_fast_queries_are_not_logged(db_config: DatabaseConfig) -> None:
    engine = build_engine(db_config.model_copy(update={"slow_query_ms": 60_000}))
    try:
        with capture_logs() as logs:
            async with engine.connect() as conn:
                await conn.execute(SLOW, {"seconds": 0.05, "token": SECRET})
    finally:
        await engine.dispose()
    assert [entry for entry in logs if entry["event"] == "slow query"] == []


def test_slow_query_ms_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_SLOW_QUERY_MS", "250")
    assert DatabaseConfig(host="db.example").slow_query_ms == 250


async def test_json_logging_renders_the_slow_query_with_correlation_ids(db_config: DatabaseConfig) -> None:
    out = io.StringIO()
    configure_logging(json=True, level="WARNING", stream=out)
    engine = build_engine(db_config.model_copy(update={"slow_query_ms": 10}))
    try:
        with correlation(trace_id="trace-1", request_id="req-1"):
            structlog.get_logger("app").info("below the level: dropped")
            async with engine.connect() as conn:
                await conn.execute(SLOW, {"seconds": 0.05, "token": SECRET})
    finally:
        await engine.dispose()
        unconfigure_logging()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {line["event"] for line in lines} == {"slow query"}  # "below the level" was dropped
    # On a loaded machine a connect-time statement can pass 10 ms too: only pg_sleep's line counts.
    [line] = [line for line in lines if "pg_sleep" in line["statement"]]
    assert (line["trace_id"], line["request_id"], line["level"]) == ("trace-1", "req-1", "warning")
    assert line["timestamp"].endswith("Z")
    assert SECRET not in out.getvalue()


def test_correlation_blocks_nest_and_restore() -> None:
    from persistence.observe.logging import request_id, trace_id

    with correlation(trace_id="outer", request_id="r-1"):
        with correlation(request_id="r-2"):
            assert (trace_id.get(), request_id.get()) == ("outer", "r-2")
            assert structlog.contextvars.get_contextvars() == {"trace_id": "outer", "request_id": "r-2"}
        assert (trace_id.get(), request_id.get()) == ("outer", "r-1")
    assert (trace_id.get(), request_id.get()) == (None, None)
    assert structlog.contextvars.get_contextvars() == {}


# A service that never configured logging: a slow query (slow_query_ms set) and a robust on_commit
# callback that fails. argv[1] says how the process configures logging, if at all.
QUIET_BY_DEFAULT = """
import asyncio, logging, sys
from sqlalchemy import text
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.observe import configure_logging
from persistence.transaction import on_commit

if sys.argv[1] == "configure_logging":
    configure_logging()
elif sys.argv[1] == "basicConfig":
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

def broken():
    raise RuntimeError("callback bug")

async def main():
    engine = build_engine(DatabaseConfig(slow_query_ms=1))
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(0.05)"))
    finally:
        await engine.dispose()
    await on_commit(broken, robust=True)
    print("done")

asyncio.run(main())
"""


def test_the_package_writes_nothing_unless_the_application_configured_logging(
    pg: ThrowawayPostgres, db_config: DatabaseConfig
) -> None:
    url = pg.server.url(db_config.database or "")

    silent = run_python(["-c", QUIET_BY_DEFAULT, "nothing"], database_url=url)
    assert silent.returncode == 0, silent.stderr
    assert (silent.stdout, silent.stderr) == ("done\n", "")

    as_json = run_python(["-c", QUIET_BY_DEFAULT, "configure_logging"], database_url=url)
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout == "done\n"
    lines = [json.loads(line) for line in as_json.stderr.splitlines() if line.startswith("{")]
    by_event = {line["event"]: line for line in lines}
    assert by_event["slow query"]["statement"].startswith("SELECT pg_sleep(")
    assert by_event["slow query"]["level"] == "warning" and by_event["slow query"]["threshold_ms"] == 1
    assert by_event["on_commit callback failed"]["level"] == "error"
    assert "callback bug" in by_event["on_commit callback failed"]["exception"]

    stdlib = run_python(["-c", QUIET_BY_DEFAULT, "basicConfig"], database_url=url)
    assert stdlib.returncode == 0, stdlib.stderr
    assert stdlib.stdout == "done\n"
    assert "persistence.slow_query WARNING slow query statement='SELECT pg_sleep(" in stdlib.stderr
    assert "threshold_ms=1" in stdlib.stderr  # the fields survive into a plain formatter's line
    assert "persistence.transaction ERROR on_commit callback failed callback='broken'" in stdlib.stderr
    assert "RuntimeError: callback bug" in stdlib.stderr


SLOW_EVENT = QueryEvent(
    operation="SELECT",
    table=None,
    statement="SELECT 1",
    duration=0.5,
    success=True,
    sqlstate=None,
    error=None,
    rows=1,
    executemany=False,
    database="db",
    trace_id=None,
    request_id=None,
)


def test_the_persistence_logger_silences_all_of_our_lines() -> None:
    logger = logging.getLogger("persistence")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    with capture_logs() as logs:
        logger.setLevel(logging.CRITICAL)
        SlowQueryLog(0).on_query(SLOW_EVENT)
    assert logs == []
    with capture_logs() as logs:
        SlowQueryLog(0).on_query(SLOW_EVENT)
    assert [(e["logger"], e["event"], e["statement"]) for e in logs] == [
        ("persistence.slow_query", "slow query", "SELECT 1")
    ]
