"""Row-level security's cost (issue 19): the same calls as a service role under RLS and as the owner without.

    python bench/bench_rls.py                 # ~1 min
    python bench/bench_rls.py --calls 500     # shorter

Starts its own throwaway PostgreSQL (`ThrowawayPostgres`, fsync off) and migrates a fresh
database, or uses DATABASE_URL's (as a superuser: it creates a LOGIN role `bench_rls_service` in
`persistence_service`). Two operations, each on two sides:

- `log_call`: `AICallLogger.log_call` (one new call per sample). owner: the table owner, no RLS, the
  bare statement in autocommit. service: the service login role (the logger sees RLS bind it):
  BEGIN, `set_config('persistence.tenant_id', ...)`, the statement, COMMIT.
- `list`: `Repository(AICallUsageHourly).list(organization_id=t)` (a tenant's 48 hourly rows) outside
  any block. owner: no context. service: inside `tenant(t)`, so its transaction starts with the
  `set_config` statement and the policy adds `organization_id = <setting>` to the scan.

Rounds interleave the sides (order alternating) after a warm-up; every call is one sample; the
table gives p50/p99 and the p50 overhead per call. A counting pass logs the requests one
steady-state call of each side sends (asyncpg protocol calls).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bench_repository import counting_listener
from benchenv import environment, load_average
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.ai_calls import AICallLogger, AICallRecord
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.models import AICallUsageHourly
from persistence.repository import Repository
from persistence.tenancy import tenant

ROLE = "bench_rls_service"
TENANTS = [f"tenant-{k}" for k in range(10)]
HOURS = 48


class Hourly(Repository[AICallUsageHourly]):
    model = AICallUsageHourly


async def prepare(config: DatabaseConfig) -> str:
    """Migrate, create the service login role, and give every tenant 48 hourly rollup rows."""
    owner = build_engine(config)
    try:
        await migrations.upgrade(owner)
        async with owner.begin() as conn:
            exists = await conn.scalar(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": ROLE})
            if not exists:
                await conn.execute(text(f"CREATE ROLE {ROLE} LOGIN IN ROLE persistence_service"))
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS)
        records = [
            AICallRecord.coerce(
                {
                    "provider": "openai",
                    "model": "gpt-4o",
                    "input_tokens": 100,
                    "output_tokens": 20,
                    "cost_usd": Decimal("0.001"),
                    "organization_id": t,
                    "request_id": f"seed-{t}-{h}",
                    "created_at": start + timedelta(hours=h, minutes=5),
                }
            )
            for t in TENANTS
            for h in range(HOURS)
        ]
        async with AICallLogger(owner, fold_every=None) as logger:
            await logger.log_batch(records)
            await logger.fold_rollups()
        return await environment(owner)
    finally:
        await owner.dispose()


class Side:
    def __init__(self, name: str, engine: AsyncEngine, scoped: bool) -> None:
        self.name = name
        self.engine = engine
        self.scoped = scoped
        self.logger = AICallLogger(engine, fold_every=None, connections=1)
        self.hourly = Hourly(engine)
        self.n = 0

    async def log_call(self) -> None:
        self.n += 1
        t = TENANTS[self.n % len(TENANTS)]
        await self.logger.log_call(
            "openai",
            "gpt-4o",
            100,
            20,
            Decimal("0.001"),
            organization_id=t,
            request_id=f"{self.name}-{self.n}",
        )

    async def list(self) -> None:
        self.n += 1
        t = TENANTS[self.n % len(TENANTS)]
        if self.scoped:
            async with tenant(t):
                rows = await self.hourly.list(organization_id=t)
        else:
            rows = await self.hourly.list(organization_id=t)
        assert len(rows) == HOURS, (self.name, len(rows))

    async def close(self) -> None:
        await self.logger.close()
        await self.engine.dispose()


def sides(config: DatabaseConfig, counting: dict[str, list[str]] | None = None) -> list[Side]:
    out = []
    for name, cfg, scoped in (
        ("owner", config, False),
        ("service", config.model_copy(update={"user": ROLE}), True),
    ):
        engine = build_engine(cfg)
        if counting is not None:
            counting[name] = []
            event.listen(engine.sync_engine.pool, "connect", counting_listener(counting[name]))
        out.append(Side(name, engine, scoped))
    return out


async def round_trips(config: DatabaseConfig) -> dict[tuple[str, str], str]:
    counting: dict[str, list[str]] = {}
    pair = sides(config, counting)
    found: dict[tuple[str, str], str] = {}
    try:
        for op in ("log_call", "list"):
            for side in pair:
                for _ in range(3):  # warm: connections open, statements prepared
                    await getattr(side, op)()
                log = counting[side.name]
                log.clear()
                await getattr(side, op)()
                found[(op, side.name)] = f"{len(log)} ({' · '.join(log)})"
    finally:
        for side in pair:
            await side.close()
    return found


async def measure(config: DatabaseConfig, calls: int) -> dict[tuple[str, str], list[float]]:
    pair = sides(config)
    samples: dict[tuple[str, str], list[float]] = {
        (op, s.name): [] for op in ("log_call", "list") for s in pair
    }
    rounds = 10
    try:
        for op in ("log_call", "list"):
            for side in pair:
                for _ in range(50):
                    await getattr(side, op)()
            for r in range(rounds):
                order = pair if r % 2 == 0 else pair[::-1]
                for side in order:
                    call: Callable[[], Awaitable[None]] = getattr(side, op)
                    bucket = samples[(op, side.name)]
                    for _ in range(calls // rounds):
                        started = time.perf_counter()
                        await call()
                        bucket.append(time.perf_counter() - started)
    finally:
        for side in pair:
            await side.close()
    return samples


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def bench(config: DatabaseConfig, calls: int) -> str:
    env = await prepare(config)
    trips = await round_trips(config)
    load_before = load_average()
    started = time.perf_counter()
    samples = await measure(config, calls)
    elapsed = time.perf_counter() - started
    lines = [
        "| operation | side | p50 ms | p99 ms | p50 overhead ms/call | round trips per call |",
        "|---|---|---|---|---|---|",
    ]
    for op in ("log_call", "list"):
        owner_p50 = statistics.median(samples[(op, "owner")]) * 1000
        for side in ("owner", "service"):
            values = samples[(op, side)]
            p50 = statistics.median(values) * 1000
            overhead = "—" if side == "owner" else f"{p50 - owner_p50:+.3f} ({p50 / owner_p50:.2f}x)"
            lines.append(
                f"| {op} | {side}{' (RLS + tenant)' if side == 'service' else ' (no RLS)'} | {p50:.3f} | "
                f"{_p(values, 0.99):.3f} | {overhead} | {trips[(op, side)]} |"
            )
    return (
        f"- date: {dt.datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n{env}\n"
        f"- run: {calls} calls per side and operation in 10 interleaved rounds after 50 warm-up calls "
        f"({elapsed:.0f} s); 1-minute load average {load_before} before, {load_average()} after\n"
        f"- data: {len(TENANTS)} tenants x {HOURS} hourly rollup rows; `list` returns a tenant's {HOURS} rows\n\n"
        + "\n".join(lines)
        + "\n"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per side and operation")
    args = parser.parse_args()
    if os.environ.get("DATABASE_URL"):
        report = await bench(DatabaseConfig(), args.calls)
    else:
        from persistence.testing.database import ThrowawayPostgres

        pg = ThrowawayPostgres()
        pg.start()
        try:
            await pg.create_migrated_template()
            report = await bench(pg.config(pg.clone("persistence_bench_rls")), args.calls)
        finally:
            pg.stop()
    print(report)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
