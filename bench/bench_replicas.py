"""Read replicas: repository reads in read-only blocks routed to a streaming replica vs the same on the primary.

    python bench/bench_replicas.py                 # ~1 min: starts tests/tools/replica.sh's lab
    python bench/bench_replicas.py --samples 300   # shorter
    PRIMARY_URL=postgresql://... REPLICA_URL=postgresql://... python bench/bench_replicas.py

Two engines on the same primary, each with its own pool: "routed" has the replica attached
(`DatabaseConfig.replicas`), "primary" has none. Operations, one sample = one block:

- `get` / `list(limit=20)` in `transaction(read_only=True)`, in a context that holds no
  read-your-writes token (a caught-up replica: the router checks it only once a second);
- write then read: `update()` outside a block (routed: its commit's WAL position is read on the
  committing connection), then `get` in a read-only block (routed: the replica is asked whether it
  has replayed that position, polled up to the wait budget, else the block runs on the primary).

Samples of the two sides interleave (the order alternates). The table gives p50/p99 per block,
the overhead of routing per block (p50 routed - p50 primary) and the requests each side sends for
one block (asyncpg protocol calls: one round trip each; `Parse` = a statement prepared once per
connection), counted in a separate pass. Everything runs on this machine: the replica shares its
cores, so this shows overheads, never a scale-out speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_repository import counting_listener
from benchenv import environment, load_average
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.config import DatabaseConfig
from persistence.engine import create_database_engine
from persistence.replicas import ReplicaRouter, router_of
from persistence.repositories.service_health import ServiceHealthRepository
from persistence.transaction import transaction

SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "tools" / "replica.sh"
ROWS = 1000


@dataclass
class Side:
    name: str
    engine: AsyncEngine
    repo: ServiceHealthRepository


Op = Callable[[Side, int], Awaitable[None]]


async def get_block(side: Side, i: int) -> None:
    async with transaction(read_only=True):
        await side.repo.get(IDS[i % len(IDS)])


async def list_block(side: Side, i: int) -> None:
    async with transaction(read_only=True):
        await side.repo.list(limit=20, offset=(i * 7) % (ROWS - 20))


async def write_then_read(side: Side, i: int) -> None:
    target = IDS[i % len(IDS)]
    await side.repo.update(target, metadata_={"n": i})
    async with transaction(read_only=True):
        row = await side.repo.get(target)
    if row.metadata_ != {"n": i}:
        raise AssertionError("stale read")


OPS: list[tuple[str, Op]] = [
    ("get in a read-only block", get_block),
    ("list(limit=20) in a read-only block", list_block),
    ("update, then get in a read-only block (read-your-writes)", write_then_read),
]
IDS: list[Any] = []


async def in_context(op: Op, side: Side, i: int, context: contextvars.Context) -> float:
    """Time one block, in the side's own context (its read-your-writes token lives there)."""
    started = time.perf_counter()
    await asyncio.create_task(op(side, i), context=context)  # type: ignore[arg-type]
    return time.perf_counter() - started


async def measure(sides: list[Side], op: Op, samples: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {side.name: [] for side in sides}
    contexts = {side.name: contextvars.Context() for side in sides}
    for i in range(samples // 10):  # warm-up: statements prepared, pools filled
        for side in sides:
            await in_context(op, side, i, contexts[side.name])
    for i in range(samples):
        order = sides if i % 2 == 0 else sides[::-1]
        for side in order:
            times[side.name].append(await in_context(op, side, i, contexts[side.name]))
    return times


async def count_requests(sides: list[Side], op: Op) -> dict[str, str]:
    """Requests one steady-state block sends, per side (after two unlogged runs)."""
    logs: dict[str, list[str]] = {}
    for side in sides:
        log: list[str] = []
        logs[side.name] = log
        engines = [side.engine]
        router = router_of(side.engine)
        if router is not None:
            engines += [replica.engine for replica in router.replicas]
        for engine in engines:
            await engine.dispose()  # fresh connections, so the listener wraps their protocol
            event.listen(engine.sync_engine.pool, "connect", counting_listener(log))
        context = contextvars.Context()
        for i in range(2):
            await in_context(op, side, i, context)
        log.clear()
        await in_context(op, side, 2, context)
    return {name: f"{len(log)}: {', '.join(log)}" for name, log in logs.items()}


def ms(value: float) -> str:
    return f"{value * 1000:.3f}"


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def run(primary_url: str, replica_url: str, samples: int) -> None:
    plain = await create_database_engine(DatabaseConfig(url=primary_url, pool_size=4))
    await migrations.upgrade(plain)
    routed = await create_database_engine(
        DatabaseConfig(url=primary_url, replicas=[replica_url], pool_size=4)
    )
    router = router_of(routed)
    assert router is not None
    seed = ServiceHealthRepository(plain)
    now = datetime.now(UTC)
    await seed.add_many(
        {"service_name": "bench", "instance_id": f"i{n}", "status": "healthy", "last_heartbeat": now}
        for n in range(ROWS)
    )
    IDS.extend(row.id for row in await seed.list(service_name="bench", limit=ROWS))
    await asyncio.sleep(0.5)  # let the replica replay the seed rows
    sides = [Side("routed", routed, ServiceHealthRepository(routed)), Side("primary", plain, seed)]
    load_before = load_average()
    rows = []
    for label, op in OPS:
        before = (router.routed, router.waited, router.fallback)
        times = await measure(sides, op, samples)
        after = (router.routed, router.waited, router.fallback)
        counts = ", ".join(
            f"{name} {b - a}"
            for name, a, b in zip(("routed", "waited", "fallback"), before, after, strict=True)
        )
        r, p = times["routed"], times["primary"]
        overhead = statistics.median(r) - statistics.median(p)
        requests = await count_requests(sides, op)
        rows.append(
            f"| {label} | {ms(statistics.median(r))} / {ms(p99(r))} | {ms(statistics.median(p))} / {ms(p99(p))} "
            f"| {overhead * 1000:+.3f} | {requests['routed']} | {requests['primary']} | {counts} |"
        )
    print(f"## Read replicas: routed vs primary alone ({samples} blocks per side and operation)\n")
    print(await environment(plain))
    print(
        f"- load average: {load_before} before, {load_average()} after; replica and client share the cores\n"
    )
    print(
        "| block | routed p50 / p99, ms | primary p50 / p99, ms | overhead p50, ms | requests, routed "
        "| requests, primary | router counts |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print(
        "\nRequests: asyncpg protocol calls of one steady-state block (one round trip each). Routed reads "
        "without a token send nothing extra (the replica's role and lag are re-read at most once a "
        "second); after a write, the commit's WAL position costs one SELECT on the primary and the read "
        "one SELECT on the replica per poll."
    )
    await cleanup(router, routed, plain)


async def cleanup(router: ReplicaRouter, *engines: AsyncEngine) -> None:
    await router.dispose()
    for engine in engines:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500, help="blocks per side and operation")
    args = parser.parse_args()
    primary, replica = os.environ.get("PRIMARY_URL"), os.environ.get("REPLICA_URL")
    if primary and replica:
        asyncio.run(run(primary, replica, args.samples))
        return
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as lab:
        out = subprocess.run([str(SCRIPT), "start", lab], check=True, capture_output=True, text=True).stdout
        primary, replica = out.split()
        try:
            asyncio.run(run(primary, replica, args.samples))
        finally:
            subprocess.run([str(SCRIPT), "stop", lab], check=False, capture_output=True)


if __name__ == "__main__":
    main()
