"""Rate limits: exact GCRA under concurrency, all-or-nothing, precedence, headers, concurrency leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import InvalidRequestError
from persistence.models import RateLimitConfig
from persistence.rate_limits import (
    ConcurrencyRefusal,
    ConcurrencySlot,
    RateDecision,
    RateLimit,
    RateLimiter,
    RateSubject,
    rate_limit_headers,
)

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
CLIENTS = 16
ATTEMPTS = 200

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
async def wide_engine(fresh_database: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    """A real engine on the test's own database with a pool for 16 concurrent clients."""
    engine = build_engine(fresh_database.model_copy(update={"pool_size": CLIENTS, "max_overflow": 2}))
    try:
        yield engine
    finally:
        await engine.dispose()


def per_day(scope: str, subject: str, metric: str, burst: int | str) -> RateLimit:
    """A limit of 1 unit a day with a large burst: nothing replenishes during a test run."""
    return RateLimit(scope, subject, metric, "day", Decimal(1), Decimal(burst))  # type: ignore[arg-type]


async def hammer(limiter: RateLimiter, company: str, charges: list[tuple[RateLimit, Decimal]]) -> int:
    async def client() -> int:
        admitted = 0
        for _ in range(ATTEMPTS):
            admitted += (await limiter.check(company, charges)).allowed
        return admitted

    return sum(await asyncio.gather(*(client() for _ in range(CLIENTS))))


# -- exactness under concurrency (real commits, 16 connections) ----------------------------------


@pytest.mark.commits
@pytest.mark.parametrize("durable", [True, False], ids=["durable", "async-commit"])
async def test_concurrent_clients_admit_exactly_the_burst_on_one_counter(
    wide_engine: AsyncEngine, durable: bool
) -> None:
    limit = per_day("key", "key-1", "requests", 1000)
    async with RateLimiter(wide_engine, connections=CLIENTS, durable=durable) as limiter:
        admitted = await hammer(limiter, "acme", [(limit, Decimal(1))])
    assert admitted == 1000  # 3,200 attempts, created concurrently on first use


@pytest.mark.commits
async def test_several_limits_at_once_are_all_or_nothing_under_concurrency(wide_engine: AsyncEngine) -> None:
    # requests for the user (1,000), tokens (7,000 = 700 requests of 10) and cost (USD 9 = 900 of 0.01)
    # for the company: tokens refuse first, and a refused request consumes no request or cost.
    charges = [
        (per_day("user", "u-1", "requests", 1000), Decimal(1)),
        (per_day("company", "acme", "tokens", 7000), Decimal(10)),
        (RateLimit("company", "acme", "cost_usd", "day", Decimal("0.01"), Decimal(9)), Decimal("0.01")),
    ]
    async with RateLimiter(wide_engine, connections=CLIENTS) as limiter:
        admitted = await hammer(limiter, "acme", charges)
        assert admitted == 700
        after = await limiter.check("acme", [charges[0], charges[2]])
    assert after.allowed
    statuses = {s.limit.metric: s.remaining for s in after.statuses}
    assert statuses == {"requests": 1000 - 701, "cost_usd": Decimal("1.99")}  # 700 + this one, nothing else


@pytest.mark.commits
async def test_concurrent_acquires_take_exactly_the_concurrency_limit(wide_engine: AsyncEngine) -> None:
    async with RateLimiter(wide_engine, connections=CLIENTS) as limiter:
        got = await asyncio.gather(
            *(
                limiter.acquire("acme", "user", "u-1", 5, lease=timedelta(minutes=5))
                for _ in range(CLIENTS * 4)
            )
        )
    slots = [g for g in got if isinstance(g, ConcurrencySlot)]
    assert sorted(s.slot for s in slots) == [0, 1, 2, 3, 4]


@pytest.mark.commits
async def test_asynchronous_commit_is_local_to_the_decisions_own_transaction(engine: AsyncEngine) -> None:
    limit = RateLimit("key", "k", "requests", "minute", Decimal(10))
    async with RateLimiter(engine, connections=1) as limiter:
        async with limiter._leases.connection() as raw:  # the one connection decisions run on
            await raw.execute("SET synchronous_commit = on")  # the session's own setting
            async with raw.transaction():  # the decision's statement, seen from inside its transaction
                await raw.fetchrow(limiter._single, None, "acme", *limit.key, limit.interval, limit.interval)
                assert await raw.fetchval("SHOW synchronous_commit") == "off"
            assert await raw.fetchval("SHOW synchronous_commit") == "on"
        assert (await limiter.check("acme", [(limit, 1)])).allowed
        async with limiter._leases.connection() as raw:
            assert await raw.fetchval("SHOW synchronous_commit") == "on"  # other work on it stays durable
            assert await raw.fetchval("SELECT count(*) FROM rate_limit_state") == 1  # committed


# -- GCRA semantics on an injected clock (rolled-back tests) -------------------------------------


async def test_a_refused_request_consumes_nothing(engine: AsyncEngine) -> None:
    limit = RateLimit("key", "k", "tokens", "minute", Decimal(10))  # one token every 6 s, burst 10
    async with RateLimiter(engine) as limiter:
        first = await limiter.check("acme", [(limit, 8)], now=T0)
        assert (first.allowed, first.remaining, first.reset) == (True, Decimal(2), timedelta(seconds=48))
        refused = await limiter.check("acme", [(limit, 5)], now=T0)
        assert not refused.allowed
        assert refused.retry_after == timedelta(seconds=18)  # 3 tokens short, 6 s each
        assert refused.refused_by == (limit,)
        fits = await limiter.check("acme", [(limit, 2)], now=T0)  # the refusal took nothing
        assert (fits.allowed, fits.remaining) == (True, Decimal(0))
        assert not (await limiter.check("acme", [(limit, 1)], now=T0)).allowed
        later = await limiter.check("acme", [(limit, 1)], now=T0 + timedelta(seconds=6))
        assert later.allowed  # one token's worth replenished


async def test_a_refusal_by_one_limit_consumes_none_of_the_others(engine: AsyncEngine) -> None:
    requests = RateLimit("user", "u", "requests", "minute", Decimal(60))
    tokens = RateLimit("company", "acme", "tokens", "minute", Decimal(100))
    async with RateLimiter(engine) as limiter:
        assert (await limiter.check("acme", [(requests, 1), (tokens, 90)], now=T0)).allowed
        refused = await limiter.check("acme", [(requests, 1), (tokens, 20)], now=T0)
        assert not refused.allowed and refused.refused_by == (tokens,)
        assert refused.retry_after == timedelta(seconds=6)  # 10 tokens at 0.6 s
        again = await limiter.check("acme", [(requests, 1), (tokens, 10)], now=T0)
        assert again.allowed
        assert {s.limit.metric: s.remaining for s in again.statuses} == {"requests": 58, "tokens": 0}


async def test_an_amount_above_the_burst_or_a_zero_limit_never_fits_and_asks_nothing(
    engine: AsyncEngine,
) -> None:
    async with RateLimiter(engine) as limiter:
        big = await limiter.check("acme", [(RateLimit("key", "k", "tokens", "minute", Decimal(10)), 11)])
        zero = await limiter.check("acme", [(RateLimit("key", "k", "requests", "minute", Decimal(0)), 1)])
        assert (big.allowed, big.retry_after, zero.allowed) == (False, None, False)
        with pytest.raises(InvalidRequestError):
            await limiter.check("acme", [(RateLimit("key", "k", "tokens", "minute", Decimal(10)), -1)])


async def test_cost_limits_are_exact_in_decimal(engine: AsyncEngine) -> None:
    cost = RateLimit("company", "acme", "cost_usd", "minute", Decimal("0.07"))  # T = 857.142857... s per USD
    async with RateLimiter(engine) as limiter:
        for _ in range(7):
            assert (await limiter.check("acme", [(cost, Decimal("0.01"))], now=T0)).allowed
        assert not (await limiter.check("acme", [(cost, Decimal("0.000001"))], now=T0)).allowed


@pytest.mark.parametrize(
    ("period", "limit", "burst"), [("minute", "7", "7"), ("hour", "7", "13"), ("day", "3", "29")]
)
@pytest.mark.parametrize("paired", [False, True], ids=["one-limit", "with-another"])
async def test_a_rate_with_a_recurring_interval_admits_exactly_its_burst(
    engine: AsyncEngine, period: str, limit: str, burst: str, paired: bool
) -> None:
    # T = period / limit has no finite decimal expansion: rounding must neither lose nor add a unit.
    tight = RateLimit("key", "k", "requests", period, Decimal(limit), Decimal(burst))
    loose = [(RateLimit("company", "acme", "requests", "second", Decimal(10**6)), 1)] if paired else []
    async with RateLimiter(engine) as limiter:
        admitted = [
            (await limiter.check("acme", [(tight, 1), *loose], now=T0)).allowed for _ in range(int(burst) + 2)
        ]
    assert admitted == [True] * int(burst) + [False, False]


# -- configs: precedence, one query --------------------------------------------------------------


async def add_configs(engine: AsyncEngine, rows: list[tuple[str, str, str, str, int]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(RateLimitConfig),
            [
                {"company_id": c, "scope": scope, "scope_id": sid, "metric": metric, "period": "minute",
                 "limit_value": Decimal(value), "burst": Decimal(value)}
                for c, scope, sid, metric, value in rows
            ],
        )  # fmt: skip


async def test_the_most_specific_config_wins_per_metric_and_names_the_counter(engine: AsyncEngine) -> None:
    await add_configs(
        engine,
        [
            ("", "tier", "pro", "requests", 500),
            ("acme", "company", "", "requests", 400),
            ("acme", "user", "u-1", "requests", 300),
            ("acme", "key", "k-1", "requests", 200),
            ("other", "key", "k-1", "requests", 7),  # another company's key of the same id
            ("acme", "company", "", "tokens", 9000),
            ("", "tier", "pro", "tokens", 1),
        ],
    )
    async with RateLimiter(engine) as limiter:

        async def minute(subject: RateSubject, metric: str) -> tuple[str, str, Decimal]:
            resolved = await limiter.resolve(subject)
            (hit,) = [r for r in resolved.rates if r.metric == metric and r.period == "minute"]
            return hit.scope, hit.subject, hit.limit

        full = RateSubject("acme", user_id="u-1", key_id="k-1", tier="pro")
        assert await minute(full, "requests") == ("key", "k-1", Decimal(200))
        assert await minute(RateSubject("acme", "u-1", "k-2", "pro"), "requests") == (
            "user",
            "u-1",
            Decimal(300),
        )
        assert await minute(RateSubject("acme", "u-2", None, "pro"), "requests") == (
            "company",
            "acme",
            Decimal(400),
        )
        assert await minute(RateSubject("zeta", "u-1", "k-1", "pro"), "requests") == (
            "company",
            "zeta",
            Decimal(500),
        )
        assert await minute(RateSubject("zeta"), "requests") == (
            "company",
            "zeta",
            Decimal(50),
        )  # seed 002's default
        assert await minute(full, "tokens") == ("company", "acme", Decimal(9000))  # company beats tier
        hours = {(r.metric, r.period) for r in (await limiter.resolve(full)).rates}
        assert {("requests", "hour"), ("requests", "day")} <= hours  # other periods keep the global rows


async def test_disabled_configs_are_skipped_and_concurrency_is_resolved_apart(engine: AsyncEngine) -> None:
    await add_configs(engine, [("acme", "key", "k-1", "requests", 200)])
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE rate_limit_configs SET enabled = false WHERE scope = 'key'"))
        await conn.execute(
            insert(RateLimitConfig),
            {"company_id": "acme", "scope": "user", "scope_id": "u-1", "metric": "concurrency", "period": None,
             "limit_value": Decimal(3), "burst": None},
        )  # fmt: skip
    async with RateLimiter(engine) as limiter:
        resolved = await limiter.resolve(RateSubject("acme", "u-1", "k-1"))
    assert ("company", "acme", Decimal(50)) in {(r.scope, r.subject, r.limit) for r in resolved.rates}
    assert resolved.concurrency == ("user", "u-1", 3)


async def test_decide_checks_every_resolved_limit(engine: AsyncEngine) -> None:
    await add_configs(engine, [("acme", "user", "u-1", "tokens", 1000)])
    async with RateLimiter(engine) as limiter:
        subject = RateSubject("acme", user_id="u-1")
        ok = await limiter.decide(subject, tokens=600, now=T0)
        refused = await limiter.decide(subject, tokens=600, now=T0)
    assert ok.allowed and len(ok.statuses) == 4  # requests per minute/hour/day + tokens per minute
    assert not refused.allowed and [r.metric for r in refused.refused_by] == ["tokens"]


# -- headers ------------------------------------------------------------------------------------


async def test_headers_for_allowed_and_refused_decisions(engine: AsyncEngine) -> None:
    limit = RateLimit("key", "k", "requests", "minute", Decimal(10), Decimal(12))
    async with RateLimiter(engine) as limiter:
        allowed = await limiter.check("acme", [(limit, 11)], now=T0)
        refused = await limiter.check("acme", [(limit, 2)], now=T0 + timedelta(milliseconds=500))
    assert rate_limit_headers(allowed) == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "66",  # 11 units of 6 s
        "RateLimit-Policy": "10;w=60",
    }
    headers = rate_limit_headers(refused)
    assert headers["RateLimit-Remaining"] == "1"
    assert headers["Retry-After"] == "6"  # needs 5.5 s more, rounded up
    assert rate_limit_headers(RateDecision(True, None, None, timedelta(0), None)) == {}


# -- concurrency leases ---------------------------------------------------------------------------


async def test_a_lease_expires_when_its_holder_never_releases(engine: AsyncEngine) -> None:
    lease = timedelta(seconds=30)
    async with RateLimiter(engine) as limiter:
        first = await limiter.acquire("acme", "user", "u", 2, lease=lease, now=T0)
        second = await limiter.acquire("acme", "user", "u", 2, lease=lease, now=T0 + timedelta(seconds=10))
        assert isinstance(first, ConcurrencySlot) and isinstance(second, ConcurrencySlot)
        full = await limiter.acquire("acme", "user", "u", 2, lease=lease, now=T0 + timedelta(seconds=20))
        assert full == ConcurrencyRefusal(timedelta(seconds=10))  # the first lease runs out at T0 + 30 s
        # The first holder crashed: its slot is free once the lease expires.
        third = await limiter.acquire("acme", "user", "u", 2, lease=lease, now=T0 + timedelta(seconds=31))
        assert isinstance(third, ConcurrencySlot) and third.slot == first.slot
        assert not await limiter.release(first)  # fenced: no longer its slot
        assert await limiter.renew(first, lease=lease, now=T0 + timedelta(seconds=32)) is None
        renewed = await limiter.renew(second, lease=lease, now=T0 + timedelta(seconds=35))
        assert renewed is not None and renewed.expires_at == T0 + timedelta(seconds=65)
        assert await limiter.release(third)
        assert not await limiter.release(third)
        again = await limiter.acquire("acme", "user", "u", 2, lease=lease, now=T0 + timedelta(seconds=36))
        assert isinstance(again, ConcurrencySlot) and again.slot == third.slot
        assert await limiter.acquire("acme", "user", "u", 0, lease=lease) == ConcurrencyRefusal(None)


async def test_the_readme_example_runs_as_written(engine: AsyncEngine) -> None:
    """README's "Rate limits" block, as written (its top-level awaits inside a coroutine)."""
    section = README.read_text().split("## Rate limits\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec("async def snippet(engine):\n" + "".join(f"    {line}\n" for line in code.splitlines()), namespace)  # noqa: S102 (our README)
    await namespace["snippet"](engine)
    async with engine.connect() as conn:
        counters = (
            await conn.execute(text("SELECT count(*) FROM rate_limit_state WHERE company_id = 'acme'"))
        ).scalar()
    assert counters and counters > 0  # the decision was taken and recorded
