"""Seed 001's `usage` rollups kept by `Quotas.settle` (revision 0017): counted once in the
statement that settles, on the user's local dates, untouched by a manual counter reset, and equal
to `Quotas.rebuild_usage` after a concurrent load across a period boundary."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence import quotas_sql
from persistence.errors import InvalidRequestError
from persistence.quotas import _USAGE_LOCK_CLASS, QuotaLimits, Quotas, UsageRow

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
# Europe/Paris's April starts here (CEST, UTC+2): 23:59 on 31 March in UTC is already 1 April there.
PARIS_APRIL = datetime(2026, 3, 31, 22, tzinfo=UTC)
UNLIMITED = QuotaLimits(requests=None, tokens=None)

UsageKey = tuple[str, str, date]
UsageValue = tuple[date, int, int, Decimal]

_ROWS = """
SELECT user_id, period, period_start, period_end, requests_count, tokens_used, cost_usd
FROM usage WHERE company_id = :c ORDER BY user_id, period, period_start
"""


async def _usage(conn: AsyncConnection, company: str = "acme") -> dict[UsageKey, UsageValue]:
    rows = await conn.execute(text(_ROWS), {"c": company})
    return {
        (r.user_id, r.period, r.period_start): (r.period_end, r.requests_count, r.tokens_used, r.cost_usd)
        for r in rows
    }


async def _engine_usage(engine: AsyncEngine, company: str = "acme") -> dict[UsageKey, UsageValue]:
    async with engine.connect() as conn:
        return await _usage(conn, company)


async def test_settle_files_usage_once_on_the_users_local_dates(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "u1", limits=UNLIMITED, time_zone="Europe/Paris")
    late = PARIS_APRIL + timedelta(minutes=30)  # 31 March in UTC, 1 April in Paris
    a = await quotas.admit("acme", "u1", prompt_tokens=10, max_tokens=90, cost_usd=Decimal("0.5"), now=late)
    assert a.reservation is not None
    # Settled the next day: the admission instant files it (the period whose counter held it).
    assert await quotas.settle(
        a.reservation, tokens=70, cost_usd=Decimal("0.25"), now=late + timedelta(days=1)
    )
    assert not await quotas.settle(a.reservation, tokens=70, cost_usd=Decimal("0.25"))
    assert not await quotas.release(a.reservation)
    released = await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=late)
    assert released.reservation is not None and await quotas.release(released.reservation)
    # No user: UTC dates, user_id ''.
    b = await quotas.admit("acme", None, prompt_tokens=1, max_tokens=1, cost_usd=Decimal(1), now=late)
    assert b.reservation is not None
    assert await quotas.settle(b.reservation, tokens=3, cost_usd=Decimal("0.125"), requests=2)

    assert await _usage(connection) == {
        ("", "daily", date(2026, 3, 31)): (date(2026, 3, 31), 2, 3, Decimal("0.125")),
        ("", "monthly", date(2026, 3, 1)): (date(2026, 3, 31), 2, 3, Decimal("0.125")),
        ("u1", "daily", date(2026, 4, 1)): (date(2026, 4, 1), 1, 70, Decimal("0.25")),
        ("u1", "monthly", date(2026, 4, 1)): (date(2026, 4, 30), 1, 70, Decimal("0.25")),
    }
    zones = await connection.execute(text("SELECT state, usage_time_zone FROM quota_reservations"))
    assert {tuple(z) for z in zones} == {("settled", "Europe/Paris"), ("settled", "UTC"), ("released", None)}
    # The report reads the row of the user's local day/month containing `now`; the user-less row is
    # not a user's.
    assert await quotas.usage_report("acme", period="daily", now=late) == [
        UsageRow("u1", "daily", date(2026, 4, 1), date(2026, 4, 1), 1, 70, Decimal("0.25"))
    ]
    assert await quotas.usage_report("acme", now=PARIS_APRIL - timedelta(seconds=1)) == []


async def test_a_manual_reset_leaves_the_usage_report_unchanged(engine: AsyncEngine) -> None:
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "u1", limits=QuotaLimits(100, 150_000))
    for tokens in (40_000, 80_000):
        a = await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(1), now=T0)
        assert a.reservation is not None
        await quotas.settle(a.reservation, tokens=tokens, cost_usd=Decimal("0.75"), now=T0)
    report = await quotas.usage_report("acme", now=T0)
    tiers = await quotas.tier_analysis("acme")
    assert report == [
        UsageRow("u1", "monthly", date(2026, 3, 1), date(2026, 3, 31), 2, 120_000, Decimal("1.5"))
    ]
    assert [(t.max_tokens, t.recommended_tier) for t in tiers] == [(120_000, "standard")]

    for counter in await quotas.counters("acme", "u1", now=T0):
        outcome = await quotas.reset(counter, requested_by="alice", reason="goodwill")
        assert outcome.applied
    assert {c.used for c in await quotas.counters("acme", "u1", now=T0)} == {Decimal(0)}
    # The quota has its room back; the billing usage is what was used.
    assert await quotas.usage_report("acme", now=T0) == report
    assert await quotas.tier_analysis("acme") == tiers


async def test_usage_arguments_are_checked_before_any_sql(engine: AsyncEngine) -> None:
    quotas = Quotas(engine)
    with pytest.raises(InvalidRequestError):
        await quotas.usage_report("acme", period="hourly")
    with pytest.raises(InvalidRequestError):
        await quotas.rebuild_usage("acme", T0, T0 + timedelta(days=1))
    with pytest.raises(InvalidRequestError):
        await quotas.rebuild_usage("acme", date(2026, 3, 2), date(2026, 3, 2))


async def test_a_rebuild_restores_a_damaged_window_and_only_it(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    quotas = Quotas(engine)
    for moment in (T0, T0 + timedelta(days=1), T0 + timedelta(days=30)):
        a = await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=moment)
        assert a.reservation is not None
        await quotas.settle(a.reservation, tokens=5, cost_usd=Decimal("0.01"), now=moment)
    kept = await _usage(connection)
    assert len(kept) == 5  # 14 and 15 March, 13 April, March, April
    await connection.execute(text("UPDATE usage SET tokens_used = 0, requests_count = 9"))
    await connection.execute(
        text(
            "INSERT INTO usage (company_id, user_id, period, period_start, period_end) "
            "VALUES ('acme', 'ghost', 'daily', '2026-03-20', '2026-03-20')"
        )
    )
    # March's two days and March's month (April's rows start after the window: left as they are).
    assert await quotas.rebuild_usage("acme", date(2026, 3, 1), date(2026, 4, 1)) == 3
    april = {("u1", "daily", date(2026, 4, 13)), ("u1", "monthly", date(2026, 4, 1))}
    assert await _usage(connection) == {
        key: (value[0], 9, 0, value[3]) if key in april else value for key, value in kept.items()
    }


# -- exact under concurrency, across a period boundary -------------------------------------------

CLIENTS = 8
PER_CLIENT = 40


@pytest.mark.commits
async def test_incremental_usage_equals_a_rebuild_after_a_concurrent_load_across_a_boundary(
    engine: AsyncEngine,
) -> None:
    """8 clients admit and settle (or release, or settle twice) around Paris's 1 April, for two
    users with different zones and without a user, while rebuilds of the window run between them;
    the incremental rows equal what the settled work adds up to, and a final rebuild changes nothing."""
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "paris", limits=UNLIMITED, time_zone="Europe/Paris")
    await quotas.set_user_quota("acme", "tokyo", limits=UNLIMITED, time_zone="Asia/Tokyo")
    await quotas.set_company_quota("acme", "tokens", "monthly", 10**9, time_zone="Europe/Paris")
    zones = {"paris": "Europe/Paris", "tokyo": "Asia/Tokyo", "": "UTC"}
    expected: dict[UsageKey, list[int | Decimal]] = {}
    rng = random.Random(16)
    plan = [
        [
            (
                rng.choice(["paris", "tokyo", ""]),
                PARIS_APRIL + timedelta(minutes=rng.randint(-90, 90)),
                rng.randint(0, 500),
                Decimal(rng.randint(0, 10_000)) / 10_000,
                rng.random(),
            )
            for _ in range(PER_CLIENT)
        ]
        for _ in range(CLIENTS)
    ]

    def file(user: str, moment: datetime, tokens: int, cost: Decimal) -> None:
        day = moment.astimezone(ZoneInfo(zones[user])).date()
        for key in ((user, "daily", day), (user, "monthly", day.replace(day=1))):
            row = expected.setdefault(key, [0, 0, Decimal(0)])
            row[0] += 1
            row[1] += tokens
            row[2] += cost

    async def client(steps: list[tuple[str, datetime, int, Decimal, float]]) -> None:
        for user, moment, tokens, cost, dice in steps:
            a = await quotas.admit(
                "acme", user or None, prompt_tokens=1, max_tokens=1, cost_usd=cost, now=moment
            )
            assert a.reservation is not None
            settle_at = moment + timedelta(seconds=1)
            if dice < 0.2:
                assert await quotas.release(a.reservation, now=settle_at)
                continue
            assert await quotas.settle(a.reservation, tokens=tokens, cost_usd=cost, now=settle_at)
            file(user, moment, tokens, cost)
            if dice > 0.8:
                assert not await quotas.settle(a.reservation, tokens=tokens, cost_usd=cost, now=settle_at)

    async def rebuilder() -> int:
        rebuilds = 0
        while not all(task.done() for task in clients):
            await quotas.rebuild_usage("acme", date(2026, 3, 1), date(2026, 5, 1))
            rebuilds += 1
            await asyncio.sleep(0.01)
        return rebuilds

    clients = [asyncio.ensure_future(client(steps)) for steps in plan]
    rebuilds = await rebuilder()
    await asyncio.gather(*clients)
    assert rebuilds > 1

    want = {
        key: ((key[2] if key[1] == "daily" else _month_end(key[2])), n, tokens, cost)
        for key, (n, tokens, cost) in expected.items()
    }
    assert {k[2] for k in want if k[1] == "monthly"} == {date(2026, 3, 1), date(2026, 4, 1)}
    incremental = await _engine_usage(engine)
    assert incremental == want
    # Before any reset, a user's monthly row is their monthly counter (same zone, same instant).
    for moment, first in (
        (PARIS_APRIL - timedelta(microseconds=1), date(2026, 3, 1)),
        (PARIS_APRIL, date(2026, 4, 1)),
    ):
        counters = {
            c.metric: c.used for c in await quotas.counters("acme", "paris", now=moment) if c.scope == "user"
        }
        row = want[("paris", "monthly", first)]
        assert (counters["requests"], counters["tokens"], counters["cost_usd"]) == row[1:]
    await quotas.rebuild_usage("acme", date(2026, 3, 1), date(2026, 5, 1))
    assert await _engine_usage(engine) == incremental


def _month_end(first: date) -> date:
    following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return following - timedelta(days=1)


@pytest.mark.commits
async def test_a_rebuild_waits_for_a_settlement_in_flight_and_counts_it_once(engine: AsyncEngine) -> None:
    """The settling statement holds the company's usage lock shared until its transaction ends, so
    a rebuild (exclusive) sees all of that settlement or none of it."""
    quotas = Quotas(engine)
    done = await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
    open_ = await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
    assert done.reservation is not None and open_.reservation is not None
    await quotas.settle(done.reservation, tokens=5, cost_usd=Decimal("0.5"), now=T0)
    async with engine.connect() as conn, engine.connect() as probe:
        raw = (await conn.get_raw_connection()).driver_connection
        assert isinstance(raw, asyncpg.Connection)
        settling = raw.transaction()
        await settling.start()
        args = (Decimal(1), Decimal(7), Decimal("0.25"), "settled", T0, _USAGE_LOCK_CLASS)
        assert await raw.fetchval(quotas_sql.FINISH, "acme", open_.reservation.id, *args)  # counted
        rebuild = asyncio.ensure_future(quotas.rebuild_usage("acme", date(2026, 3, 1), date(2026, 4, 1)))
        waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        for _ in range(1000):  # until the rebuild queues for the lock (a state, not a time limit)
            if await probe.scalar(waiting):
                break
            await asyncio.sleep(0.01)
        assert await probe.scalar(waiting) == 1 and not rebuild.done()
        await settling.commit()
    assert await rebuild == 2
    assert (await _engine_usage(engine))[("u1", "monthly", date(2026, 3, 1))] == (
        date(2026, 3, 31),
        2,
        12,
        Decimal("0.75"),
    )
