"""Event ingest (issue 18): the recorder's idempotent batch write vs raw asyncpg COPY into the same
partitioned table, and the two idempotent shapes against each other.

    python bench/bench_events.py                          # ~1 min
    python bench/bench_events.py --rounds 1 --events 2000   # smoke

Starts its own PostgreSQL (durable: fsync on), migrates a fresh database, then loads `--events`
platform events (built and validated beforehand, today's daily partition) into
`analytics.platform_events`, emptied before each run, per side, in interleaved rounds, one
transaction per batch:

- raw COPY: `copy_records_to_table` straight into the partitioned table; not idempotent (a
  replayed batch fails on the key). The ceiling.
- write_events: what the recorder sends: a COPY per table, falling back to the unnest INSERT
  below only when the batch repeats a stored event (never here).
- unnest INSERT: `INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING`, one statement per batch.
- COPY staging: COPY into a temporary table, then `INSERT ... SELECT ... ON CONFLICT DO NOTHING`.
- recorder: `TimescaleIntegration.log_platform_event` for each event and `flush_all()`, end to end
  (buffer, writer task, write_events), at the same batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from benchenv import cpu_model, load_average

from persistence import PlatformEvent, TimescaleIntegration, migrations
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.events.writer import write_events, write_events_on_conflict
from persistence.testing.database import free_port

COLUMNS = ["tenant_id", "time", "event_id", "user_id", "session_id", "event_type", "event_category",
           "event_data", "metadata"]  # fmt: skip
STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS staging_platform_events "
    "(LIKE analytics.platform_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
FROM_STAGING = """
INSERT INTO analytics.platform_events
    (tenant_id, time, event_id, user_id, session_id, event_type, event_category, event_data, metadata)
SELECT tenant_id, time, event_id, user_id, session_id, event_type, event_category, event_data, metadata
  FROM staging_platform_events
ON CONFLICT DO NOTHING
"""


def rows(events: list[PlatformEvent]) -> list[tuple[object, ...]]:
    return [
        (e.tenant_id, e.time, e.event_id, e.user_id, e.session_id, e.event_type, e.event_category.value,
         e.event_data_json, e.metadata_json)
        for e in events
    ]  # fmt: skip


def batches(items: list[PlatformEvent], size: int) -> list[list[PlatformEvent]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=50_000, help="events per side per round")
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="bench-events-", dir="/tmp"))
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
        raw = await asyncpg.connect(host=str(server.socket_dir), port=server.port, user=server.superuser,
                                    database="bench")  # fmt: skip
        events = [
            PlatformEvent(tenant_id=f"tenant-{i % 50}", user_id=f"user-{i % 997}", event_type="user_query",
                          event_category="user_behavior", event_data={"query": "What is diabetes?", "n": i})
            for i in range(args.events)
        ]  # fmt: skip
        prepared = rows(events)

        async def raw_copy(size: int) -> None:
            for i in range(0, len(prepared), size):
                async with raw.transaction():
                    await raw.copy_records_to_table("platform_events", schema_name="analytics",
                                                    records=prepared[i : i + size], columns=COLUMNS)  # fmt: skip

        async def unnest(size: int) -> None:
            for batch in batches(events, size):
                await write_events_on_conflict(raw, batch)

        async def ours(size: int) -> None:
            for batch in batches(events, size):
                await write_events(raw, batch)

        async def staging(size: int) -> None:
            await raw.execute(STAGING)
            for i in range(0, len(prepared), size):
                async with raw.transaction():
                    await raw.copy_records_to_table("staging_platform_events", records=prepared[i : i + size],
                                                    columns=COLUMNS)  # fmt: skip
                    await raw.execute(FROM_STAGING)

        async def recorder(size: int) -> None:
            rec = TimescaleIntegration(
                engine, batch_size=size, flush_interval=60, max_buffered=max(10_000, size)
            )
            for e in events:
                await rec.log_platform_event(e)
            await rec.flush_all()
            await rec.close()

        sides: dict[str, Callable[[int], Awaitable[None]]] = {
            "raw asyncpg COPY": raw_copy,
            "write_events (COPY, ON CONFLICT on a replay)": ours,
            "unnest INSERT ON CONFLICT": unnest,
            "COPY staging + INSERT ON CONFLICT": staging,
            "recorder (log + flush)": recorder,
        }
        results: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for size in args.batch:
                for name, side in sides.items():
                    await raw.execute("TRUNCATE analytics.platform_events")
                    await raw.execute("VACUUM ANALYZE analytics.platform_events")
                    started = time.perf_counter()
                    await side(size)
                    elapsed = time.perf_counter() - started
                    count = await raw.fetchval("SELECT count(*) FROM analytics.platform_events")
                    assert count == len(events), (name, count)
                    results.setdefault((name, size), []).append(len(events) / elapsed)
        await raw.close()
        await engine.dispose()
        print(f"\n- machine: 2 CPUs ({cpu_model()}), load {load_average()}; PostgreSQL fsync on, "
              f"{args.events} events per run, median of {args.rounds} rounds\n")  # fmt: skip
        print("| side | batch | rows/s | vs raw COPY |")
        print("|---|---|---|---|")
        for size in args.batch:
            base = statistics.median(results[("raw asyncpg COPY", size)])
            for name in sides:
                rate = statistics.median(results[(name, size)])
                print(f"| {name} | {size} | {rate:,.0f} | {rate / base:.2f}x |")
    finally:
        server.stop(mode="fast")
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
