"""Seed 004's get_tenant_daily_cost: a local day's cost of one tenant, equal to a raw scan of the ledger."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.ai_calls import AICallLogger, fold_rollups
from persistence.ai_calls.tenant_cost import DAILY_COST, get_tenant_daily_cost, tenant_day
from persistence.errors import ValidationError

U = UTC
# (zone, local day, its UTC bounds written out by hand: the test does not trust the code's zone arithmetic)
DAYS = [
    ("UTC", date(2026, 3, 8), datetime(2026, 3, 8, tzinfo=U), datetime(2026, 3, 9, tzinfo=U)),
    # Spring forward (02:00 EST -> 03:00 EDT): a 23-hour day.
    ("America/New_York", date(2026, 3, 8), datetime(2026, 3, 8, 5, tzinfo=U), datetime(2026, 3, 9, 4, tzinfo=U)),
    # Fall back (02:00 EDT -> 01:00 EST): a 25-hour day.
    ("America/New_York", date(2026, 11, 1), datetime(2026, 11, 1, 4, tzinfo=U), datetime(2026, 11, 2, 5, tzinfo=U)),
    # +05:30: the day starts and ends in the middle of a UTC hour.
    ("Asia/Kolkata", date(2026, 3, 8), datetime(2026, 3, 7, 18, 30, tzinfo=U), datetime(2026, 3, 8, 18, 30, tzinfo=U)),
    ("Asia/Kolkata", date(2026, 11, 1), datetime(2026, 10, 31, 18, 30, tzinfo=U), datetime(2026, 11, 1, 18, 30, tzinfo=U)),
]  # fmt: skip
TENANTS = ("acme-corp", "globex", None)


def instants(seed: int, n: int) -> Iterator[datetime]:
    """Every day bound, a microsecond either side, then random instants within 3 hours of a bound."""
    bounds = sorted({b for _, _, start, end in DAYS for b in (start, end)})
    for b in bounds:
        yield from (b - timedelta(microseconds=1), b, b + timedelta(microseconds=1))
    rng = random.Random(seed)
    for _ in range(n):
        yield rng.choice(bounds) + timedelta(seconds=rng.uniform(-3 * 3600, 3 * 3600))
    # and the middle of each day
    for _, _, start, end in DAYS:
        yield start + (end - start) / 2


def calls(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "provider": "openai",
            "model": rng.choice(("gpt-4o", "gpt-4o-mini")),
            "input_tokens": rng.randint(0, 4000),
            "output_tokens": rng.randint(0, 900),
            "cost_usd": Decimal(rng.randint(0, 90_000)) / 1_000_000,
            "organization_id": rng.choice(TENANTS),
            "customer_id": f"c{rng.randint(1, 4)}",
            "request_id": f"daily-{seed}-{i}",
            "created_at": at,
        }
        for i, at in enumerate(instants(seed, n))
    ]


async def raw_scan(engine: AsyncEngine, tenant: str, start: datetime, end: datetime) -> Decimal:
    async with engine.connect() as conn:
        value = await conn.scalar(
            text(
                "SELECT coalesce(sum(cost_usd), 0) FROM ai_calls "
                "WHERE organization_id = :t AND created_at >= :s AND created_at < :e"
            ),
            {"t": tenant, "s": start, "e": end},
        )
    return Decimal(value)


async def unfolded(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM ai_call_usage_deltas), (SELECT count(*) FROM ai_call_pending_batches)"
                )
            )
        ).one()
    return int(row[0]), int(row[1])


async def assert_every_day_equals_a_raw_scan(engine: AsyncEngine, logger: AICallLogger) -> None:
    for zone, day, start, end in DAYS:
        window = tenant_day("acme-corp", day, zone)
        assert (window.start, window.end) == (start, end), zone
        for tenant in ("acme-corp", "globex", "nobody"):
            expected = await raw_scan(engine, tenant, start, end)
            got = await get_tenant_daily_cost(engine, tenant, day, time_zone=zone)
            assert got == expected, (zone, day, tenant)
            assert type(got) is Decimal
            assert await logger.get_tenant_daily_cost(tenant, day, time_zone=zone) == expected


async def test_a_day_in_utc_new_york_across_dst_and_kolkata_equals_a_raw_scan(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    rows = calls(seed=15, n=900)
    third = len(rows) // 3
    # Folded (batches), then per-call deltas, then batches still pending: all three kinds at once.
    await logger.log_batch(rows[:third])
    assert await logger.fold_rollups() == third
    for row in rows[third : third + 150]:
        await logger.log_call(**row)
    await logger.log_batch(rows[third + 150 :])
    deltas, pending = await unfolded(engine)
    assert deltas > 0 and pending == 1
    # The fixture holds calls on both sides of every bound, for both tenants: a wrong edge shows.
    for _, _, start, end in DAYS:
        assert await raw_scan(engine, "acme-corp", start, end) > 0
    await assert_every_day_equals_a_raw_scan(engine, logger)
    await fold_rollups(engine)
    assert await unfolded(engine) == (0, 0)
    await assert_every_day_equals_a_raw_scan(engine, logger)


async def test_calls_at_the_edges_of_a_kolkata_day_count_on_the_right_day(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    base: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1,
        "output_tokens": 1,
        "organization_id": "acme-corp",
    }
    edges = [  # (UTC instant, cost): the local day 2026-03-08 is [03-07 18:30Z, 03-08 18:30Z)
        (datetime(2026, 3, 7, 18, 29, 59, 999999, tzinfo=U), Decimal("1")),  # 03-07 23:59:59.999999 IST
        (datetime(2026, 3, 7, 18, 30, tzinfo=U), Decimal("0.02")),  # 03-08 00:00 IST
        (datetime(2026, 3, 7, 18, 59, tzinfo=U), Decimal("0.0003")),  # first partial UTC hour
        (datetime(2026, 3, 8, 6, 0, tzinfo=U), Decimal("0.000004")),  # a whole UTC hour inside
        (datetime(2026, 3, 8, 18, 0, tzinfo=U), Decimal("0.05")),  # last partial UTC hour
        (datetime(2026, 3, 8, 18, 30, tzinfo=U), Decimal("6")),  # 03-09 00:00 IST
    ]
    for i, (at, cost) in enumerate(edges):
        await logger.log_call(**base, created_at=at, cost_usd=cost, request_id=f"edge-{i}")
    await logger.fold_rollups()
    day = Decimal("0.020304") + Decimal("0.05")
    assert await get_tenant_daily_cost(engine, "acme-corp", date(2026, 3, 8), time_zone="Asia/Kolkata") == day
    assert await get_tenant_daily_cost(engine, "acme-corp", date(2026, 3, 7), time_zone="Asia/Kolkata") == 1
    assert await get_tenant_daily_cost(engine, "acme-corp", date(2026, 3, 9), time_zone="Asia/Kolkata") == 6
    # In UTC the same calls split differently: 03-07 has the first three.
    assert await get_tenant_daily_cost(engine, "acme-corp", date(2026, 3, 7)) == Decimal("1.0203")
    # An aware datetime means its local date: 2026-03-08 03:00Z is 08:30 on 03-08 in Kolkata.
    at = datetime(2026, 3, 8, 3, tzinfo=U)
    assert await get_tenant_daily_cost(engine, "acme-corp", at, time_zone="Asia/Kolkata") == day


async def test_today_is_the_default_day(engine: AsyncEngine, logger: AICallLogger) -> None:
    zone = "Pacific/Auckland"
    before = tenant_day("acme-corp", None, zone)
    await logger.log_call(
        provider="openai", model="gpt-4o", input_tokens=1, output_tokens=1, cost_usd=Decimal("0.123456"),
        organization_id="acme-corp", request_id="today",
    )  # fmt: skip
    got = await get_tenant_daily_cost(engine, "acme-corp", time_zone=zone)
    after = tenant_day("acme-corp", None, zone)
    assert got == Decimal("0.123456") or before != after  # unless local midnight passed meanwhile
    assert before.end - before.start >= timedelta(hours=23)


async def test_bad_arguments_are_refused_before_any_query(engine: AsyncEngine) -> None:
    with pytest.raises(ValidationError, match="time_zone"):
        await get_tenant_daily_cost(engine, "acme-corp", date(2026, 3, 8), time_zone="Mars/Olympus")
    with pytest.raises(ValidationError, match="tenant_id"):
        await get_tenant_daily_cost(engine, "", date(2026, 3, 8))
    with pytest.raises(ValidationError, match="tenant_id"):
        await get_tenant_daily_cost(engine, None, date(2026, 3, 8))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="timezone-aware"):
        await get_tenant_daily_cost(engine, "acme-corp", datetime(2026, 3, 8))  # noqa: DTZ001
    with pytest.raises(ValidationError, match="date"):
        await get_tenant_daily_cost(engine, "acme-corp", "2026-03-08")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="out of range"):
        await get_tenant_daily_cost(engine, "acme-corp", date.max, time_zone="Asia/Kolkata")


def _index_scans(plan: dict[str, Any], table: str) -> list[str]:
    """The index names of every index (only / bitmap) scan of `table` in an EXPLAIN JSON plan."""
    found = []
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if "Index Name" in node and node.get("Relation Name", table) == table:
            found.append(node["Index Name"])
    return found


async def _plan(raw: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    out = await raw.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    # json arrives decoded where the connection has a codec for it (ours do), else as text.
    plan: dict[str, Any] = (json.loads(out) if isinstance(out, str) else out)[0]["Plan"]
    return plan


@pytest.mark.parametrize("column", ["organization_id", "customer_id", "product_id"])
async def test_per_scope_reads_of_the_hourly_rollup_use_the_scope_index(
    connection: AsyncConnection, column: str
) -> None:
    # 60 days x 24 hours x 40 values of each scope: 57,600 rollup rows, analysed.
    await connection.execute(
        text(
            "INSERT INTO ai_call_usage_hourly (hour, provider, model, organization_id, customer_id, product_id, "
            "environment, calls, error_calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
            "reasoning_tokens, total_tokens, cost_usd, latency_ms_sum, latency_count) "
            "SELECT timestamptz '2026-01-01 00:00Z' + h * interval '1 hour', 'openai', 'gpt-4o', 'org-' || v, "
            "'cust-' || v, 'prod-' || v, 'production', 1, 0, 1, 1, 0, 0, 0, 2, 0.01, 0, 0 "
            "FROM generate_series(0, 60 * 24 - 1) h, generate_series(1, 40) v"
        )
    )
    await connection.execute(text("ANALYZE ai_call_usage_hourly"))
    raw = (await connection.get_raw_connection()).driver_connection
    assert isinstance(raw, asyncpg.Connection)
    value = {"organization_id": "org-7", "customer_id": "cust-7", "product_id": "prod-7"}[column]
    # An organization's range is the unique key's prefix (revision 0025: the tenant leads it).
    index = (
        "uq_ai_call_usage_hourly_key"
        if column == "organization_id"
        else f"ix_ai_call_usage_hourly_{column}_hour"
    )
    start, end = datetime(2026, 2, 1, tzinfo=U), datetime(2026, 2, 2, tzinfo=U)
    # The shape of a cost alert's read of one scope's window (alerts.py), by the planner's own choice.
    per_scope = (
        f"SELECT sum(x.cost_usd) FROM ai_call_usage_hourly x WHERE x.{column} = $1"
        " AND x.hour >= $2 AND x.hour < $3"
    )
    assert index in _index_scans(await _plan(raw, per_scope, value, start, end), "ai_call_usage_hourly")
    if column == "organization_id":
        day = tenant_day("org-7", date(2026, 2, 1), "Asia/Kolkata")
        assert index in _index_scans(await _plan(raw, DAILY_COST, *day.arguments), "ai_call_usage_hourly")
        got = await raw.fetchval(DAILY_COST, *day.arguments)
        assert got == Decimal(
            "0.23"
        )  # the 23 whole UTC hours inside the day; its two half hours are in no ledger
