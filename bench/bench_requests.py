# ruff: noqa: S608  (table names come from the script's own constants; every value is a $n parameter)
"""Inference requests: claim + complete throughput, claims under an open snapshot, status p50 (issue 17,
must-show 4).

    python bench/bench_requests.py                  # ~3-4 min
    python bench/bench_requests.py --snapshot 60    # hold the snapshot longer

Starts its own PostgreSQL (durable: fsync on), migrates a fresh database, stores one small text
result (every completion links it, so the status join finds a result) and measures, in one run:

1. claim + complete throughput: `--workers` tasks, each claiming `--batch` queued requests and
   completing them one by one until the queue is empty, through `Requests(engine, connections=workers)`
   against the same statements (`persistence.requests.sql.CLAIM` and `COMPLETE`, the same text) sent
   by hand over raw asyncpg connections, one held by each worker. Both sides send 1 claim + `batch`
   completions per batch, each statement its own implicit transaction (one commit each). The sides
   alternate over `--rounds` rounds of `--per-round` requests (queued beforehand, not timed).
   Two more raw sides price the audit of status changes: the same statements without their
   `request_transitions` CTE ("no audit"), and with it writing `audit_log` rows instead (entity
   'request', changes and metadata as JSON, the project's audit table and its four indexes).
2. claims while one REPEATABLE READ transaction stays open elsewhere for `--snapshot` seconds (it
   holds back vacuum and the index entries' killing), preceded by `--before` and followed by `--after`
   seconds, for two designs, one after the other, each from a backlog of `--backlog` queued rows:
   ours (`request_inflight`: claim = UPDATE to processing, finish = DELETE moved into
   `request_history` + append of a `request_stats_deltas` row) and a single combined table (`requests_combined`, a scratch
   table in the bench's database with the same columns, indexes and storage settings: queued,
   processing and finished rows in one table, claim = the same statement text on that table, finish
   = UPDATE of the status in place). Both sides raw asyncpg with the same client loop, so only the
   design differs. Claims per second, claim statement p50 and dead tuples per `--window` seconds.
3. status query p50: `Requests.status` (the `requests` view joined to `results`) against the same
   statement (`sql.STATUS`) by hand, on completed requests, sequential, alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
from benchenv import environment, load_average
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.models.requests import INFLIGHT_STORAGE
from persistence.requests import Requests, Worker, sql
from persistence.results import ResultStore
from persistence.testing.database import free_port

COMPANY = "bench-co"
LEASE_S = 300.0

SEED = """
INSERT INTO {table} (company_id, request_id, user_id, model_id, prompt, estimated_tokens, max_attempts,
                     created_at, updated_at, queued_at)
SELECT $1, gen_random_uuid(), 'user-' || (g % 50), 'gpt-4o-mini', 'prompt number ' || g, 120, 3, t, t, t
  FROM generate_series(1, $2::int) g, LATERAL (SELECT clock_timestamp() AS t) x
"""

_STORAGE = ", ".join(f"{k} = {v}" for k, v in INFLIGHT_STORAGE.items())
COMBINED_DDL = [
    f"""CREATE TABLE requests_combined (
    company_id varchar(100) NOT NULL, request_id uuid NOT NULL, user_id varchar(100) NOT NULL,
    model_id varchar(100) NOT NULL, prompt text NOT NULL, status varchar(20) NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, queued_at timestamptz NOT NULL,
    processing_at timestamptz, completed_at timestamptz, cancel_requested_at timestamptz,
    processing_time_ms integer, estimated_tokens integer, prompt_tokens integer, completion_tokens integer,
    total_tokens integer, error_message text, result_sha256 bytea, attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3, worker_id varchar(200), reservation_id uuid, lease_id uuid,
    lease_until timestamptz, heartbeat_at timestamptz, ai_call_id bigint,
    PRIMARY KEY (company_id, request_id)
) WITH ({_STORAGE})""",
    "CREATE INDEX ON requests_combined (queued_at) WHERE status = 'queued'",
    "CREATE INDEX ON requests_combined (lease_until) WHERE status = 'processing'",
    "CREATE INDEX ON requests_combined (company_id, user_id, created_at)",
]
# The claim is our statement text on the other table (its transition rows included); finishing
# updates the row in place, with our lease guard written the same way (kept out of index conditions,
# see sql._HELD), and appends its transition row as ours does.
COMBINED_CLAIM = sql.CLAIM.replace("request_inflight", "requests_combined")
COMBINED_COMPLETE = """
WITH done AS (
UPDATE requests_combined
   SET status = 'completed', completed_at = t.at, updated_at = t.at,
       processing_time_ms = round(extract(epoch FROM t.at - processing_at) * 1000)::integer,
       prompt_tokens = $5, completion_tokens = $6, total_tokens = $7, result_sha256 = $8, ai_call_id = $9,
       lease_id = NULL, lease_until = NULL
  FROM (SELECT coalesce($4::timestamptz, now()) AS at) t
 WHERE company_id = $1 AND request_id = $2 AND lease_id = $3 AND (status = 'processing' AND lease_until > t.at) IS TRUE
RETURNING company_id, request_id, created_at, attempts, worker_id
), audited AS (
INSERT INTO request_transitions (company_id, request_id, created_at, action, from_status, to_status, attempt,
                                 worker_id, lease_id)
SELECT company_id, request_id, created_at, 'complete', 'processing', 'completed', attempts, worker_id, $3 FROM done
)
SELECT request_id FROM done
"""
# Experiment (not in the package): the claim bounded below by the newest queued_at already claimed,
# so its index scan starts past the entries of claimed rows (dead, but not removable while an old
# snapshot is open). Every `UNBOUNDED_EVERY`-th claim, and any bounded claim that finds nothing, scans
# from the start, so rows queued "in the past" (a producer's long transaction) are not stranded.
BOUNDED_CLAIM = sql.CLAIM.replace(
    "WHERE status = 'queued' ORDER BY", "WHERE status = 'queued' AND queued_at >= $5::timestamptz ORDER BY"
)
assert BOUNDED_CLAIM != sql.CLAIM
UNBOUNDED_EVERY = 50


# The rollup's rows are few (company, day, user, model). Until revision 0024 every finishing statement
# updated them (68,000 dead versions of 50 rows in a 30 s snapshot); now they append deltas, so the
# rollup shows no churn here (nothing folds during the bench).
ROLLUP_BLOAT = """
SELECT pg_relation_size('request_stats_daily') AS bytes, n_dead_tup FROM pg_stat_user_tables
 WHERE relname = 'request_stats_daily'
"""


_AUDIT_CTE = re.compile(
    r",\n(?P<name>\w+) AS \(\n    INSERT INTO request_transitions \([^)]*\)\n"
    r"    SELECT company_id, request_id, created_at, (?P<values>.*?)\n      FROM (?P<rows>[^\n]*)\n\)",
    re.DOTALL,
)


def _split(values: str) -> list[str]:
    """Top-level comma-separated SQL expressions."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(values):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(values[start:i].strip())
            start = i + 1
    return [*parts, values[start:].strip()]


def without_audit(statement: str) -> str:
    bare, n = _AUDIT_CTE.subn("", statement)
    assert n == 1, statement
    return bare


def into_audit_log(statement: str) -> str:
    """The statement with its transition row written to `audit_log` instead."""

    def cte(m: re.Match[str]) -> str:
        action, old, new, attempt, worker, lease, actor = _split(m["values"])
        return f""",
{m["name"]} AS (
    INSERT INTO audit_log (entity_type, entity_id, action, user_id, changes, metadata)
    SELECT 'request', request_id::text, {action}, {actor},
           jsonb_build_object('status', jsonb_build_array({old}::text, {new}::text), 'attempt', {attempt},
                              'worker_id', {worker}, 'lease_id', {lease}),
           jsonb_build_object('company_id', company_id)
      FROM {m["rows"]}
)"""

    changed, n = _AUDIT_CTE.subn(cte, statement)
    assert n == 1, statement
    return changed


@dataclass
class Tally:
    """What the workers of a phase did: requests finished, and each claim's (start, seconds)."""

    done: int = 0
    claims: list[tuple[float, float]] = field(default_factory=list)
    completes: list[tuple[float, float]] = field(default_factory=list)
    floor: datetime | None = None  # the newest queued_at claimed so far (the bounded experiment)


async def seed(conn: asyncpg.Connection, table: str, count: int) -> None:
    for start in range(0, count, 50_000):
        await conn.execute(SEED.format(table=table), COMPANY, min(50_000, count - start))
    await conn.execute(f"VACUUM ANALYZE {table}")


# -- 1. throughput -------------------------------------------------------------------------------------


async def drain_library(requests: Requests, batch: int, sha: bytes) -> None:
    worker = Worker.local("bench-lib")
    while claims := await requests.claim(worker, batch):
        for claim in claims:
            await requests.complete(claim, prompt_tokens=100, completion_tokens=50, result_sha256=sha)


async def drain_raw(
    conn: asyncpg.Connection, batch: int, sha: bytes, claim: str = sql.CLAIM, complete: str = sql.COMPLETE
) -> None:
    worker = Worker.local("bench-raw").id
    while rows := await conn.fetch(claim, worker, batch, LEASE_S, None):
        for row in rows:
            done = await conn.fetchrow(
                complete, row["company_id"], row["request_id"], row["lease_id"], None, 100, 50, 150, sha, None
            )  # fmt: skip
            assert done is not None


# -- 2. under an open snapshot ---------------------------------------------------------------------


async def claim_loop(
    conn: asyncpg.Connection,
    claim: str,
    complete: str,
    batch: int,
    sha: bytes,
    stop: asyncio.Event,
    tally: Tally,
    bounded: bool,
) -> None:
    worker = Worker.local("bench-snap").id
    count = 0
    while not stop.is_set():
        start = time.perf_counter()
        count += 1
        if bounded and tally.floor is not None and count % UNBOUNDED_EVERY:
            rows = await conn.fetch(BOUNDED_CLAIM, worker, batch, LEASE_S, None, tally.floor)
            if not rows:
                rows = await conn.fetch(claim, worker, batch, LEASE_S, None)
        else:
            rows = await conn.fetch(claim, worker, batch, LEASE_S, None)
        tally.claims.append((start, time.perf_counter() - start))
        if rows and (tally.floor is None or rows[-1]["queued_at"] > tally.floor):
            tally.floor = rows[-1]["queued_at"]
        if not rows:
            await asyncio.sleep(0.05)  # the backlog ran out
            continue
        for row in rows:
            begun = time.perf_counter()
            await conn.fetchrow(
                complete, row["company_id"], row["request_id"], row["lease_id"], None, 100, 50, 150, sha, None
            )
            tally.completes.append((begun, time.perf_counter() - begun))
        tally.done += len(rows)


@dataclass
class Window:
    end_s: float
    snapshot: bool
    rate: float
    claim_p50_ms: float
    complete_p50_ms: float
    dead: int


async def scan_cost(admin: asyncpg.Connection, table: str, floor: datetime | None) -> tuple[float, int]:
    """The claim's locking scan alone as EXPLAIN (ANALYZE, BUFFERS) sees it (rolled back): ms, buffers."""
    bound = "" if floor is None else "AND queued_at >= $1::timestamptz "
    query = (
        f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT company_id, request_id FROM {table} "
        f"WHERE status = 'queued' {bound}ORDER BY queued_at LIMIT 10 FOR UPDATE SKIP LOCKED"
    )
    tr = admin.transaction()
    await tr.start()
    try:
        plan = json.loads(await admin.fetchval(query, *([] if floor is None else [floor])))[0]
    finally:
        await tr.rollback()
    top = plan["Plan"]
    return plan["Execution Time"], top["Shared Hit Blocks"] + top["Shared Read Blocks"]


async def phase(
    conns: list[asyncpg.Connection],
    admin: asyncpg.Connection,
    holder: asyncpg.Connection,
    *,
    table: str,
    claim: str,
    complete: str,
    args: argparse.Namespace,
    sha: bytes,
    bounded: bool = False,
) -> tuple[list[Window], int, int, list[tuple[float, int]]]:
    """Workers claim + complete for before + snapshot + after seconds; per window: rate, p50, dead tuples."""
    await seed(admin, table, args.backlog)
    stop = asyncio.Event()
    tally = Tally()
    t0 = time.perf_counter()
    tasks = [
        asyncio.create_task(claim_loop(c, claim, complete, args.batch, sha, stop, tally, bounded))
        for c in conns
    ]
    windows: list[Window] = []
    total = args.before + args.snapshot + args.after
    opened = closed = False
    last_done, last_t, elapsed = 0, t0, 0.0
    scans: list[tuple[float, int]] = []
    while elapsed < total - 1e-9:
        if not opened and elapsed >= args.before:
            scans.append(await scan_cost(admin, table, tally.floor if bounded else None))
            await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await holder.fetchval("SELECT count(*) FROM pg_class")  # takes the snapshot
            opened = True
        elif opened and not closed and elapsed >= args.before + args.snapshot:
            scans.append(await scan_cost(admin, table, tally.floor if bounded else None))
            rollup = await admin.fetchrow(ROLLUP_BLOAT)
            assert rollup is not None
            scans.append((rollup["bytes"] / 1024, rollup["n_dead_tup"]))
            await holder.execute("COMMIT")
            closed = True
        in_snapshot = opened and not closed
        next_edge = min(elapsed + args.window, total)
        await asyncio.sleep(max(0.0, t0 + next_edge - time.perf_counter()))
        now = time.perf_counter()
        done = tally.done
        # Statistics reach the shared counters within about a second of a transaction's end.
        row = await admin.fetchrow("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = $1", table)
        assert row is not None
        lat = [d for s, d in tally.claims if last_t <= s < now]
        fin = [d for s, d in tally.completes if last_t <= s < now]
        windows.append(
            Window(
                next_edge,
                in_snapshot,
                (done - last_done) / (now - last_t),
                statistics.median(lat) * 1000 if lat else float("nan"),
                statistics.median(fin) * 1000 if fin else float("nan"),
                row["n_dead_tup"],
            )
        )
        last_done, last_t, elapsed = done, now, next_edge
    if opened and not closed:
        await holder.execute("COMMIT")
    stop.set()
    await asyncio.gather(*tasks)
    left = await admin.fetchval(f"SELECT count(*) FROM {table} WHERE status = 'queued'")
    size = await admin.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
    # The next phase starts from a clean table (whatever it is).
    if table == "request_inflight":
        await admin.execute("DELETE FROM request_inflight")
    await admin.execute(f"VACUUM {table}")
    return windows, left, size, scans


# -- 3. status ------------------------------------------------------------------------------------------


async def timed_status(requests: Requests, ids: list[uuid.UUID], sink: list[float]) -> None:
    for request_id in ids:
        start = time.perf_counter()
        record = await requests.status(COMPANY, request_id)
        sink.append(time.perf_counter() - start)
        assert record.result is not None


async def timed_status_raw(conn: asyncpg.Connection, ids: list[uuid.UUID], sink: list[float]) -> None:
    for request_id in ids:
        start = time.perf_counter()
        row = await conn.fetchrow(sql.STATUS, COMPANY, request_id)
        sink.append(time.perf_counter() - start)
        assert row is not None and row["result_kind"] is not None


async def run(args: argparse.Namespace) -> int:
    data = Path(tempfile.mkdtemp(prefix="bench-requests-", dir="/tmp"))
    server = EmbeddedServer(data, port=free_port(), bindir=EmbeddedConfig().pg_bindir, listen_address="127.0.0.1",
                            settings={"max_connections": str(2 * args.workers + 20),
                                      **({"synchronous_commit": "off"} if args.async_commit else {})})  # fmt: skip
    server.start()
    try:
        server.ensure_database("bench")
        config = DatabaseConfig.model_validate(
            {"host": str(server.socket_dir), "port": server.port, "user": server.superuser, "database": "bench",
             "pool_size": args.workers + 4, "max_overflow": 0}
        )  # fmt: skip
        engine: AsyncEngine = build_engine(config)
        await migrations.upgrade(engine)
        env = await environment(engine)

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(
                host=str(server.socket_dir), port=server.port, user=server.superuser, database="bench"
            )

        conns = [await connect() for _ in range(args.workers)]
        admin, holder = await connect(), await connect()
        async with ResultStore(engine, connections=1) as store:
            sha = (await store.put_text(COMPANY, "The answer is 42.")).sha256

        # 1. claim + complete throughput, alternating rounds after a warm-up round each.
        variants = {
            "raw": (sql.CLAIM, sql.COMPLETE),
            "bare": (without_audit(sql.CLAIM), without_audit(sql.COMPLETE)),
            "audit_log": (into_audit_log(sql.CLAIM), into_audit_log(sql.COMPLETE)),
        }
        sides = ["lib", *variants]
        spent = dict.fromkeys(sides, 0.0)
        async with Requests(engine, connections=args.workers) as requests:
            for i in range(args.rounds + 1):
                order = sides[i % len(sides) :] + sides[: i % len(sides)]
                for side in order:
                    await seed(admin, "request_inflight", args.per_round)
                    start = time.perf_counter()
                    if side == "lib":
                        await asyncio.gather(*(drain_library(requests, args.batch, sha) for _ in conns))
                    else:
                        claim, complete = variants[side]
                        await asyncio.gather(*(drain_raw(c, args.batch, sha, claim, complete) for c in conns))
                    if i:
                        spent[side] += time.perf_counter() - start
        assert await admin.fetchval("SELECT count(*) FROM request_inflight") == 0
        completed = await admin.fetchval("SELECT count(*) FROM request_history WHERE status = 'completed'")
        assert completed == (args.rounds + 1) * len(sides) * args.per_round, completed
        rate = {side: args.rounds * args.per_round / seconds for side, seconds in spent.items()}

        # 3. status p50 (before phase 2 grows the history further).
        ids = [r["request_id"] for r in await admin.fetch("SELECT request_id FROM request_history")]
        rng = random.Random(17)
        status: dict[str, list[float]] = {"raw": [], "kept": [], "pooled": []}
        async with Requests(engine, connections=1) as kept:
            pooled = Requests(engine)
            for i in range(args.rounds + 1):
                batch = rng.sample(ids, min(len(ids), args.status_queries))
                order = ["raw", "kept", "pooled"]
                rng.shuffle(order)
                for side in order:
                    sink: list[float] = []
                    if side == "raw":
                        await timed_status_raw(conns[0], batch, sink)
                    else:
                        await timed_status(kept if side == "kept" else pooled, batch, sink)
                    if i:
                        status[side] += sink

        # 2. claims under an open REPEATABLE READ snapshot, ours then the combined table.
        for statement in COMBINED_DDL:
            await admin.execute(statement)
        split = await phase(
            conns, admin, holder, table="request_inflight", claim=sql.CLAIM, complete=sql.COMPLETE, args=args,
            sha=sha,
        )  # fmt: skip
        combined = await phase(
            conns, admin, holder, table="requests_combined", claim=COMBINED_CLAIM, complete=COMBINED_COMPLETE,
            args=args, sha=sha,
        )  # fmt: skip
        bounded = await phase(
            conns, admin, holder, table="request_inflight", claim=sql.CLAIM, complete=sql.COMPLETE, args=args,
            sha=sha, bounded=True,
        )  # fmt: skip
        for conn in [*conns, admin, holder]:
            await conn.close()
        await engine.dispose()
    finally:
        server.stop(mode="fast")
        shutil.rmtree(data, ignore_errors=True)

    lib_rate, raw_rate = rate["lib"], rate["raw"]
    print(env)
    commit = "off (--async-commit: the statements' own cost)" if args.async_commit else "on"
    print(f"- load average {load_average()} (at the end); fsync on, synchronous_commit {commit}; one run")
    print()
    print(f"1. claim + complete, {args.workers} workers, batches of {args.batch}, {args.rounds} alternating rounds "
          f"of {args.per_round:,} requests per side after a warm-up round")  # fmt: skip
    print()
    print("| measure | raw asyncpg, same SQL | Requests(connections=n) | ours / raw | target | met |")
    print("|---|---:|---:|---:|---|---|")
    ratio = lib_rate / raw_rate
    print(f"| claim + complete, requests/s | {raw_rate:,.0f} | {lib_rate:,.0f} | {ratio:.2f}x | >= 0.8x | "
          f"{'yes' if ratio >= 0.8 else 'NO'} |")  # fmt: skip
    print()
    print("The audit of status changes (raw asyncpg, same rounds): one transition row per claimed and per "
          "completed request")  # fmt: skip
    print()
    print("| raw, no audit | raw, request_transitions (ours) | raw, audit_log rows instead | ours / no audit "
          "| audit_log / no audit |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|")
    print(f"| {rate['bare']:,.0f} | {raw_rate:,.0f} | {rate['audit_log']:,.0f} | {raw_rate / rate['bare']:.2f}x | "
          f"{rate['audit_log'] / rate['bare']:.2f}x |")  # fmt: skip
    print()
    print(f"2. claims under one REPEATABLE READ snapshot held {args.snapshot:g} s ({args.workers} workers, "
          f"batches of {args.batch}, backlog {args.backlog:,} queued rows per design; windows of {args.window:g} s)")  # fmt: skip
    print()
    print(
        "| window ends, s | snapshot open | ours: req/s | claim p50, ms | complete p50, ms | dead tuples "
        "| combined: req/s | claim p50, ms | complete p50, ms | dead tuples "
        "| ours, bounded claim: req/s | claim p50, ms | complete p50, ms |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a, b, c in zip(split[0], combined[0], bounded[0], strict=True):
        print(f"| {a.end_s:g} | {'yes' if a.snapshot else 'no'} | {a.rate:,.0f} | {a.claim_p50_ms:.2f} | "
              f"{a.complete_p50_ms:.2f} | {a.dead:,} | {b.rate:,.0f} | {b.claim_p50_ms:.2f} | "
              f"{b.complete_p50_ms:.2f} | {b.dead:,} | {c.rate:,.0f} | {c.claim_p50_ms:.2f} | "
              f"{c.complete_p50_ms:.2f} |")  # fmt: skip
    print()
    mib = 1024 * 1024
    print(f"- queued rows left at the end: ours {split[1]:,}, combined {combined[1]:,}, bounded {bounded[1]:,}; "
          f"table + indexes at the end: ours {split[2] / mib:,.1f} MiB (request_inflight), combined "
          f"{combined[2] / mib:,.1f} MiB")  # fmt: skip
    labels = ("ours", "combined", "ours, bounded claim")
    for label, result in zip(labels, (split, combined, bounded), strict=True):
        cost = ", ".join(f"{when} {ms:.2f} ms / {buffers:,} buffers"
                         for when, (ms, buffers) in zip(("before", "at its end"), result[3], strict=False))  # fmt: skip
        print(f"- {label}: the claim's locking scan alone (EXPLAIN ANALYZE, BUFFERS), snapshot {cost}")
        if len(result[3]) > 2 and label != "combined":
            kib, dead = result[3][2]
            print(
                f"  - request_stats_daily (50 live rows) at the snapshot's end: {kib:,.0f} KiB, {dead:,} dead tuples"
            )
    print()
    print(f"3. status query, {args.rounds} rounds of {args.status_queries:,} sequential lookups of completed "
          "requests per side after a warm-up round (shuffled order per round)")  # fmt: skip
    print()
    print("| measure | raw asyncpg, same SQL | Requests(connections=1) | Requests (pool checkout per call) "
          "| ours / raw (kept, pooled) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    p50 = {k: statistics.median(v) * 1000 for k, v in status.items()}
    print(f"| status p50, ms | {p50['raw']:.3f} | {p50['kept']:.3f} | {p50['pooled']:.3f} | "
          f"{p50['kept'] / p50['raw']:.2f}x, {p50['pooled'] / p50['raw']:.2f}x |")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=10, help="requests per claim (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds, parts 1 and 3")
    parser.add_argument("--per-round", type=int, default=2000, help="requests per side per round, part 1")
    parser.add_argument("--backlog", type=int, default=200_000, help="queued rows per design, part 2")
    parser.add_argument("--before", type=float, default=10.0, help="seconds before the snapshot, part 2")
    parser.add_argument("--snapshot", type=float, default=30.0, help="seconds the snapshot stays open")
    parser.add_argument("--after", type=float, default=10.0, help="seconds after it closes, part 2")
    parser.add_argument("--window", type=float, default=5.0, help="reporting window, seconds")
    parser.add_argument("--status-queries", type=int, default=1000, help="lookups per side per round, part 3")
    parser.add_argument("--async-commit", action="store_true", help="server-wide synchronous_commit=off")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
