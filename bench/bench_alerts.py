"""Logging with cost-alert rules active vs without (issue 15, must-show 5: at most 1.15x).

    python bench/bench_alerts.py                  # ~1 min
    python bench/bench_alerts.py --rules 200      # many rules

Starts its own PostgreSQL (durable: fsync on), migrates a fresh database, saves `--rules` alert rules
over every scope (organization, customer, product, provider, model, all; daily/weekly/monthly in
several time zones; a few cross their thresholds, so firings, outbox rows and deliveries to a
callable sink happen during the run), and compares in interleaved A/B rounds, medians:

1. `log_call` p50 latency: `AICallLogger(engine)` vs `AICallLogger(engine, alerts=evaluator)` (the
   evaluator's background evaluation, once per `interval` = 1 s, runs concurrently, as in production).
2. `log_batch` rows/s, same two loggers.

Both loggers write the same kind of rows into the same tables, alternating, so table growth and
folds hit both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
from benchenv import cpu_model, load_average

from persistence import migrations
from persistence.ai_calls import AICallLogger, AICallRecord
from persistence.ai_calls.alert_delivery import AlertDispatcher, AlertNotification
from persistence.ai_calls.alerts import AlertEvaluator, CostAlertRule
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.testing.database import free_port

MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-20250514"), ("google", "gemini-1.5-pro")]
ZONES = ("UTC", "America/New_York", "Europe/Paris", "Asia/Kolkata")
_counter = 0


def records(n: int, rng: random.Random) -> list[AICallRecord]:
    global _counter
    now = datetime.now(UTC)
    out = []
    for _ in range(n):
        _counter += 1
        provider, model = rng.choice(MODELS)
        out.append(
            AICallRecord.coerce(
                {
                    "provider": provider,
                    "model": model,
                    "input_tokens": rng.randint(100, 4000),
                    "output_tokens": rng.randint(10, 800),
                    "cost_usd": Decimal(rng.randint(100, 20_000)) / 1_000_000,
                    "latency_ms": rng.randint(200, 3000),
                    "organization_id": f"org_{rng.randint(0, 9)}",
                    "customer_id": f"cust_{rng.randint(0, 99):03d}",
                    "product_id": rng.choice(("chat", "search", "agent")),
                    "environment": "production",
                    "request_id": f"bench-{_counter}",
                    "created_at": now - timedelta(seconds=rng.random()),
                }
            )
        )
    return out


def rules(n: int, rng: random.Random) -> list[CostAlertRule]:
    out = []
    for i in range(n):
        scope = ("organization", "customer", "product", "provider", "model", "all")[i % 6]
        value = {
            "organization": f"org_{i % 10}",
            "customer": f"cust_{i % 100:03d}",
            "product": ("chat", "search", "agent")[i % 3],
            "provider": MODELS[i % 3][0],
            "model": MODELS[i % 3][1],
            "all": None,
        }[scope]
        low = i % 10 == 0  # a tenth of the rules cross a threshold during the run
        out.append(
            CostAlertRule(
                name=f"rule-{i}",
                scope=scope,  # type: ignore[arg-type]
                scope_value=value,
                period=("daily", "weekly", "monthly")[i % 3],
                time_zone=ZONES[i % len(ZONES)],
                threshold_kind="percent",
                budget_usd=Decimal("0.5") if low else Decimal(1_000_000),
                thresholds=(Decimal(50), Decimal(80), Decimal(100)),
            )
        )
    return out


async def timed_calls(log: AICallLogger, batch: list[AICallRecord], sink: list[float]) -> None:
    for r in batch:
        t = time.perf_counter()
        await log.log_record(r)
        sink.append(time.perf_counter() - t)


async def timed_batches(log: AICallLogger, batches: list[list[AICallRecord]]) -> float:
    t = time.perf_counter()
    rows = 0
    for batch in batches:
        rows += await log.log_batch(batch)
    return rows / (time.perf_counter() - t)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=300, help="log_calls per side per round")
    parser.add_argument("--batch", type=int, default=2000, help="rows per log_batch")
    parser.add_argument("--batches", type=int, default=5, help="log_batches per side per round")
    parser.add_argument("--rules", type=int, default=30, help="alert rules saved (default %(default)s)")
    args = parser.parse_args()
    rng = random.Random(15)

    data = Path(tempfile.mkdtemp(prefix="bench-alerts-", dir="/tmp"))
    server = EmbeddedServer(data, port=free_port(), bindir=EmbeddedConfig().pg_bindir, listen_address="127.0.0.1",
                            settings={"max_connections": "50"})  # fmt: skip
    server.start()
    delivered: list[AlertNotification] = []
    try:
        server.ensure_database("bench")
        config = DatabaseConfig.model_validate(
            {"host": str(server.socket_dir), "port": server.port, "user": server.superuser, "database": "bench",
             "pool_size": 10, "max_overflow": 0}
        )  # fmt: skip
        engine = build_engine(config)
        await migrations.upgrade(engine)
        dispatcher = AlertDispatcher(engine, {"default": delivered.append})
        evaluator = AlertEvaluator(engine, dispatcher=dispatcher, interval=1.0)
        for rule in rules(args.rules, rng):
            await evaluator.save_rule(rule)
        async with (
            AICallLogger(engine, connections=1) as plain,
            AICallLogger(engine, connections=1, alerts=evaluator) as alerted,
        ):
            without: list[float] = []
            with_: list[float] = []
            rows_without: list[float] = []
            rows_with: list[float] = []
            for i in range(args.rounds + 1):
                a_calls, b_calls = records(args.calls, rng), records(args.calls, rng)
                a_batches = [records(args.batch, rng) for _ in range(args.batches)]
                b_batches = [records(args.batch, rng) for _ in range(args.batches)]
                sink_a: list[float] = []
                sink_b: list[float] = []
                if i % 2:
                    await timed_calls(plain, a_calls, sink_a)
                    await timed_calls(alerted, b_calls, sink_b)
                    ra = await timed_batches(plain, a_batches)
                    rb = await timed_batches(alerted, b_batches)
                else:
                    await timed_calls(alerted, b_calls, sink_b)
                    await timed_calls(plain, a_calls, sink_a)
                    rb = await timed_batches(alerted, b_batches)
                    ra = await timed_batches(plain, a_batches)
                if i:  # round 0 warms up
                    without += sink_a
                    with_ += sink_b
                    rows_without.append(ra)
                    rows_with.append(rb)
        await evaluator.close()
        await dispatcher.close()
        raw = await asyncpg.connect(host=str(server.socket_dir), port=server.port, user=server.superuser,
                                    database="bench")  # fmt: skip
        version = await raw.fetchval("SHOW server_version")
        firings = await raw.fetchval("SELECT count(*) FROM cost_alert_firings")
        await raw.close()
        await engine.dispose()
    finally:
        server.stop(mode="fast")
        shutil.rmtree(data, ignore_errors=True)

    p50_a, p50_b = statistics.median(without) * 1000, statistics.median(with_) * 1000
    rps_a, rps_b = statistics.median(rows_without), statistics.median(rows_with)
    print(f"machine: {cpu_model()}, load average {load_average()}; PostgreSQL {version}, Python "
          f"{sys.version.split()[0]}; {args.rounds} interleaved rounds after 1 warm-up, medians; "
          f"{args.rules} rules, {firings} firings, {len(delivered)} deliveries during the run")  # fmt: skip
    print()
    print("| measure | without alerts | with alerts | ratio | target | met |")
    print("|---|---:|---:|---:|---|---|")
    ratio = p50_b / p50_a
    print(f"| log_call p50 latency, ms | {p50_a:.3f} | {p50_b:.3f} | {ratio:.2f}x | <= 1.15x | "
          f"{'yes' if ratio <= 1.15 else 'NO'} |")  # fmt: skip
    ratio = rps_a / rps_b
    print(f"| log_batch ({args.batch:,} rows), rows/s | {rps_a:,.0f} | {rps_b:,.0f} | {ratio:.2f}x | <= 1.15x | "
          f"{'yes' if ratio <= 1.15 else 'NO'} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
