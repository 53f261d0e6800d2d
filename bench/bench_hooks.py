"""Overhead of the metrics hooks with the Prometheus sink attached, on repository get/add.

Same database, same process, two engines: one with no hooks (no listeners at all: the baseline) and
one with `PrometheusHook` attached. Rounds alternate A/B and B/A; each round times `OPS` calls per
variant; the table shows the median per-call time over rounds and the ratio to the baseline measured
in this run.

    python bench/bench_hooks.py [--rounds 21] [--ops 400]

Uses `DATABASE_URL` when set, else a throwaway PostgreSQL (fsync off: shorter calls, so the
relative overhead shown is, if anything, larger than on a durable server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from persistence import ClaimRepository, migrations
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.monitoring import DatabaseMetrics
from persistence.observe.logging import SlowQueryLog
from persistence.observe.prometheus import PrometheusHook
from persistence.testing import ThrowawayPostgres

Op = Callable[[ClaimRepository, int], Awaitable[object]]


def machine() -> str:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return f"nproc {os.cpu_count()}, {cpu}, load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def versions(server_version: str) -> str:
    libs = ", ".join(f"{n} {version(n)}" for n in ("sqlalchemy", "asyncpg", "prometheus-client", "structlog"))
    return f"Python {platform.python_version()}, {libs}, PostgreSQL {server_version}"


async def time_ops(repo: ClaimRepository, op: Op, ops: int, start: int) -> float:
    began = time.perf_counter()
    for i in range(ops):
        await op(repo, start + i)
    return (time.perf_counter() - began) / ops


async def run(config: DatabaseConfig, rounds: int, ops: int) -> str:
    variants: dict[str, AsyncEngine] = {
        "hooks disabled": build_engine(config),
        "hooks + Prometheus": build_engine(config, hooks=[PrometheusHook(CollectorRegistry())]),
        "hooks + Prometheus + DatabaseMetrics + slow log": build_engine(
            config,
            hooks=[PrometheusHook(CollectorRegistry()), DatabaseMetrics(), SlowQueryLog(1.0)],
        ),
    }
    names = list(variants)
    repos = {name: ClaimRepository(engine) for name, engine in variants.items()}
    seed = await repos[names[0]].add(external_id="bench-get", content="x")

    async def get(repo: ClaimRepository, i: int) -> object:
        return await repo.get(seed.id)

    counter = iter(range(10**9))

    async def add(repo: ClaimRepository, i: int) -> object:
        return await repo.add(external_id=f"bench-{next(counter)}", content="benchmark row")

    operations: dict[str, Op] = {"get": get, "add": add}
    async with variants[names[0]].connect() as conn:
        server_version = str(await conn.scalar(text("SHOW server_version")))
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for op_name, op in operations.items():
            for repo in repos.values():  # warm up pools, caches, prepared statements
                await time_ops(repo, op, 200, 0)
            for r in range(rounds):
                order = names if r % 2 == 0 else list(reversed(names))
                for name in order:
                    per_call = await time_ops(repos[name], op, ops, r * ops)
                    results.setdefault((op_name, name), []).append(per_call)
    finally:
        for engine in variants.values():
            await engine.dispose()

    lines = [
        f"machine: {machine()}",
        f"versions: {versions(server_version)}",
        f"rounds: {rounds} (alternating order), {ops} calls per variant per round; medians over rounds",
        "",
        "| operation | variant | median per call | ratio to hooks disabled | overhead |",
        "|---|---|---:|---:|---:|",
    ]
    for op_name in operations:
        base = statistics.median(results[op_name, names[0]])
        for name in names:
            med = statistics.median(results[op_name, name])
            ratio = med / base
            lines.append(
                f"| repo.{op_name} | {name} | {med * 1e6:.0f} µs | {ratio:.3f} | {(ratio - 1) * 100:+.1f}% |"
            )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--ops", type=int, default=400)
    args = parser.parse_args()
    if os.environ.get("DATABASE_URL"):
        config = DatabaseConfig()
        print(await run(config, args.rounds, args.ops))
        return
    pg = ThrowawayPostgres()
    pg.start()
    try:
        await pg.create_migrated_template()
        config = pg.config(pg.clone(), pool_size=5)
        engine = build_engine(config)
        try:
            assert await migrations.current_revision(engine) == migrations.head_revision()
        finally:
            await engine.dispose()
        print(await run(config, args.rounds, args.ops))
    finally:
        pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
    subprocess.run(["uptime"], check=False)
