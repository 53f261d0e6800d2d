"""Seed 004's two queries (issue 18, must-show 3 and the query half of 4): from the hourly rollups
(+ unfolded deltas for whole hours, raw rows at the edges) vs a scan of the raw rows, on `--events`
cost events and as many agent executions.

    python bench/bench_event_queries.py                        # 1M + 1M events, ~2-3 min
    python bench/bench_event_queries.py --events 2000 --rounds 1   # smoke

Starts its own PostgreSQL (durable), migrates a fresh database, creates the monthly partitions of
the last `--days` days and loads the events with SQL (`generate_series`, `setseed`: the same data
every run) spread evenly over `--tenants` tenants (zones cycling UTC, Asia/Kolkata,
America/New_York), 4 cost types x services and `--agents` agents each, inside [now - days, now).
It folds, then writes `--late` percent more events into hours already folded (late events: their
deltas stay unfolded, as between two folds), then VACUUM ANALYZE.

Must-show 3: every tenant's every local day (in its own zone) and every (tenant, agent) over
several windows is compared, rollups vs raw scan, and must be equal (Decimal to the last digit,
the success counts as the same fraction); the script exits non-zero otherwise.

Must-show 4 (queries): `--samples` tenant-days and (tenant, agent, 24 h) windows on one connection
(prepared statements, warm cache), each query timed two ways per sample: alternating (`--rounds`
times each query in turn, so a cheap call follows a scan and pays the wake-up of an idle client
and backend) and in runs (`--rounds` consecutive calls per query, the order rotating per sample);
p50 per side, and the ratio, for each way.
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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import asyncpg
from benchenv import environment

from persistence import migrations
from persistence.ai_calls.partitions import add_months
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.events.partitions import maintain_event_partitions
from persistence.events.queries import (
    AGENT_RUNS,
    DAILY_COST,
    RAW_AGENT_RUNS,
    RAW_DAILY_COST,
    agent_runs,
    agent_runs_scan,
    daily_cost,
    daily_cost_scan,
    tenant_day,
)
from persistence.events.rollups import fold_event_rollups_raw
from persistence.testing.database import free_port

ZONES = ("UTC", "Asia/Kolkata", "America/New_York")
WINDOWS = (1, 5.5, 24, 24 * 7, 24 * 30)
ALTERNATING = "alternating"
IN_RUNS = "in runs"

# ($1, $2] event numbers, $3 tenants, $4 seconds of the span (, $5 agents).
COSTS = """
INSERT INTO analytics.tenant_cost_events (tenant_id, time, event_id, cost_type, cost_usd, quantity, service)
SELECT 'tenant-' || (i % $3), now() - random() * $4 * interval '1 second', gen_random_uuid(),
       (ARRAY['llm', 'llm', 'embedding', 'storage'])[1 + (i / $3) % 4],
       round((random() * 0.05)::numeric, 8), (random() * 2000)::int,
       (ARRAY['openai', 'anthropic', 'openai', 'pinecone'])[1 + (i / $3) % 4]
  FROM generate_series($1::bigint + 1, $2::bigint) AS i
"""
AGENTS = """
INSERT INTO analytics.agent_executions
    (tenant_id, time, event_id, agent_id, agent_type, execution_time_ms, success, quality_score, cost_usd, total_tokens)
SELECT 'tenant-' || (i % $3), now() - random() * $4 * interval '1 second', gen_random_uuid(),
       'agent-' || (i / $3) % $5::int, 'ask_expert', (random() * 5000)::int, random() < 0.9,
       CASE WHEN random() < 0.8 THEN round(random()::numeric, 6) END,
       CASE WHEN random() < 0.7 THEN round((random() * 0.05)::numeric, 8) END, (random() * 3000)::int
  FROM generate_series($1::bigint + 1, $2::bigint) AS i
"""


async def load(raw: asyncpg.Connection, first: int, last: int, args: argparse.Namespace) -> None:
    span = args.days * 86400
    for lo in range(first, last, 100_000):
        hi = min(last, lo + 100_000)
        await raw.execute(COSTS, lo, hi, args.tenants, span)
        await raw.execute(AGENTS, lo, hi, args.tenants, span, args.agents)


async def timed(times: list[float], query: Awaitable[object]) -> None:
    started = time.perf_counter()
    await query
    times.append((time.perf_counter() - started) * 1000)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="cost events, and as many agent executions"
    )
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--agents", type=int, default=5, help="agents per tenant")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--late", type=float, default=2.0, help="percent of events written late")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of one sample per side")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="bench-event-queries-", dir="/tmp"))
    server = EmbeddedServer(
        data, port=free_port(), bindir=EmbeddedConfig().pg_bindir, listen_address="127.0.0.1"
    )
    server.start()
    try:
        server.ensure_database("bench")
        config = DatabaseConfig.model_validate(
            {
                "host": str(server.socket_dir),
                "port": server.port,
                "user": server.superuser,
                "database": "bench",
            }
        )
        engine = build_engine(config)
        await migrations.upgrade(engine)
        now = datetime.now(UTC)
        first_month = (now - timedelta(days=args.days + 1)).date().replace(day=1)
        months = 0
        while add_months(first_month, months) <= now.date():
            months += 1
        await maintain_event_partitions(engine, months_ahead=months, today=first_month)
        env = await environment(engine)
        raw = await asyncpg.connect(host=str(server.socket_dir), port=server.port, user=server.superuser,
                                    database="bench")  # fmt: skip
        await raw.execute("SELECT setseed(0.004)")
        started = time.perf_counter()
        await load(raw, 0, args.events, args)
        loaded = time.perf_counter() - started
        await fold_event_rollups_raw(raw)
        late = int(args.events * args.late / 100)
        await load(raw, args.events, args.events + late, args)  # into hours already folded
        await raw.execute("VACUUM ANALYZE")
        sizes = await raw.fetchrow(
            "SELECT (SELECT count(*) FROM analytics.tenant_cost_events), (SELECT count(*) FROM analytics.agent_executions),"
            " (SELECT count(*) FROM analytics.tenant_cost_hourly), (SELECT count(*) FROM analytics.agent_execution_hourly),"
            " (SELECT count(*) FROM analytics.tenant_cost_hourly_deltas),"
            " (SELECT count(*) FROM analytics.agent_execution_hourly_deltas)"
        )  # fmt: skip
        assert sizes is not None

        # Must-show 3: every tenant-day and (tenant, agent, window), one transaction (one now()).
        tenants = [(f"tenant-{t}", ZONES[t % len(ZONES)]) for t in range(args.tenants)]
        days = [(now - timedelta(days=k)).date() for k in range(args.days + 2)]
        compared = unequal = 0
        async with raw.transaction():
            for tenant, zone in tenants:
                for day in days:
                    window = tenant_day(tenant, day, zone)
                    compared += 1
                    unequal += await daily_cost(raw, window) != await daily_cost_scan(raw, window)
                for k in range(args.agents):
                    for hours in WINDOWS:
                        compared += 1
                        fast = await agent_runs(raw, f"agent-{k}", tenant, hours)
                        unequal += fast != await agent_runs_scan(raw, f"agent-{k}", tenant, hours)

        # Must-show 4: timing, with the late events' deltas unfolded, then after a fold.
        results: dict[tuple[str, str, str], list[float]] = {}
        for state in ("late deltas unfolded", "after a fold"):
            if state == "after a fold":
                await fold_event_rollups_raw(raw)
                await raw.execute(
                    "VACUUM ANALYZE analytics.tenant_cost_hourly, analytics.agent_execution_hourly"
                )
            rng = random.Random(4)
            for number in range(args.samples):
                tenant, zone = rng.choice(tenants)
                sample = tenant_day(tenant, rng.choice(days[1:-1]), zone)
                agent = f"agent-{rng.randrange(args.agents)}"
                queries: dict[str, Callable[[], Awaitable[object]]] = {
                    "cost": partial(raw.fetchval, DAILY_COST, *sample.arguments),
                    "cost scan": partial(raw.fetchval, RAW_DAILY_COST, tenant, sample.start, sample.end),
                    "runs": partial(raw.fetchrow, AGENT_RUNS, tenant, agent, 24.0),
                    "runs scan": partial(raw.fetchrow, RAW_AGENT_RUNS, tenant, agent, 24.0),
                    "floor": partial(raw.fetchval, "SELECT 1"),
                }
                # Alternating: every call follows a call of the other queries (the cheap ones then
                # also pay the wake-up of an idle client and server after a scan).
                for _ in range(args.rounds):
                    for key, query in queries.items():
                        await timed(results.setdefault((ALTERNATING, key, state), []), query())
                # In runs: `rounds` consecutive calls per query, the order rotating per sample.
                keys = list(queries)
                keys = keys[number % len(keys) :] + keys[: number % len(keys)]
                for key in keys:
                    for _ in range(args.rounds):
                        await timed(results.setdefault((IN_RUNS, key, state), []), queries[key]())
        if args.explain:
            explained = (
                (DAILY_COST, sample.arguments),
                (RAW_DAILY_COST, (tenant, sample.start, sample.end)),
                (AGENT_RUNS, (tenant, agent, 24.0)),
                (RAW_AGENT_RUNS, (tenant, agent, 24.0)),
            )
            for sql, params in explained:
                plan = await raw.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, *params)
                print("\n".join(row[0] for row in plan), "\n")
        await raw.close()
        await engine.dispose()

        print(f"\n{env}")
        print(f"- data: {sizes[0]:,} cost events and {sizes[1]:,} agent executions ({args.late}% of them late), "
              f"{args.tenants} tenants, {args.agents} agents each, {args.days} days; loaded in {loaded:.0f} s; "
              f"rollup rows {sizes[2]:,} + {sizes[3]:,}, unfolded delta rows {sizes[4]:,} + {sizes[5]:,}")  # fmt: skip
        print(f"- equal to the raw scan: {compared - unequal} of {compared} answers "
              f"({'all equal' if not unequal else 'NOT ALL EQUAL'})\n")  # fmt: skip
        for order in (ALTERNATING, IN_RUNS):
            floor = statistics.median(results[(order, "floor", "after a fold")])
            print(f"Calls {order}; a round trip (`SELECT 1`) p50 on the same connection: {floor:.3f} ms\n")
            print("| query | rollups | rollups p50, ms | raw scan p50, ms | raw / rollups |")
            print("|---|---|---|---|---|")
            for state in ("late deltas unfolded", "after a fold"):
                for name, key in (("get_tenant_daily_cost (a local day)", "cost"),
                                  ("get_agent_success_rate (24 h)", "runs")):  # fmt: skip
                    fast_ms = statistics.median(results[(order, key, state)])
                    scan_ms = statistics.median(results[(order, f"{key} scan", state)])
                    print(f"| {name} | {state} | {fast_ms:.3f} | {scan_ms:.3f} | {scan_ms / fast_ms:.1f}x |")
            print()
        return 1 if unequal else 0
    finally:
        server.stop(mode="fast")
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
