"""The benchmarks in bench/ still run against the current schema and API (a smoke run, no timing).

Benchmarks are not timed tests; this only keeps them from rotting between the runs that fill
BENCHMARKS.md (a migration once broke one silently).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stress

BENCH = Path(__file__).resolve().parents[2] / "bench"

SMOKE_RUNS = [
    (
        "bench_repository.py",
        ["--rounds", "1"],
        ["| page (keyset, 100 rows) |", "| upsert_many (1000 rows) |"],
    ),
    ("bench_hooks.py", ["--rounds", "2", "--inner", "1"], ["| repo.get | hooks + Prometheus |"]),
    (
        "bench_ledger.py",
        ["--stats-rows", "2000", "--rounds", "1", "--batch", "100"],
        ["| bulk ingest", "| log_call p50 latency", "| 8 concurrent loggers", "| get_stats over a month"],
    ),
    (
        "bench_alerts.py",
        ["--rounds", "1", "--segment", "0.2", "--batch", "100", "--rules", "7", "--count-calls", "5"],
        [
            "| log_call p50 latency, ms |",
            "| log_call p95 latency, ms |",
            "| log_batch (100 rows), rows/s |",
            # with alerts, a background evaluation (at most one a second) may fall in the counted window
            "| per log_call | 1: log_call INSERT 1 | 1",
            "| per background evaluation",
        ],
    ),
    (
        "bench_replicas.py",
        ["--samples", "20"],
        ["| get in a read-only block |", "| update, then get in a read-only block (read-your-writes) |"],
    ),
    (
        "bench_rls.py",
        ["--calls", "20"],
        ["| log_call | service (RLS + tenant) |", "| list | owner (no RLS) |"],
    ),
    (
        "bench_rate_limits.py",
        ["--decisions", "10", "--keys", "50", "--clients", "2"],
        ["| one hot key | durable |", "| 50 spread keys | synchronous_commit=off |"],
    ),
    (
        "bench_quotas.py",
        ["--rounds", "1", "--pairs", "5", "--users", "2"],
        [
            "| admit + settle p50 latency, ms (durable) |",
            "| admit + settle p50 latency, ms (synchronous_commit=off) |",
        ],
    ),
    (
        "bench_requests.py",
        [
            "--rounds",
            "1",
            "--per-round",
            "40",
            "--backlog",
            "300",
            "--before",
            "0.5",
            "--snapshot",
            "1",
            "--after",
            "0.5",
            "--window",
            "0.5",
            "--status-queries",
            "10",
        ],
        ["| claim + complete, requests/s |", "| 1.5 | yes |", "| status p50, ms |"],
    ),
    (
        "bench_audit.py",
        ["--sizes", "1000", "--rounds", "1", "--warmup", "0"],
        [
            "| verification_results.evidence (no index) | 1,000 | update |",
            "| claims.metadata (GIN index) | 1,000 | insert |",
        ],
    ),
    (
        "bench_events.py",
        ["--rounds", "1", "--events", "500", "--batch", "100"],
        ["| raw asyncpg COPY | 100 |", "| recorder (log + flush) | 100 |"],
    ),
    (
        "bench_event_queries.py",
        ["--events", "3000", "--samples", "2", "--rounds", "2"],
        ["(all equal)", "| get_tenant_daily_cost (a local day) |", "| get_agent_success_rate (24 h) |"],
    ),
]


@pytest.mark.parametrize(("script", "args", "rows"), SMOKE_RUNS, ids=[s for s, _, _ in SMOKE_RUNS])
def test_benchmark_runs_and_prints_its_table(script: str, args: list[str], rows: list[str]) -> None:
    # Each script starts its own throwaway server; never point one at a configured database.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("DB_")}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in rows:
        assert row in done.stdout, done.stdout[-3000:]
