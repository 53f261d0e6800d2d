"""AI-call ledger vs raw asyncpg, measured in the same run (issue 4's targets).

    python bench/bench_ledger.py                 # quick: get_stats at 200k rows (~2 min)
    python bench/bench_ledger.py --stats-rows 1000000   # the issue's 1M-row get_stats case

Starts its own PostgreSQL (durable: fsync on, unlike the test server), migrates a fresh database,
and compares, with interleaved A/B rounds and medians:

1. batch ingest: `AICallLogger.ingest` (batches of keys + rows + a pending-batch row, idempotent,
   two batches in flight on two connections) vs raw `copy_records_to_table` of the same rows into
   `ai_calls` on one connection (no keys, no rollups); target >= 0.85x. Also shown, for context:
   `log_batch` on one connection; raw COPY on two connections; raw COPY of every column
   `log_batch` writes into `ai_calls` (cache/reasoning buckets, usage, computed cost, cost source,
   price id, status, error class); and the time the later fold takes per batch.
2. `log_call` p50: `AICallLogger.log_record` vs one raw `INSERT .. RETURNING id` in autocommit on one
   connection; target <= 1.3x.
3. 8 concurrent loggers (one `AICallLogger`, 8 connections, 8 tasks) vs an asyncpg pool of 8 doing
   the raw INSERT with an acquire per call (and, for context, 8 tasks each holding one connection);
   rows/s; target >= 0.8x.
4. `get_stats` over a month from rollups vs seed 000's raw-scan query over the ledger; target >= 20x.

Both sides get pre-built rows (records validated when created, tuples for raw asyncpg). The batch
section also prints the CPU (client + server) each contender burns per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.ai_calls import AICallLogger, AICallRecord
from persistence.ai_calls.partitions import maintain_partitions
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.testing.database import free_port

MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-20250514"),
          ("google", "gemini-1.5-pro"), ("cohere", "command-r-plus")]  # fmt: skip
RAW_COLUMNS = ("created_at", "provider", "model", "input_tokens", "output_tokens", "cost_usd", "latency_ms",
               "customer_id", "organization_id", "product_id", "environment", "request_id", "trace_id")  # fmt: skip
RAW_INSERT = (
    "INSERT INTO ai_calls (created_at, provider, model, input_tokens, output_tokens, cost_usd, latency_ms, "
    "customer_id, organization_id, product_id, environment, request_id, trace_id) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id"
)
RAW_STATS = """
SELECT provider, count(*), sum(cost_usd), sum(total_tokens), avg(latency_ms)
  FROM ai_calls WHERE created_at >= $1 AND created_at < $2 GROUP BY provider
"""
_counter = 0


CONTENDERS = ("ingest", "log_batch", "raw1", "raw2", "full")


def records(n: int, start: datetime, span: timedelta, rng: random.Random) -> list[AICallRecord]:
    global _counter
    out = []
    for _ in range(n):
        _counter += 1
        provider, model = rng.choice(MODELS)
        out.append(
            AICallRecord(
                provider=provider,
                model=model,
                input_tokens=rng.randint(50, 4000),
                output_tokens=rng.randint(10, 900),
                cost_usd=Decimal(rng.randint(1, 50_000)) / 1_000_000,
                latency_ms=rng.randint(100, 9000),
                customer_id=f"cust_{rng.randint(1, 40):04d}",
                organization_id=f"org-{rng.randint(1, 7)}",
                product_id=rng.choice(("chatbot", "search", "agent")),
                environment="production",
                request_id=f"req-{_counter:09d}",
                trace_id=f"{rng.getrandbits(64):016x}",
                created_at=start + timedelta(seconds=rng.random() * span.total_seconds()),
            )
        )
    return out


FULL_COLUMNS = ("created_at", "provider", "model", "input_tokens", "output_tokens", "cache_read_tokens",
                "cache_write_tokens", "reasoning_tokens", "usage", "cost_usd", "computed_cost_usd", "cost_source",
                "price_id", "latency_ms", "status", "error_class", "customer_id", "organization_id", "product_id",
                "environment", "request_id", "trace_id")  # fmt: skip


def full_row(r: AICallRecord, quote: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every column `log_batch` writes into `ai_calls` (cost fields pre-computed, as raw rows are pre-built)."""
    return (r.created_at, r.provider, r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens,
            r.cache_write_tokens, r.reasoning_tokens, r.usage_json, *quote, r.latency_ms, r.status, r.error_class,
            r.customer_id, r.organization_id, r.product_id, r.environment, "full-" + (r.request_id or ""),
            r.trace_id)  # fmt: skip


def raw_row(r: AICallRecord) -> tuple[Any, ...]:
    return (r.created_at, r.provider, r.model, r.input_tokens, r.output_tokens, r.cost_usd, r.latency_ms,
            r.customer_id, r.organization_id, r.product_id, r.environment, "raw-" + (r.request_id or ""),
            r.trace_id)  # fmt: skip


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds used so far by the postmaster and its children (backends, WAL writer, ...); Linux only.

    Children that exited (autovacuum workers, closed backends) count through the postmaster's
    cutime/cstime, so a worker ending mid-measurement is not subtracted.
    """
    total = 0
    if postmaster is None:
        return 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster:
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        elif int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def bench_batch(
    log: AICallLogger,
    dsn: dict[str, Any],
    rounds: int,
    size: int,
    n: int,
    rng: random.Random,
    postmaster: int | None,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Five contenders per round, in rotating order, each loading `n` fresh batches of `size` rows:
    ours `ingest` (2 connections), ours `log_batch` (one connection), raw COPY of the seed's columns
    on one connection and on two, raw COPY of every column ours writes (one connection)."""
    now = datetime.now(UTC)
    await log.reload_prices()
    c1, c2 = await asyncpg.connect(**dsn), await asyncpg.connect(**dsn)
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}
    for i in range(rounds + 1):
        batches = [records(size, now - timedelta(days=1), timedelta(days=1), rng) for _ in range(5 * n)]
        ours, raw_rows = batches[: 2 * n], [[raw_row(r) for r in b] for b in batches[2 * n : 4 * n]]
        wide = [[full_row(r, log.prices.quote(r) or ()) for r in b] for b in batches[4 * n :]]

        async def copies(
            conn: asyncpg.Connection, parts: list[list[tuple[Any, ...]]], columns: tuple[str, ...]
        ) -> None:
            for part in parts:
                await conn.copy_records_to_table("ai_calls", records=part, columns=columns)

        async def ingest() -> None:
            loaded = [r for b in ours[:n] for r in b]  # noqa: B023 (called in the same iteration)
            assert await log.ingest(loaded, batch_size=size, concurrency=2) == n * size

        async def log_batch() -> None:
            for b in ours[n:]:  # noqa: B023
                assert await log.log_batch(b) == size

        async def raw1() -> None:
            await copies(c1, raw_rows[:n], RAW_COLUMNS)  # noqa: B023

        async def raw2() -> None:
            half = [raw_rows[n + k :: 2] for k in range(2)]  # noqa: B023
            await asyncio.gather(copies(c1, half[0], RAW_COLUMNS), copies(c2, half[1], RAW_COLUMNS))

        async def full() -> None:
            await copies(c1, wide, FULL_COLUMNS)  # noqa: B023

        contenders = [
            ("ingest", ingest),
            ("log_batch", log_batch),
            ("raw1", raw1),
            ("raw2", raw2),
            ("full", full),
        ]
        contenders = contenders[i % 5 :] + contenders[: i % 5]
        for name, fn in contenders:
            client, server = time.process_time(), server_cpu(postmaster)
            t = time.perf_counter()
            await fn()
            if i:  # round 0 is a warm-up
                results.setdefault(name, []).append(n * size / (time.perf_counter() - t))
                cpu.setdefault(name, []).append(
                    (time.process_time() - client, server_cpu(postmaster) - server)
                )
    await c1.close()
    await c2.close()
    # The rollup work log_batch no longer does inline: the fold of everything ours wrote above.
    t = time.perf_counter()
    folded = await log.fold_rollups()
    fold_ms = (time.perf_counter() - t) * 1000 * size / max(folded, 1)
    per_batch: dict[str, tuple[float, float]] = {}  # CPU ms per `size` rows: (client, server)
    for name, values in cpu.items():
        client_ms, server_ms = (statistics.median(v[k] for v in values) * 1000 / n for k in (0, 1))
        per_batch[name] = (client_ms, server_ms)
    medians = {name: statistics.median(values) for name, values in results.items()}
    return medians | {"fold_ms": fold_ms}, per_batch


async def bench_log_call(engine: AsyncEngine, raw: asyncpg.Connection, rounds: int,
                         per_round: int, rng: random.Random) -> dict[str, float]:  # fmt: skip
    now = datetime.now(UTC)
    ours: list[float] = []
    theirs: list[float] = []
    stmt = await raw.prepare(RAW_INSERT)
    async with AICallLogger(engine, connections=1, fold_every=None) as log:
        for i in range(rounds + 1):
            batch = records(per_round, now, timedelta(seconds=1), rng)

            async def a(sink: list[float]) -> None:
                for r in batch:  # noqa: B023 (called in the same iteration)
                    t = time.perf_counter()
                    await stmt.fetchval(*raw_row(r))
                    sink.append(time.perf_counter() - t)

            async def b(sink: list[float]) -> None:
                for r in batch:  # noqa: B023 (called in the same iteration)
                    t = time.perf_counter()
                    await log.log_record(r)
                    sink.append(time.perf_counter() - t)

            sink_a: list[float] = []
            sink_b: list[float] = []
            if i % 2:
                await a(sink_a)
                await b(sink_b)
            else:
                await b(sink_b)
                await a(sink_a)
            if i:
                theirs += sink_a
                ours += sink_b
    return {"ours": statistics.median(ours) * 1000, "raw": statistics.median(theirs) * 1000,
            "ours_p90": pct(ours, 0.9) * 1000, "raw_p90": pct(theirs, 0.9) * 1000}  # fmt: skip


async def bench_concurrent(engine: AsyncEngine, dsn_kwargs: dict[str, Any], rounds: int,
                           per_task: int, rng: random.Random) -> dict[str, float]:  # fmt: skip
    """8 tasks: ours (one logger, 8 leased connections) vs a raw asyncpg pool of 8, used two ways:
    as a pool, an acquire per call (the target; asyncpg also sends its reset query on every release),
    and each task holding one connection for its whole run (no pool traffic: the strongest raw
    baseline, shown for context)."""
    now = datetime.now(UTC)
    pool = await asyncpg.create_pool(min_size=8, max_size=8, **dsn_kwargs)
    results: dict[str, list[float]] = {}
    async with AICallLogger(engine, connections=8, fold_every=None) as log:
        for i in range(rounds + 1):
            work = [records(per_task, now, timedelta(seconds=1), rng) for _ in range(8)]

            async def held(batch: list[AICallRecord]) -> None:
                async with pool.acquire() as c:
                    for r in batch:
                        await c.fetchval(RAW_INSERT, *raw_row(r))

            async def per_call(batch: list[AICallRecord]) -> None:
                for r in batch:
                    async with pool.acquire() as c:
                        await c.fetchval(RAW_INSERT, *raw_row(r))

            async def ours(batch: list[AICallRecord]) -> None:
                for r in batch:
                    await log.log_record(r)

            contenders = [("ours", ours), ("raw", held), ("raw_per_call", per_call)]
            for name, task in contenders[i % 3 :] + contenders[: i % 3]:
                t = time.perf_counter()
                await asyncio.gather(*(task(w) for w in work))
                if i:
                    results.setdefault(name, []).append(8 * per_task / (time.perf_counter() - t))
    await pool.close()
    return {name: statistics.median(values) for name, values in results.items()}


async def bench_stats(engine: AsyncEngine, raw: asyncpg.Connection, rows: int,
                      rng: random.Random) -> dict[str, float]:  # fmt: skip
    start = datetime(2025, 6, 1, tzinfo=UTC)
    end = start + timedelta(days=30)
    # The month gets its partition (as `persistence partitions` would have made it), and calls arrive
    # in time order, as a live ledger's do (BRIN on created_at relies on that).
    await maintain_partitions(engine, ahead=1, today=start.date())
    async with AICallLogger(engine, connections=1, fold_every=None) as log:
        t = time.perf_counter()
        chunks = -(-rows // 10_000)
        slice_ = timedelta(days=30) / chunks
        done = 0
        for k in range(chunks):
            n = min(10_000, rows - done)
            batch = sorted(records(n, start + slice_ * k, slice_, rng), key=lambda r: r.created_at)
            await log.log_batch(batch)
            done += n
        load = time.perf_counter() - t
        await log.fold_rollups()
        await raw.execute("VACUUM ANALYZE")
        window = (
            start + timedelta(hours=3, minutes=7),
            end - timedelta(hours=5, minutes=11),
        )  # partial edges
        ours, theirs = [], []
        for i in range(7):
            t = time.perf_counter()
            stats = await log.get_stats(*window)
            b = time.perf_counter() - t
            t = time.perf_counter()
            scan = await raw.fetch(RAW_STATS, *window)
            a = time.perf_counter() - t
            if i:
                ours.append(b)
                theirs.append(a)
        assert stats["total_calls"] == sum(r[1] for r in scan)
        assert stats["total_cost_usd"] == sum(r[2] for r in scan)
    return {"ours": statistics.median(ours) * 1000, "raw": statistics.median(theirs) * 1000, "load_s": load}


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}"


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stats-rows", type=int, default=200_000, help="ledger rows for get_stats (default %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--batch", type=int, default=5000, help="rows per log_batch / COPY (default %(default)s)"
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=8,
        help="batches each batch contender loads per round (default %(default)s: a bulk load's steady state)",
    )
    args = parser.parse_args()
    rng = random.Random(7)

    data = Path(tempfile.mkdtemp(prefix="bench-ledger-", dir="/tmp"))
    server = EmbeddedServer(data, port=free_port(), bindir=EmbeddedConfig().pg_bindir, listen_address="127.0.0.1",
                            settings={"max_connections": "50"})  # fmt: skip
    postmaster = server.start().pid
    try:
        server.ensure_database("bench")
        config = DatabaseConfig.model_validate(
            {
                "host": str(server.socket_dir),
                "port": server.port,
                "user": server.superuser,
                "database": "bench",
                "pool_size": 10,
                "max_overflow": 0,
            }
        )
        engine = build_engine(config)
        await migrations.upgrade(engine)
        dsn: dict[str, Any] = {
            "host": str(server.socket_dir),
            "port": server.port,
            "user": server.superuser,
            "database": "bench",
        }
        raw = await asyncpg.connect(**dsn)
        version = await raw.fetchval("SHOW server_version")
        fsync = await raw.fetchval("SHOW fsync")
        async with AICallLogger(engine, connections=2, fold_every=None) as log:
            batch, cpu = await bench_batch(log, dsn, args.rounds, args.batch, args.batches, rng, postmaster)
        call = await bench_log_call(engine, raw, args.rounds, 300, rng)
        conc = await bench_concurrent(engine, dsn, args.rounds, 150, rng)
        await raw.execute(
            "TRUNCATE ai_calls, ai_call_keys, ai_call_usage_deltas, ai_call_usage_hourly, ai_call_model_hourly"
        )
        stats = await bench_stats(engine, raw, args.stats_rows, rng)
        await raw.close()
        await engine.dispose()
    finally:
        server.stop(mode="fast")
        shutil.rmtree(data, ignore_errors=True)
    ingest, raw1 = batch["ingest"], batch["raw1"]
    size = args.batch * 1000  # cpu[...] is in ms per batch
    rows = [
        (f"bulk ingest: `ingest` ({args.batch} rows/batch, 2 connections) vs one COPY stream, rows/s",
         f"{ingest:,.0f}", f"{raw1:,.0f}", ingest / raw1, ">= 0.85x", ingest / raw1 >= 0.85),
        ("  single stream: `log_batch` on one connection vs one COPY stream", f"{batch['log_batch']:,.0f}",
         f"{raw1:,.0f}", batch["log_batch"] / raw1, "(context)", batch["log_batch"] / raw1 >= 0.85),
        ("  `ingest` vs raw COPY on 2 connections too", f"{ingest:,.0f}", f"{batch['raw2']:,.0f}",
         ingest / batch["raw2"], "(context)", ingest / batch["raw2"] >= 0.85),
        ("  `log_batch` vs one COPY stream of every column ours writes", f"{batch['log_batch']:,.0f}",
         f"{batch['full']:,.0f}", batch["log_batch"] / batch["full"], "(context)",
         batch["log_batch"] / batch["full"] >= 0.85),
        ("  rows per CPU second (client + server): `ingest` vs one COPY stream", f"{size / sum(cpu['ingest']):,.0f}",
         f"{size / sum(cpu['raw1']):,.0f}", sum(cpu["raw1"]) / sum(cpu["ingest"]), "(context)",
         sum(cpu["raw1"]) / sum(cpu["ingest"]) >= 0.85),
        ("log_call p50 latency, ms", f"{call['ours']:.3f}", f"{call['raw']:.3f}", call["ours"] / call["raw"],
         "<= 1.3x", call["ours"] / call["raw"] <= 1.3),
        ("8 concurrent loggers vs an asyncpg pool of 8 (acquire per call), calls/s", f"{conc['ours']:,.0f}",
         f"{conc['raw_per_call']:,.0f}", conc["ours"] / conc["raw_per_call"], ">= 0.8x",
         conc["ours"] / conc["raw_per_call"] >= 0.8),
        ("  vs 8 raw connections, each held by its task (no pool round trips)", f"{conc['ours']:,.0f}",
         f"{conc['raw']:,.0f}", conc["ours"] / conc["raw"], "(context)", conc["ours"] / conc["raw"] >= 0.8),
        (f"get_stats over a month, {args.stats_rows:,} rows, ms", f"{stats['ours']:.2f}", f"{stats['raw']:.1f}",
         stats["raw"] / stats["ours"], ">= 20x faster", stats["raw"] / stats["ours"] >= 20),
    ]  # fmt: skip
    print(f"machine: {machine()}")
    print(f"PostgreSQL {version} (fsync={fsync}), Python {sys.version.split()[0]}, asyncpg {asyncpg.__version__}, "
          f"SQLAlchemy {sqlalchemy.__version__}; {args.rounds} interleaved rounds after 1 warm-up, medians; "
          f"batch contenders load {args.batches} x {args.batch:,} rows per round")  # fmt: skip
    print(
        f"folding the usage of {args.batch} batched rows into the rollups (off the write path): "
        f"{batch['fold_ms']:.1f} ms"
    )
    print(
        f"CPU ms per {args.batch:,} rows, client + server: "
        + ", ".join(f"{name} {cpu[name][0]:.0f} + {cpu[name][1]:.0f}" for name in CONTENDERS)
    )
    print(f"log_call p90: ours {call['ours_p90']:.3f} ms, raw {call['raw_p90']:.3f} ms; "
          f"loading {args.stats_rows:,} rows through log_batch took {stats['load_s']:.1f} s")  # fmt: skip
    print()
    print("| measure | AICallLogger | raw asyncpg | ratio | target | met |")
    print("|---|---:|---:|---:|---|---|")
    for name, ours, raw_, ratio, target, met in rows:
        print(f"| {name} | {ours} | {raw_} | {ratio:.2f}x | {target} | {'yes' if met else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
