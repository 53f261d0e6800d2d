"""Quota admission + settlement vs the same two conditional UPDATEs by hand (issue 16, must-show 4:
p50 at most 1.3x).

    python bench/bench_quotas.py                 # ~1 min
    python bench/bench_quotas.py --rounds 2 --pairs 20   # smoke

Starts its own PostgreSQL (durable: fsync on), migrates a fresh database, gives each of
`--users` users of one company a monthly quota (requests, tokens, cost: 3 counters each) and the
company a monthly token quota (1 counter), then times one request's admit + settle, sequentially,
on two engines built with the defaults (one per side), in interleaved A/B rounds:

- `Quotas`: `admit(...)` (one statement: limits resolved from `quotas`/`company_quotas`, the 4
  counters locked in id order, expired holds reclaimed, all-or-nothing hold, reservation and hold
  rows written) then `settle(...)` (one statement: counters locked, reservation state changed once,
  holds deleted, actual usage added to the counters and upserted into its 2 `usage` rows).
- raw asyncpg: the counter ids and limits already known to the client, one conditional UPDATE
  reserving on the same 4 rows (`held = held + e WHERE used + held + e <= limit`), then one UPDATE
  settling them (`held = held - e, used = used + actual`). No reservation row, no lease, no limit
  lookup, not all-or-nothing: what a hand-written limiter usually is.

Both sides lease a pooled connection per statement pair from their own engine and send two
statements (each its own implicit transaction, so two commits) per request.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import asyncpg
from benchenv import cpu_model, load_average
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.quotas import QuotaLimits, Quotas
from persistence.testing.database import free_port

COMPANY = "bench-co"
ESTIMATE_TOKENS = 1_200
ACTUAL_TOKENS = 700
COST = Decimal("0.0123")
ACTUAL_COST = Decimal("0.0071")
BIG = 10**12

RAW_RESERVE = """
UPDATE quota_counters c
SET held = c.held + w.amount
FROM unnest($2::bigint[], $3::numeric[], $4::numeric[]) AS w (id, amount, lim)
WHERE c.company_id = $1 AND c.id = w.id AND c.used + c.held + w.amount <= w.lim
"""
RAW_SETTLE = """
UPDATE quota_counters c
SET held = c.held - w.amount, used = c.used + w.actual
FROM unnest($2::bigint[], $3::numeric[], $4::numeric[]) AS w (id, amount, actual)
WHERE c.company_id = $1 AND c.id = w.id
"""


async def timed_quotas(quotas: Quotas, users: list[str], sink: list[float]) -> None:
    for user in users:
        start = time.perf_counter()
        admission = await quotas.admit(COMPANY, user, prompt_tokens=200, max_tokens=1_000, cost_usd=COST)
        assert admission.reservation is not None
        await quotas.settle(admission.reservation, tokens=ACTUAL_TOKENS, cost_usd=ACTUAL_COST)
        sink.append(time.perf_counter() - start)


async def timed_raw(
    engine: AsyncEngine, users: list[str], counters: dict[str, list[int]], sink: list[float]
) -> None:
    amounts = [Decimal(1), Decimal(ESTIMATE_TOKENS), COST, Decimal(ESTIMATE_TOKENS)]
    actual = [Decimal(1), Decimal(ACTUAL_TOKENS), ACTUAL_COST, Decimal(ACTUAL_TOKENS)]
    limits = [Decimal(BIG)] * 4
    for user in users:
        ids = counters[user]
        start = time.perf_counter()
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, asyncpg.Connection)
            status = await raw.execute(RAW_RESERVE, COMPANY, ids, amounts, limits)
            assert status == "UPDATE 4", status
            await raw.execute(RAW_SETTLE, COMPANY, ids, amounts, actual)
        sink.append(time.perf_counter() - start)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=300, help="admit + settle pairs per side per round")
    parser.add_argument("--users", type=int, default=50, help="users of the company (default %(default)s)")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="bench-quotas-", dir="/tmp"))
    server = EmbeddedServer(data, port=free_port(), bindir=EmbeddedConfig().pg_bindir, listen_address="127.0.0.1",
                            settings={"max_connections": "50"})  # fmt: skip
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
        setup = build_engine(config)
        await migrations.upgrade(setup)
        quotas = Quotas(setup)
        users = [f"user-{i:03d}" for i in range(args.users)]
        await quotas.set_company_quota(COMPANY, "tokens", "monthly", BIG)
        counters: dict[str, list[int]] = {}
        for user in users:
            await quotas.set_user_quota(COMPANY, user, limits=QuotaLimits(BIG, BIG, Decimal(BIG)))
            states = await quotas.counters(COMPANY, user)
            by_metric = {(c.scope, c.metric): c.id for c in states}
            counters[user] = [
                by_metric[("user", "requests")],
                by_metric[("user", "tokens")],
                by_metric[("user", "cost_usd")],
                by_metric[("company", "tokens")],
            ]
        results: list[tuple[str, float, float]] = []
        for mode in ("on", "off"):
            async with setup.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                assert isinstance(raw, asyncpg.Connection)
                await raw.execute(f"ALTER DATABASE bench SET synchronous_commit = {mode}")
            # Fresh default engines per mode, so every connection has the setting.
            ours_engine, raw_engine = build_engine(config), build_engine(config)
            ours_quotas = Quotas(ours_engine)
            ours: list[float] = []
            hand: list[float] = []
            for i in range(args.rounds + 1):
                batch = [users[(i * args.pairs + k) % len(users)] for k in range(args.pairs)]
                sink_a: list[float] = []
                sink_b: list[float] = []
                if i % 2:
                    await timed_quotas(ours_quotas, batch, sink_a)
                    await timed_raw(raw_engine, batch, counters, sink_b)
                else:
                    await timed_raw(raw_engine, batch, counters, sink_b)
                    await timed_quotas(ours_quotas, batch, sink_a)
                if i:  # round 0 warms up
                    ours += sink_a
                    hand += sink_b
            results.append((mode, statistics.median(ours) * 1000, statistics.median(hand) * 1000))
            await ours_engine.dispose()
            await raw_engine.dispose()
        async with setup.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, asyncpg.Connection)
            version = await raw.fetchval("SHOW server_version")
            held = await raw.fetchval("SELECT sum(held) FROM quota_counters")
        assert held == 0, held
        await setup.dispose()
    finally:
        server.stop(mode="fast")
        shutil.rmtree(data, ignore_errors=True)

    print(f"machine: {cpu_model()}, load average {load_average()}; PostgreSQL {version}, Python "
          f"{sys.version.split()[0]}, asyncpg {asyncpg.__version__}; {args.rounds} interleaved rounds of "
          f"{args.pairs} pairs after 1 warm-up, medians; 4 counters per request (3 user + 1 company)")  # fmt: skip
    print()
    print("| measure | raw asyncpg, 2 UPDATEs | Quotas admit + settle | ratio | target | met |")
    print("|---|---:|---:|---:|---|---|")
    for mode, p50_a, p50_b in results:
        ratio = p50_a / p50_b
        label = "durable" if mode == "on" else "synchronous_commit=off"
        print(f"| admit + settle p50 latency, ms ({label}) | {p50_b:.3f} | {p50_a:.3f} | {ratio:.2f}x | "
              f"<= 1.3x | {'yes' if ratio <= 1.3 else 'NO'} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
