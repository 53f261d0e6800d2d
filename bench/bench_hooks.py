"""Overhead of the metrics hooks with the Prometheus sink attached, on repository get/add.

    python bench/bench_hooks.py                     # 96 rounds (~1 min on 2 cores)
    python bench/bench_hooks.py --quick             # 24 rounds, a smoke check
    python bench/bench_hooks.py --output bench/RESULTS-hooks.md

One database, one process, four engines built by `build_engine`: no hooks (no event listeners at
all: the baseline), a second one without hooks (an A/A control: its ratio shows the noise of the
run), `PrometheusHook` (the target: < 5% on get and add), and every sink we ship that records
(Prometheus + `DatabaseMetrics` + slow-query log), for information. Calls run outside any
`transaction()` block, so each is one short transaction with one checkout, one statement and one
commit: every kind of event fires once per call. Rounds cycle through every order of the variants
(each variant in each position equally often); a sample is the mean of `--inner` consecutive calls
(garbage collection run before it, disabled during it); the table shows medians over rounds and two
ratios to the baseline measured in this run: of the medians, and the median of the per-round ratios
(robust when other processes load the machine unevenly during the run), and the client process's
CPU time per call (what the hooks add is client CPU; the server's work is the same for every variant).

Without `DATABASE_URL` a throwaway PostgreSQL is started (fsync off: shorter calls, so the relative
overhead is, if anything, larger than on a durable server). With it, rows are written into that
database (claims and their audit rows; nothing is cleaned up).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import ClaimRepository, migrations
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.monitoring import DatabaseMetrics
from persistence.observe.logging import SlowQueryLog
from persistence.observe.prometheus import PrometheusHook
from persistence.testing import ThrowawayPostgres

TARGET = 0.05
BASELINE = "hooks disabled"
CONTROL = "hooks disabled, 2nd engine (A/A control)"
PROMETHEUS = "hooks + Prometheus"
ALL_SINKS = "hooks + Prometheus + DatabaseMetrics + slow log"

Op = Callable[[ClaimRepository], Awaitable[object]]


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"nproc {os.cpu_count()}, {cpu}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


async def sample(repo: ClaimRepository, op: Op, inner: int) -> tuple[float, float]:
    """Mean wall and client-CPU seconds per call over `inner` calls (GC run before, not during)."""
    gc.collect()
    gc.disable()
    try:
        cpu = time.process_time()
        began = time.perf_counter()
        for _ in range(inner):
            await op(repo)
        return (time.perf_counter() - began) / inner, (time.process_time() - cpu) / inner
    finally:
        gc.enable()


async def run(config: DatabaseConfig, rounds: int, inner: int) -> str:
    engines: dict[str, AsyncEngine] = {
        BASELINE: build_engine(config),
        CONTROL: build_engine(config),
        PROMETHEUS: build_engine(config, hooks=[PrometheusHook(CollectorRegistry())]),
        ALL_SINKS: build_engine(
            config, hooks=[PrometheusHook(CollectorRegistry()), DatabaseMetrics(), SlowQueryLog(1.0)]
        ),
    }
    names = list(engines)
    repos = {name: ClaimRepository(engine) for name, engine in engines.items()}
    row = await repos[BASELINE].add(external_id="bench-hooks-get", content="x")
    numbers = itertools.count()
    run_id = time.time_ns()

    async def get(repo: ClaimRepository) -> object:
        return await repo.get(row.id)

    async def add(repo: ClaimRepository) -> object:
        return await repo.add(external_id=f"bench-hooks-{run_id}-{next(numbers)}", content="benchmark row")

    operations: dict[str, Op] = {"get": get, "add": add}
    async with engines[BASELINE].connect() as conn:
        server = str(await conn.scalar(text("SHOW server_version")))
    load_before = load()
    samples: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    began = time.perf_counter()
    try:
        for op_name, op in operations.items():
            for repo in repos.values():  # warm up: pools, statement caches, prepared statements
                await sample(repo, op, inner * 3)
            orders = list(itertools.permutations(names))  # every variant in every position equally often
            for r in range(rounds):
                for name in orders[r % len(orders)]:
                    wall, used = await sample(repos[name], op, inner)
                    samples.setdefault((op_name, name), []).append(wall)
                    cpu.setdefault((op_name, name), []).append(used)
    finally:
        for engine in engines.values():
            await engine.dispose()
    elapsed = time.perf_counter() - began

    libs = ", ".join(f"{n} {version(n)}" for n in ("sqlalchemy", "asyncpg", "prometheus-client", "structlog"))
    lines = [
        f"- machine: {machine()}; load average (1/5/15 min) before {load_before}, after {load()}",
        f"- versions: Python {platform.python_version()}, {libs}, PostgreSQL {server}",
        f"- {rounds} rounds (variant order cycling through all permutations), {inner} calls per sample, {elapsed:.0f} s; "
        "each call is one short transaction outside any `transaction()` block",
        "",
        "| operation | variant | median per call | p90 | ratio of medians | median per-round ratio "
        "| client CPU per call (delta) | target < 1.05 |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for op_name in operations:
        base = samples[op_name, BASELINE]
        for name in names:
            own = samples[op_name, name]
            ratio = statistics.median(own) / statistics.median(base)
            paired = statistics.median(a / b for a, b in zip(own, base, strict=True))
            p90 = statistics.quantiles(own, n=10)[-1]
            verdict = "" if name == BASELINE else ("met" if max(ratio, paired) < 1 + TARGET else "**missed**")
            if name in (ALL_SINKS, CONTROL):
                verdict = "(noise floor)" if name == CONTROL else "(information)"
            own_cpu = statistics.median(cpu[op_name, name])
            delta = own_cpu - statistics.median(cpu[op_name, BASELINE])
            lines.append(
                f"| repo.{op_name} | {name} | {statistics.median(own) * 1e6:.0f} µs | {p90 * 1e6:.0f} µs "
                f"| {ratio:.3f} | {paired:.3f} | {own_cpu * 1e6:.0f} µs ({delta * 1e6:+.0f}) | {verdict} |"
            )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=96, help="a multiple of 24 balances the orders")
    parser.add_argument("--inner", type=int, default=25, help="calls per sample (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="24 rounds")
    parser.add_argument("--output", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args()
    rounds = 24 if args.quick else args.rounds
    if os.environ.get("DATABASE_URL"):
        config = DatabaseConfig()
        engine = build_engine(config)
        try:
            await migrations.upgrade(engine)
        finally:
            await engine.dispose()
        table = await run(config, rounds, args.inner)
    else:
        pg = ThrowawayPostgres()
        pg.start()
        try:
            await pg.create_migrated_template()
            table = await run(pg.config(pg.clone()), rounds, args.inner)
        finally:
            pg.stop()
    print(table)
    if args.output is not None:
        args.output.write_text(
            "# Hooks overhead (`python bench/bench_hooks.py`)\n\n"
            "Repository calls on an engine without hooks vs engines with sinks attached, measured in one "
            "run.\n\n" + table + "\n"
        )


if __name__ == "__main__":
    asyncio.run(main())
