"""Quotas: one-statement all-or-nothing admission, idempotent settlement, leases, periods as rows,
compare-and-swap resets, and seed 001's quota queries (`persistence.quotas`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.errors import InvalidRequestError, NotFoundError, PersistenceError
from persistence.quotas import TIERS, QuotaLimits, Quotas, Reservation

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
NAIVE = T0.replace(tzinfo=None)
UNLIMITED = QuotaLimits(requests=None, tokens=None)

README = Path(__file__).resolve().parents[1] / "README.md"


def _d(used: int | Decimal, held: int | Decimal) -> tuple[Decimal, Decimal]:
    return Decimal(used), Decimal(held)


async def _counter_rows(
    conn: AsyncConnection, company: str
) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    rows = await conn.execute(
        text("SELECT scope, metric, used, held FROM quota_counters WHERE company_id = :c"), {"c": company}
    )
    return {(r.scope, r.metric): (r.used, r.held) for r in rows}


async def test_admit_reserves_on_every_limit_and_settle_replaces_it(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "u1", limits=QuotaLimits(10, 1000, Decimal("5")))
    await quotas.set_company_quota("acme", "tokens", "daily", 5000)
    admission = await quotas.admit(
        "acme", "u1", prompt_tokens=100, max_tokens=200, cost_usd=Decimal("0.5"), now=T0
    )
    assert admission.admitted and admission.reservation is not None
    assert {(lim.scope, lim.metric) for lim in admission.limits} == {
        ("user", "requests"),
        ("user", "tokens"),
        ("user", "cost_usd"),
        ("company", "tokens"),
    }
    rows = await _counter_rows(connection, "acme")
    assert rows[("user", "tokens")] == _d(0, 300)
    assert rows[("company", "tokens")] == _d(0, 300)
    assert rows[("user", "cost_usd")] == _d(0, Decimal("0.5"))
    assert await quotas.settle(admission.reservation, tokens=120, cost_usd=Decimal("0.2"), now=T0)
    assert not await quotas.settle(admission.reservation, tokens=120, cost_usd=Decimal("0.2"), now=T0)
    assert not await quotas.release(admission.reservation, now=T0)
    rows = await _counter_rows(connection, "acme")
    assert rows[("user", "tokens")] == _d(120, 0)
    assert rows[("company", "tokens")] == _d(120, 0)
    assert rows[("user", "requests")] == _d(1, 0)
    assert rows[("user", "cost_usd")] == _d(Decimal("0.2"), 0)


async def test_a_refusal_by_one_limit_consumes_none_of_the_others(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "u1", limits=QuotaLimits(10, 250))
    await quotas.set_company_quota("acme", "requests", "daily", 100)
    await quotas.set_company_quota("acme", "cost_usd", "monthly", Decimal("9.99"), time_zone="Europe/Paris")
    refused = await quotas.admit("acme", "u1", prompt_tokens=100, max_tokens=200, cost_usd=Decimal(1), now=T0)
    assert not refused.admitted and refused.reservation is None
    assert [(lim.scope, lim.metric) for lim in refused.refused_by] == [("user", "tokens")]
    (tokens,) = refused.refused_by
    assert (tokens.limit, tokens.in_use, tokens.requested) == (Decimal(250), Decimal(0), Decimal(300))
    # Monthly in UTC: the user's token limit has room again when March ends.
    assert refused.retry_at == datetime(2026, 4, 1, tzinfo=UTC)
    rows = await _counter_rows(connection, "acme")
    assert all(value == _d(0, 0) for value in rows.values()), rows
    assert await connection.scalar(text("SELECT count(*) FROM quota_reservations")) == 0
    assert await connection.scalar(text("SELECT count(*) FROM quota_holds")) == 0


async def test_company_limits_apply_without_a_user_and_periods_follow_the_time_zone(
    engine: AsyncEngine,
) -> None:
    quotas = Quotas(engine)
    await quotas.set_company_quota("acme", "requests", "daily", 1, time_zone="America/New_York")
    first = await quotas.admit("acme", None, prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
    assert first.admitted
    (limit,) = first.limits
    # 12:00 UTC on 14 March 2026 is 08:00 EDT: that day runs from 04:00 UTC to 04:00 UTC.
    assert (limit.period_start, limit.period_end) == (
        datetime(2026, 3, 14, 4, tzinfo=UTC),
        datetime(2026, 3, 15, 4, tzinfo=UTC),
    )
    again = await quotas.admit("acme", None, prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
    assert not again.admitted and again.retry_at == datetime(2026, 3, 15, 4, tzinfo=UTC)
    # No job: the next local day is a new row with room.
    tomorrow = datetime(2026, 3, 15, 4, tzinfo=UTC)
    assert (
        await quotas.admit("acme", None, prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=tomorrow)
    ).admitted


async def test_an_expired_lease_frees_its_hold_at_the_next_admission(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "u1", limits=QuotaLimits(1, None))
    lease = timedelta(minutes=1)
    crashed = await quotas.admit(
        "acme", "u1", prompt_tokens=0, max_tokens=0, cost_usd=Decimal(0), lease=lease, now=T0
    )
    assert crashed.reservation is not None
    before = await quotas.admit(
        "acme", "u1", prompt_tokens=0, max_tokens=0, cost_usd=Decimal(0), now=T0 + timedelta(seconds=59)
    )
    assert not before.admitted
    after = await quotas.admit(
        "acme", "u1", prompt_tokens=0, max_tokens=0, cost_usd=Decimal(0), now=T0 + timedelta(seconds=61)
    )
    assert after.admitted and after.reservation is not None
    assert await _counter_rows(connection, "acme") == {
        ("user", "requests"): _d(0, 1),
        ("user", "tokens"): _d(0, 0),
        ("user", "cost_usd"): _d(0, 0),
    }
    # The crashed caller comes back: its work happened, so it counts, but its hold is not freed twice.
    assert await quotas.settle(crashed.reservation, tokens=5, cost_usd=Decimal(0))
    assert await quotas.release(after.reservation)
    assert await _counter_rows(connection, "acme") == {
        ("user", "requests"): _d(1, 0),
        ("user", "tokens"): _d(5, 0),
        ("user", "cost_usd"): _d(0, 0),
    }


async def test_arguments_are_checked_before_any_sql(engine: AsyncEngine) -> None:
    quotas = Quotas(engine)
    with pytest.raises(InvalidRequestError):
        await quotas.admit("acme", "u1", prompt_tokens=-1, max_tokens=0, cost_usd=Decimal(0))
    with pytest.raises(InvalidRequestError):
        await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=0, cost_usd=Decimal("NaN"))
    with pytest.raises(InvalidRequestError):
        await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=0, cost_usd=Decimal(0), now=NAIVE)
    with pytest.raises(InvalidRequestError):
        await quotas.set_company_quota("acme", "dollars", "daily", 1)
    with pytest.raises(NotFoundError):
        await quotas.settle(
            Reservation("acme", __import__("uuid").uuid4(), T0), tokens=1, cost_usd=Decimal(0)
        )


async def test_tier_defaults_are_seed_001s_ceilings(engine: AsyncEngine, connection: AsyncConnection) -> None:
    await Quotas(engine).set_user_quota("acme", "u1", tier="standard")
    row = (await connection.execute(text("SELECT tier, request_limit, token_limit FROM quotas"))).one()
    assert tuple(row) == ("standard", TIERS["standard"].requests, 1_000_000)


# -- must-show 1 and 2: real concurrency on separate connections ------------------------------------

CLIENTS = 16
ATTEMPTS = 500


@pytest.mark.commits
@pytest.mark.stress
@pytest.mark.parametrize("metric", ["requests", "tokens", "cost_usd"])
async def test_16_clients_x_500_attempts_admit_exactly_1000(engine: AsyncEngine, metric: str) -> None:
    """Limit 1,000 units of `metric` for the user AND the company; every other limit is generous but
    still reserved against, so it shows that the 7,000 refusals consumed nothing anywhere."""
    quotas = Quotas(engine)
    big = 10**9
    unit = Decimal("0.01")  # one cost unit
    user_limits = QuotaLimits(
        requests=1000 if metric == "requests" else big,
        tokens=1000 if metric == "tokens" else big,
        cost_usd=Decimal(10) if metric == "cost_usd" else Decimal(big),
    )
    await quotas.set_user_quota("acme", "u1", limits=user_limits)
    await quotas.set_company_quota("acme", metric, "monthly", Decimal(10) if metric == "cost_usd" else 1000)
    other = "tokens" if metric != "tokens" else "requests"
    await quotas.set_company_quota("acme", other, "daily", big)
    # Create the period's rows first, so the race is on the conditional update alone.
    await quotas.counters("acme", "u1", now=T0)

    async def client() -> list[Reservation]:
        won = []
        for _ in range(ATTEMPTS):
            a = await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=0, cost_usd=unit, now=T0)
            if a.admitted:
                assert a.reservation is not None
                won.append(a.reservation)
            else:
                assert [(lim.scope, lim.metric) for lim in a.refused_by] in (
                    [("user", metric)],
                    [("company", metric)],
                    [("user", metric), ("company", metric)],
                )
        return won

    results = await asyncio.gather(*(client() for _ in range(CLIENTS)))
    won = [r for rs in results for r in rs]
    assert len(won) == 1000
    held = {(c.scope, c.metric): (c.used, c.held) for c in await quotas.counters("acme", "u1", now=T0)}
    assert held[("user", "requests")] == _d(0, 1000)
    assert held[("user", "tokens")] == _d(0, 1000)
    assert held[("user", "cost_usd")] == _d(0, Decimal(10))
    assert held[("company", metric)] == _d(0, 1000 if metric != "cost_usd" else Decimal(10))
    assert held[("company", other)] == _d(0, 1000)

    # Settling concurrently (each twice) counts every reservation once.
    async def settler(part: list[Reservation]) -> int:
        return sum([await quotas.settle(r, tokens=1, cost_usd=unit, now=T0) for r in part + part])

    counted = await asyncio.gather(*(settler(won[i::CLIENTS]) for i in range(CLIENTS)))
    assert sum(counted) == 1000
    used = {(c.scope, c.metric): (c.used, c.held) for c in await quotas.counters("acme", "u1", now=T0)}
    assert used[("user", "tokens")] == _d(1000, 0)
    assert used[("company", other)] == _d(1000, 0)


@pytest.mark.commits
async def test_a_period_boundary_crossed_under_load_loses_no_usage(engine: AsyncEngine) -> None:
    """Monthly in Europe/Paris: April starts at 2026-03-31T22:00Z. 16 clients admit and settle
    across it; every unit lands in exactly one period's row and the new month starts from zero."""
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "u1", limits=UNLIMITED, time_zone="Europe/Paris")
    await quotas.set_company_quota("acme", "tokens", "monthly", 10**9, time_zone="Europe/Paris")
    boundary = datetime(2026, 3, 31, 22, tzinfo=UTC)
    per_client = 40

    async def client(n: int) -> int:
        settled = 0
        for i in range(per_client):
            moment = boundary + timedelta(milliseconds=(i - per_client // 2) * 10 + n)
            a = await quotas.admit(
                "acme", "u1", prompt_tokens=3, max_tokens=4, cost_usd=Decimal(0), now=moment
            )
            assert a.admitted and a.reservation is not None
            settled += await quotas.settle(a.reservation, tokens=5, cost_usd=Decimal(0), now=moment)
        return settled

    assert sum(await asyncio.gather(*(client(n) for n in range(CLIENTS)))) == CLIENTS * per_client
    march = await quotas.counters("acme", "u1", now=boundary - timedelta(microseconds=1))
    april = await quotas.counters("acme", "u1", now=boundary)
    for scope, metric, per_request in (
        ("user", "requests", 1),
        ("user", "tokens", 5),
        ("company", "tokens", 5),
    ):
        before = next(c for c in march if (c.scope, c.metric) == (scope, metric))
        after = next(c for c in april if (c.scope, c.metric) == (scope, metric))
        assert before.period_end == after.period_start == boundary
        assert before.held == after.held == 0
        # Client n's attempt i is before the boundary iff (i - 20) * 10 + n < 0.
        march_requests = sum(1 for n in range(CLIENTS) for i in range(per_client) if (i - 20) * 10 + n < 0)
        assert before.used == march_requests * per_request
        assert before.used + after.used == CLIENTS * per_client * per_request


@pytest.mark.commits
async def test_two_admins_issuing_the_same_reset_apply_it_once(engine: AsyncEngine) -> None:
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "u1", limits=QuotaLimits(5, None))
    for _ in range(5):
        a = await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
        assert a.reservation is not None
        await quotas.settle(a.reservation, tokens=1, cost_usd=Decimal(0), now=T0)
    assert not (
        await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
    ).admitted
    (seen,) = [c for c in await quotas.counters("acme", "u1", now=T0) if c.metric == "requests"]
    outcomes = await asyncio.gather(
        quotas.reset(seen, requested_by="alice", reason="ticket 17"),
        quotas.reset(seen, requested_by="bob", reason="ticket 17"),
    )
    assert sorted(o.applied for o in outcomes) == [False, True]
    (now_,) = [c for c in await quotas.counters("acme", "u1", now=T0) if c.metric == "requests"]
    assert (now_.used, now_.version) == (Decimal(0), 1)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT requested_by, applied, previous_used, reason FROM rate_limit_resets ORDER BY id")
            )
        ).all()
    assert len(rows) == 2 and sum(r.applied for r in rows) == 1
    assert [r.previous_used for r in rows if r.applied] == [5]
    # The reset gave the period its room back; an override with the stale version is refused.
    assert (
        await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
    ).admitted
    assert not (await quotas.override(seen, 100, requested_by="carol", reason="stale")).applied
    assert (await quotas.override(now_, 1, requested_by="carol", reason="pause")).applied
    assert not (
        await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
    ).admitted


# -- rolling windows -------------------------------------------------------------------------------


async def test_a_rolling_window_frees_room_as_its_oldest_usage_leaves_it(engine: AsyncEngine) -> None:
    quotas = Quotas(engine)
    await quotas.set_user_quota(
        "acme", "u1", limits=QuotaLimits(None, 100), reset_frequency="rolling", window=timedelta(hours=1)
    )
    start = datetime(2026, 3, 14, 12, 0, 30, tzinfo=UTC)  # in the 12:00 bucket (buckets: 1 minute)

    async def use(tokens: int, at: datetime) -> bool:
        a = await quotas.admit("acme", "u1", prompt_tokens=tokens, max_tokens=0, cost_usd=Decimal(0), now=at)
        if a.reservation is not None:
            await quotas.settle(a.reservation, tokens=tokens, cost_usd=Decimal(0), now=at)
        return a.admitted

    assert await use(60, start)
    assert await use(30, start + timedelta(minutes=30))
    refused = await quotas.admit(
        "acme", "u1", prompt_tokens=20, max_tokens=0, cost_usd=Decimal(0), now=start + timedelta(minutes=40)
    )
    assert not refused.admitted
    (limit,) = refused.refused_by
    assert (limit.period, limit.used, limit.held) == ("rolling", Decimal(90), Decimal(0))
    # The 60 tokens of the 12:00 bucket leave the window at 13:00; the 30 of 12:30 are still in it.
    assert refused.retry_at == datetime(2026, 3, 14, 13, 0, tzinfo=UTC)
    assert not await use(20, datetime(2026, 3, 14, 12, 59, 59, tzinfo=UTC))
    assert await use(20, datetime(2026, 3, 14, 13, 0, tzinfo=UTC))
    remaining = await quotas.remaining_tokens(
        "acme", "u1", reset_frequency="rolling", now=datetime(2026, 3, 14, 13, 0, tzinfo=UTC)
    )
    assert remaining is not None and (remaining.used, remaining.remaining) == (50, 50)
    too_big = await quotas.admit(
        "acme", "u1", prompt_tokens=101, max_tokens=0, cost_usd=Decimal(0), now=start
    )
    assert not too_big.admitted and too_big.retry_at is None


async def test_a_rolling_window_needs_whole_minutes(engine: AsyncEngine) -> None:
    quotas = Quotas(engine)
    with pytest.raises(InvalidRequestError):
        await quotas.set_company_quota("acme", "tokens", "rolling", 1, window=timedelta(seconds=90))
    with pytest.raises(InvalidRequestError):
        await quotas.set_company_quota("acme", "tokens", "rolling", 1)
    with pytest.raises(InvalidRequestError):
        await quotas.set_company_quota("acme", "tokens", "daily", 1, window=timedelta(minutes=1))


@pytest.mark.commits
async def test_concurrent_admissions_over_many_buckets_of_a_rolling_window_are_exact(
    engine: AsyncEngine,
) -> None:
    """A 1-minute window (1-second buckets): 16 clients x 40 attempts spread over 20 s, limit 100
    tokens for the user and 100 requests for the company: exactly 100 admitted, whichever bucket."""
    quotas = Quotas(engine)
    minute = timedelta(minutes=1)
    await quotas.set_user_quota(
        "acme", "u1", limits=QuotaLimits(None, 100), reset_frequency="rolling", window=minute
    )
    await quotas.set_company_quota("acme", "requests", "rolling", 100, window=minute)

    async def client(n: int) -> int:
        won = 0
        for i in range(40):
            at = T0 + timedelta(milliseconds=500 * i + 7 * n)
            a = await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=0, cost_usd=Decimal(0), now=at)
            won += a.admitted
        return won

    assert sum(await asyncio.gather(*(client(n) for n in range(CLIENTS)))) == 100
    async with engine.connect() as conn:
        held = (
            await conn.execute(
                text(
                    "SELECT scope, metric, sum(held) FROM quota_counters WHERE period = 'rolling' GROUP BY 1, 2"
                )
            )
        ).all()
    assert {(r[0], r[1]): r[2] for r in held} == {
        ("user", "requests"): 100,
        ("user", "tokens"): 100,
        ("user", "cost_usd"): 0,
        ("company", "requests"): 100,
    }


@pytest.mark.commits
async def test_a_bucket_created_after_an_admissions_snapshot_is_not_missed(engine: AsyncEngine) -> None:
    """Admission S takes its snapshot, then waits for a row lock; meanwhile C creates a new bucket
    of the company's rolling window and fills the limit in it. S must not decide on a view without
    that bucket: the anchor's version tells it to look again, and it refuses."""
    quotas = Quotas(engine)
    minute = timedelta(minutes=1)
    await quotas.set_user_quota("acme", "u1", limits=UNLIMITED)
    await quotas.counters("acme", "u1", now=T0)  # u1's monthly rows: the lowest ids, locked first
    await quotas.set_company_quota("acme", "requests", "rolling", 3, window=minute)
    # Buckets 12:00:00 and 12:00:02 exist (S's own bucket must exist, or S would look again anyway).
    for moment in (T0, T0 + timedelta(seconds=2)):
        admitted = await quotas.admit(
            "acme", "u2", prompt_tokens=0, max_tokens=0, cost_usd=Decimal(0), now=moment
        )
        assert admitted.admitted
    (first,) = [
        c for c in await quotas.counters("acme", "u1", now=T0) if c.metric == "requests" and c.scope == "user"
    ]
    async with engine.connect() as blocker:
        await blocker.execute(
            text("SELECT 1 FROM quota_counters WHERE id = :id FOR UPDATE"), {"id": first.id}
        )
        s = asyncio.create_task(
            quotas.admit(
                "acme",
                "u1",
                prompt_tokens=0,
                max_tokens=0,
                cost_usd=Decimal(0),
                now=T0 + timedelta(seconds=2),
            )
        )
        async with engine.connect() as probe:
            for _ in range(500):
                waiting = await probe.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
                await probe.rollback()
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting, "admission S never waited for the row lock"
        c = await quotas.admit(
            "acme", "u2", prompt_tokens=0, max_tokens=0, cost_usd=Decimal(0), now=T0 + timedelta(seconds=1)
        )
        assert c.admitted
        await blocker.rollback()
    refused = await s
    assert not refused.admitted
    assert [(lim.scope, lim.used + lim.held) for lim in refused.refused_by] == [("company", Decimal(3))]


async def test_the_readme_example_runs_as_written(engine: AsyncEngine) -> None:
    """README's "Quotas" block, as written (its top-level awaits inside a coroutine)."""
    section = README.read_text().split("## Quotas\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec("async def snippet(engine):\n" + "".join(f"    {line}\n" for line in code.splitlines()), namespace)  # noqa: S102 (our README)
    await namespace["snippet"](engine)
    async with engine.connect() as conn:
        settled = (
            await conn.execute(text("SELECT count(*) FROM quota_reservations WHERE state = 'settled'"))
        ).scalar()
        tokens = (await conn.execute(text("SELECT tokens_used FROM usage WHERE period = 'monthly'"))).scalar()
    assert settled == 1
    assert tokens == 1350


async def test_kept_connections_serve_every_call_until_closed(engine: AsyncEngine) -> None:
    async with Quotas(engine, connections=2) as quotas:
        await quotas.set_user_quota("acme", "u1", limits=QuotaLimits(5, 1000))
        admission = await quotas.admit(
            "acme", "u1", prompt_tokens=10, max_tokens=10, cost_usd=Decimal(0), now=T0
        )
        assert admission.reservation is not None
        assert await quotas.settle(admission.reservation, tokens=15, cost_usd=Decimal(0), now=T0)
    with pytest.raises(PersistenceError, match="Quotas is closed"):
        await quotas.admit("acme", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0), now=T0)
    with pytest.raises(InvalidRequestError):
        Quotas(engine, connections=-1)
