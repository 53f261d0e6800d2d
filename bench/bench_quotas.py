"""Quota admission + settlement vs the same two statements written by hand in raw asyncpg (issue 16,
must-show 4: p50 at most 1.3x), and vs two bare UPDATEs (what the guarantees cost).

    python bench/bench_quotas.py                 # ~1 min
    python bench/bench_quotas.py --rounds 2 --pairs 20   # smoke

Starts its own PostgreSQL (durable: fsync on), migrates a fresh database, gives each of
`--users` users of one company a monthly quota (requests, tokens, cost: 3 counters each) and the
company a monthly token quota (1 counter), then times one request's admit + settle, sequentially,
each side on its own engine built with the defaults, in interleaved rounds (the order rotates):

- `Quotas`: `admit(...)` (one statement: limits resolved from `quotas`/`company_quotas`, the 4
  counters locked in id order, expired holds reclaimed, all-or-nothing hold, reservation and hold
  rows written) then `settle(...)` (one statement: counters locked, reservation state changed once,
  holds deleted, actual usage added to the counters and upserted into its 2 `usage` rows).
- our two statements by hand (the target's baseline): `quotas_sql.ADMIT` and `quotas_sql.FINISH`
  sent from raw asyncpg with the arguments `Quotas` sends. `Quotas / by hand` is what the library
  adds around its SQL (validation, the tenant check, typed results, the pool lease).
- two bare UPDATEs (raw asyncpg): the counter ids and limits already known to the client, one
  conditional UPDATE reserving on the same 4 rows (`held = held + e WHERE used + held + e <= limit`),
  then one UPDATE settling them (`held = held - e, used = used + actual`). No reservation row, no
  lease, no limit lookup, not all-or-nothing: what a hand-written limiter usually is, and what the
  guarantees are measured against.
- floor (hand-written too): what no design that keeps our guarantees can skip, with everything
  else taken out: the bare UPDATEs (all-or-nothing checked on the locked rows), plus the reservation
  row that makes settlement exactly-once and lets a crashed caller's hold expire (inserted by the
  first statement, flipped by the second), plus seed 001's two `usage` rows upserted by the
  settlement. No limit resolution, no holds table, no rolling windows.

All sides lease a pooled connection per statement pair from their own engine and send two
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
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
from benchenv import cpu_model, load_average
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations, quotas_sql
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.quotas import _USAGE_LOCK_CLASS, QuotaLimits, Quotas
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

FLOOR_ADMIT = """
WITH cur AS (
    SELECT c.id, c.used, c.held, w.amount, w.lim
    FROM quota_counters c JOIN unnest($2::bigint[], $3::numeric[], $4::numeric[]) AS w (id, amount, lim) ON w.id = c.id
    WHERE c.company_id = $1 ORDER BY c.id FOR UPDATE OF c
), ok AS (
    SELECT count(*) = cardinality($2::bigint[]) AND bool_and(used + held + amount <= lim) AS admitted FROM cur
), bumped AS (
    UPDATE quota_counters c SET held = c.held + cur.amount FROM cur, ok
    WHERE ok.admitted AND c.company_id = $1 AND c.id = cur.id
    RETURNING c.id
), reservation AS (
    INSERT INTO quota_reservations (company_id, id, user_id, counter_ids, requests, tokens, cost_usd, created_at, expires_at)
    SELECT $1, $5, $6, $2, 1, $7, $8, now(), now() + interval '5 minutes' FROM ok WHERE ok.admitted
    RETURNING id
)
SELECT (SELECT admitted FROM ok), (SELECT count(*) FROM bumped)
"""
FLOOR_SETTLE = """
WITH cur AS (
    SELECT c.id FROM quota_counters c WHERE c.company_id = $1 AND c.id = ANY ($2::bigint[]) ORDER BY c.id FOR UPDATE
), finished AS (
    UPDATE quota_reservations r
    SET state = 'settled', finished_at = now(), actual_requests = 1, actual_tokens = $6, actual_cost_usd = $7,
        usage_time_zone = 'UTC'
    WHERE r.company_id = $1 AND r.id = $5 AND r.state = 'held' AND (SELECT count(*) FROM cur) >= 0
    RETURNING r.user_id
), applied AS (
    UPDATE quota_counters c SET held = c.held - w.amount, used = c.used + w.actual
    FROM unnest($2::bigint[], $3::numeric[], $4::numeric[]) AS w (id, amount, actual), finished
    WHERE c.company_id = $1 AND c.id = w.id
    RETURNING c.id
), counted AS (
    INSERT INTO usage AS u (company_id, user_id, period, period_start, period_end, requests_count, tokens_used, cost_usd)
    SELECT $1, f.user_id, p.period, p.period_start, p.period_end, 1, $6::bigint, $7
    FROM finished f CROSS JOIN LATERAL (VALUES
        ('daily', current_date, current_date),
        ('monthly', date_trunc('month', current_date)::date,
                    (date_trunc('month', current_date) + interval '1 month - 1 day')::date)) AS p (period, period_start, period_end)
    ON CONFLICT ON CONSTRAINT pk_usage DO UPDATE
    SET requests_count = u.requests_count + EXCLUDED.requests_count, tokens_used = u.tokens_used + EXCLUDED.tokens_used,
        cost_usd = u.cost_usd + EXCLUDED.cost_usd, updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM applied), (SELECT count(*) FROM counted)
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


async def fetch_row(raw: asyncpg.Connection, query: str, *args: object) -> asyncpg.Record:
    row = await raw.fetchrow(query, *args)
    assert row is not None
    return row


async def timed_floor(
    engine: AsyncEngine, users: list[str], counters: dict[str, list[int]], sink: list[float]
) -> None:
    amounts = [Decimal(1), Decimal(ESTIMATE_TOKENS), COST, Decimal(ESTIMATE_TOKENS)]
    actual = [Decimal(1), Decimal(ACTUAL_TOKENS), ACTUAL_COST, Decimal(ACTUAL_TOKENS)]
    limits = [Decimal(BIG)] * 4
    for user in users:
        ids = counters[user]
        reservation = uuid.uuid4()
        start = time.perf_counter()
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, asyncpg.Connection)
            admitted, bumped = await fetch_row(raw, FLOOR_ADMIT, COMPANY, ids, amounts, limits, reservation, user,
                                                  Decimal(ESTIMATE_TOKENS), COST)  # fmt: skip
            assert admitted and bumped == 4, (admitted, bumped)
            applied, counted = await fetch_row(raw, FLOOR_SETTLE, COMPANY, ids, amounts, actual, reservation,
                                                  ACTUAL_TOKENS, ACTUAL_COST)  # fmt: skip
            assert applied == 4 and counted == 2, (applied, counted)
        sink.append(time.perf_counter() - start)


async def timed_same(engine: AsyncEngine, users: list[str], sink: list[float]) -> None:
    """Our two statements (`quotas_sql.ADMIT`, `quotas_sql.FINISH`) sent by hand with the arguments
    `Quotas` would send: what the library adds around them (validation, the tenant check, results)."""
    tokens = Decimal(200 + 1_000)
    for user in users:
        reservation = uuid.uuid4()
        start = time.perf_counter()
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, asyncpg.Connection)
            rows = await raw.fetch(
                quotas_sql.ADMIT, COMPANY, user, None, Decimal(1), tokens, COST, reservation, 300.0
            )
            assert rows[0]["admitted"] and not any(r["missing"] for r in rows), rows
            row = await fetch_row(raw, quotas_sql.FINISH, COMPANY, reservation, Decimal(1), Decimal(ACTUAL_TOKENS),
                                  ACTUAL_COST, "settled", None, _USAGE_LOCK_CLASS)  # fmt: skip
            assert row["counted"], row
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
        results: list[tuple[str, float, float, float, float]] = []
        for mode in ("on", "off"):
            async with setup.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                assert isinstance(raw, asyncpg.Connection)
                await raw.execute(f"ALTER DATABASE bench SET synchronous_commit = {mode}")
            # Fresh default engines per mode, so every connection has the setting.
            ours_engine, raw_engine, floor_engine, same_engine = (
                build_engine(config),
                build_engine(config),
                build_engine(config),
                build_engine(config),
            )
            ours_quotas = Quotas(ours_engine)
            ours: list[float] = []
            hand: list[float] = []
            floor: list[float] = []
            same: list[float] = []
            for i in range(args.rounds + 1):
                batch = [users[(i * args.pairs + k) % len(users)] for k in range(args.pairs)]
                sink_a: list[float] = []
                sink_b: list[float] = []
                sink_c: list[float] = []
                sink_d: list[float] = []
                sides = [  # coroutines, started in a rotating order
                    timed_quotas(ours_quotas, batch, sink_a),
                    timed_raw(raw_engine, batch, counters, sink_b),
                    timed_floor(floor_engine, batch, counters, sink_c),
                    timed_same(same_engine, batch, sink_d),
                ]
                for k in range(len(sides)):
                    await sides[(i + k) % len(sides)]
                if i:  # round 0 warms up
                    ours += sink_a
                    hand += sink_b
                    floor += sink_c
                    same += sink_d
            results.append((mode, statistics.median(ours) * 1000, statistics.median(hand) * 1000,
                            statistics.median(floor) * 1000, statistics.median(same) * 1000))  # fmt: skip
            for engine in (ours_engine, raw_engine, floor_engine, same_engine):
                await engine.dispose()
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
    print(
        "| measure | our 2 statements by hand (raw asyncpg) | Quotas admit + settle | ratio | target | met "
        "| 2 bare UPDATEs (raw asyncpg) | Quotas / bare | floor (hand-written) | floor / bare |"
    )
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for mode, p50_a, p50_b, p50_c, p50_d in results:
        ratio = p50_a / p50_d
        label = "durable" if mode == "on" else "synchronous_commit=off"
        print(f"| admit + settle p50 latency, ms ({label}) | {p50_d:.3f} | {p50_a:.3f} | {ratio:.2f}x | "
              f"<= 1.3x | {'yes' if ratio <= 1.3 else 'NO'} | {p50_b:.3f} | {p50_a / p50_b:.2f}x | "
              f"{p50_c:.3f} | {p50_c / p50_b:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
