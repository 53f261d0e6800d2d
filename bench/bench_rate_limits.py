"""Rate-limiter decisions per second (issue 16, must-show 4, second half).

    python bench/bench_rate_limits.py                 # ~1-2 min
    python bench/bench_rate_limits.py --clients 16

Starts its own PostgreSQL (durable: fsync on), migrates a fresh database and, one run each, times
`--clients` concurrent clients making `--decisions` GCRA decisions each:

- on one hot key (every client on the same counter) and on `--keys` spread keys (each decision on
  a random one);
- durable commits, and `synchronous_commit = off` (the limiter's default);
- `RateLimiter.check` (one limit: one statement in its own implicit transaction, on a leased
  connection) against the same statement sent by hand over raw asyncpg connections, one held by
  each client; the two alternate in `--rounds` rounds so load from elsewhere hits both alike.

Limits are high enough that every decision admits (and so writes): the worst case for the server.
Both sides make one round trip per decision.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
from benchenv import environment, load_average

from persistence import migrations
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.rate_limits import RateLimit, RateLimiter, _single_sql
from persistence.testing.database import free_port

Decide = Callable[[int, int], Awaitable[bool]]


async def run(clients: int, decisions: int, decide: Decide) -> tuple[float, float]:
    """Wall and client CPU seconds `clients` tasks take to make `decisions` decisions each (task i passes i)."""

    async def client(index: int) -> None:
        rng = random.Random(index)
        for _ in range(decisions):
            await decide(index, rng.randrange(1 << 30))

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return time.perf_counter() - start, time.process_time() - cpu


def limit_for(key: int, keys: int) -> RateLimit:
    # 10 million a second: never refuses, so every decision writes.
    return RateLimit("key", f"key-{key % keys}", "requests", "second", Decimal(10_000_000))


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--decisions", type=int, default=1500, help="decisions per client per case")
    parser.add_argument("--rounds", type=int, default=4, help="alternating library/raw rounds per case")
    parser.add_argument("--keys", type=int, default=10_000, help="spread keys (default %(default)s)")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="bench-rate-", dir="/tmp"))
    server = EmbeddedServer(data, port=free_port(), bindir=EmbeddedConfig().pg_bindir, listen_address="127.0.0.1",
                            settings={"max_connections": "60"})  # fmt: skip
    server.start()
    results: list[tuple[str, str, float, float, float, float]] = []
    try:
        server.ensure_database("bench")
        config = DatabaseConfig.model_validate(
            {"host": str(server.socket_dir), "port": server.port, "user": server.superuser, "database": "bench",
             "pool_size": args.clients + 2, "max_overflow": 0}
        )  # fmt: skip
        engine = build_engine(config)
        await migrations.upgrade(engine)
        env = await environment(engine)
        # The baseline: one raw connection held by each client task (no pool round trips).
        conns = [
            await asyncpg.connect(host=str(server.socket_dir), port=server.port, user=server.superuser,
                                  database="bench")
            for _ in range(args.clients)
        ]  # fmt: skip
        # Every key's counter exists beforehand: the timed decisions update, none inserts.
        await conns[0].execute(
            "INSERT INTO rate_limit_state (company_id, scope, subject, metric, period, tat) "
            "SELECT 'bench', 'key', 'key-' || g, 'requests', 'second', 0 FROM generate_series(0, $1::int - 1) g",
            args.keys,
        )
        for keys, label in ((1, "one hot key"), (args.keys, f"{args.keys:,} spread keys")):
            for durable in (True, False):
                sql = _single_sql(durable)
                async with RateLimiter(engine, connections=args.clients, durable=durable) as limiter:

                    async def library(
                        _: int, key: int, limiter: RateLimiter = limiter, keys: int = keys
                    ) -> bool:
                        return (await limiter.check("bench", [(limit_for(key, keys), 1)])).allowed

                    async def raw(client: int, key: int, sql: str = sql, keys: int = keys) -> bool:
                        limit = limit_for(key, keys)
                        inc, tau = limit.interval, limit.capacity * limit.interval
                        row = await conns[client].fetchrow(sql, None, "bench", *limit.key, inc, tau)
                        return row is not None and row["tat"] is not None

                    # Warm both sides (connections, prepared statements), then alternate in rounds.
                    await run(args.clients, 5, library)
                    await run(args.clients, 5, raw)
                    lib_s = raw_s = lib_cpu = raw_cpu = 0.0
                    per_round = max(1, args.decisions // args.rounds)
                    for i in range(args.rounds):
                        for side in ("raw", "lib") if i % 2 else ("lib", "raw"):
                            wall, cpu = await run(args.clients, per_round, library if side == "lib" else raw)
                            if side == "lib":
                                lib_s, lib_cpu = lib_s + wall, lib_cpu + cpu
                            else:
                                raw_s, raw_cpu = raw_s + wall, raw_cpu + cpu
                done = args.clients * per_round * args.rounds
                commit = "durable" if durable else "synchronous_commit=off"
                results.append(
                    (label, commit, done / lib_s, done / raw_s, lib_cpu / done * 1e6, raw_cpu / done * 1e6)
                )
        for conn in conns:
            await conn.close()
        await engine.dispose()
    finally:
        server.stop(mode="fast")
        shutil.rmtree(data, ignore_errors=True)

    print(env)
    print(f"- load average {load_average()}; {args.clients} concurrent clients x {args.decisions:,} decisions per "
          "case (alternating rounds), one run; every decision admits (writes); fsync on")  # fmt: skip
    print()
    print(
        "| keys | commit | RateLimiter.check, decisions/s | raw asyncpg, decisions/s | ours / raw "
        "| client CPU µs/decision, ours / raw | round trips |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for label, commit, lib, by_hand, lib_cpu, raw_cpu in results:
        print(f"| {label} | {commit} | {lib:,.0f} | {by_hand:,.0f} | {lib / by_hand:.2f}x | {lib_cpu:.0f} / {raw_cpu:.0f} "
              "| 1 each |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
