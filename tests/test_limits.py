"""`Limits`: authenticate, then admit against quotas, concurrency and rates all or nothing; a refusal
at any step holds nothing; settle counts the actual usage and frees the slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    ApiKeyPrincipal,
    ApiKeys,
    Grant,
    LimitDecision,
    LimitExceeded,
    Limits,
    QuotaLimits,
    Quotas,
    RateSubject,
)
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import InvalidRequestError
from persistence.models import RateLimitConfig
from persistence.subjects import create_company, create_user

PEPPER = "limits-pepper-0123456789abcdefghijklmnopqrstuvwxyz"
ALICE = RateSubject("acme", user_id="alice")
UNLIMITED = QuotaLimits(requests=None, tokens=None)


def d(used: int, held: int) -> tuple[Decimal, Decimal]:
    return Decimal(used), Decimal(held)


README = Path(__file__).resolve().parents[1] / "README.md"


async def add_config(
    engine: AsyncEngine, company: str, scope: str, scope_id: str, metric: str, value: int, period: str | None
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(RateLimitConfig),
            {"company_id": company, "scope": scope, "scope_id": scope_id, "metric": metric, "period": period,
             "limit_value": Decimal(value), "burst": None if metric == "concurrency" else Decimal(value)},
        )  # fmt: skip


async def held_and_used(
    engine: AsyncEngine, company: str = "acme"
) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT scope, metric, used, held FROM quota_counters WHERE company_id = :c"), {"c": company}
        )
        return {(r.scope, r.metric): (r.used, r.held) for r in rows}


async def slots_in_use(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        value = await conn.scalar(
            text(
                "SELECT count(*) FROM rate_limit_slots WHERE holder IS NOT NULL AND expires_at > clock_timestamp()"
            )
        )
    return int(value or 0)


async def rate_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM rate_limit_state")) or 0)


async def admit(
    limits: Limits, who: RateSubject | ApiKeyPrincipal = ALICE, tokens: int = 100
) -> LimitDecision:
    return await limits.admit(who, prompt_tokens=tokens, max_tokens=tokens, cost_usd=Decimal("0.01"))


async def test_admit_then_settle_counts_the_actual_usage_once(engine: AsyncEngine) -> None:
    await Quotas(engine).set_user_quota("acme", "alice", limits=QuotaLimits(10, 10_000))
    async with Limits(engine) as limits:
        decision = await admit(limits)
        assert decision.allowed and decision.refused_by is None and decision.rate is not None
        grant = decision.granted()
        assert (await held_and_used(engine))[("user", "tokens")] == d(0, 200)
        assert await limits.settle(grant, tokens=150, cost_usd=Decimal("0.004"))
        assert not await limits.settle(grant, tokens=150, cost_usd=Decimal("0.004"))
    assert (await held_and_used(engine))[("user", "tokens")] == d(150, 0)
    assert decision.headers()["RateLimit-Limit"] == "50"  # seed 002's default requests per minute
    assert "Retry-After" not in decision.headers()


async def test_a_quota_refusal_consumes_no_rate_and_takes_no_slot(engine: AsyncEngine) -> None:
    await Quotas(engine).set_user_quota("acme", "alice", limits=QuotaLimits(10, 150))
    await add_config(engine, "acme", "user", "alice", "concurrency", 5, None)
    async with Limits(engine) as limits:
        decision = await admit(limits)
        assert not decision.allowed and decision.refused_by == "quota" and decision.rate is None
        assert [lim.metric for lim in decision.quota.refused_by] == ["tokens"]
        with pytest.raises(LimitExceeded) as caught:
            decision.granted()
    assert caught.value.decision is decision and "quota" in str(caught.value)
    assert await rate_rows(engine) == 0 and await slots_in_use(engine) == 0
    assert (await held_and_used(engine))[("user", "tokens")] == d(0, 0)


async def test_a_rate_refusal_gives_the_quota_reservation_and_the_slot_back(engine: AsyncEngine) -> None:
    await Quotas(engine).set_user_quota("acme", "alice", limits=UNLIMITED)
    await add_config(engine, "acme", "user", "alice", "requests", 2, "minute")
    await add_config(engine, "acme", "user", "alice", "concurrency", 5, None)
    async with Limits(engine) as limits:
        first, second, third = [await admit(limits) for _ in range(3)]
    assert first.allowed and second.allowed
    assert third.refused_by == "rate" and third.rate is not None and not third.rate.allowed
    assert third.retry_after is not None and third.headers()["Retry-After"] == "30"  # 2 a minute
    counters = await held_and_used(engine)
    assert counters[("user", "requests")] == d(0, 2)  # the third one's hold was released
    assert await slots_in_use(engine) == 2


async def test_a_concurrency_refusal_gives_the_quota_reservation_back(engine: AsyncEngine) -> None:
    await Quotas(engine).set_user_quota("acme", "alice", limits=UNLIMITED)
    await add_config(engine, "acme", "user", "alice", "concurrency", 1, None)
    async with Limits(engine) as limits:
        grant = (await admit(limits)).granted()
        refused = await admit(limits)
        assert refused.refused_by == "concurrency" and refused.concurrency is not None
        assert refused.retry_after is not None and refused.retry_after > timedelta(minutes=4)
        assert (await held_and_used(engine))[("user", "requests")] == d(0, 1)
        assert await limits.release(grant)
        assert not await limits.release(grant)
        assert (await admit(limits)).allowed  # the slot and the room came back
    assert (await held_and_used(engine))[("user", "requests")] == d(0, 1)


async def test_the_company_tier_selects_tier_configs(engine: AsyncEngine) -> None:
    await create_company(engine, "acme", "Acme", tier="pro")
    await add_config(engine, "", "tier", "pro", "tokens", 1000, "minute")
    async with Limits(engine) as limits:
        assert (await admit(limits, tokens=400)).allowed
        refused = await admit(limits, tokens=400)
    assert refused.refused_by == "rate" and refused.rate is not None
    assert [lim.metric for lim in refused.rate.refused_by] == ["tokens"]  # 800 + 800 > 1,000


async def test_authenticate_and_admit_the_principal(engine: AsyncEngine) -> None:
    await create_company(engine, "acme", "Acme")
    await create_user(engine, "acme", "alice")
    keys = ApiKeys(engine, pepper=PEPPER, environment="live", flush_interval=3600)
    issued = await keys.create("acme", user_id="alice", scopes=["chat"])
    await add_config(engine, "acme", "key", issued.key_id, "requests", 1, "minute")
    async with Limits(engine, api_keys=keys) as limits:
        principal = await limits.authenticate(issued.key.get_secret_value(), scopes=["chat"])
        first = await admit(limits, principal)
        second = await admit(limits, principal)
    await keys.close()
    assert first.allowed and isinstance(first.grant, Grant)
    assert first.grant.subject == RateSubject("acme", "alice", issued.key_id)
    assert second.refused_by == "rate"  # the key's own limit, the most specific config


async def test_bad_input_is_refused_before_anything_is_held(engine: AsyncEngine) -> None:
    async with Limits(engine) as limits:
        with pytest.raises(InvalidRequestError):
            await limits.admit(ALICE, prompt_tokens=1, max_tokens=1, cost_usd=0.01)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError):
            await limits.admit(ALICE, prompt_tokens=-1, max_tokens=1, cost_usd=Decimal(0))
        with pytest.raises(InvalidRequestError):
            await limits.admit(RateSubject(""), prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0))
    assert await held_and_used(engine) == {}
    with pytest.raises(InvalidRequestError):
        Limits(engine, config_ttl=timedelta(seconds=-1))


# -- exact under concurrency, through the facade (real commits) -------------------------------------


@pytest.fixture
async def wide_engine(fresh_database: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(fresh_database.model_copy(update={"pool_size": 12, "max_overflow": 2}))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.commits
async def test_concurrent_clients_get_exactly_the_quota_and_refusals_hold_nothing(
    wide_engine: AsyncEngine,
) -> None:
    await Quotas(wide_engine).set_user_quota("acme", "alice", limits=QuotaLimits(300, None))
    await add_config(wide_engine, "acme", "company", "", "requests", 100_000, "minute")
    await add_config(wide_engine, "acme", "user", "alice", "concurrency", 1_000, None)
    async with Limits(wide_engine) as limits:

        async def client() -> int:
            admitted = 0
            for _ in range(60):
                admitted += (await admit(limits)).allowed
            return admitted

        admitted = sum(await asyncio.gather(*(client() for _ in range(8))))
    assert admitted == 300  # 480 attempts against 300 requests
    assert (await held_and_used(wide_engine))[("user", "requests")] == d(0, 300)
    assert await slots_in_use(wide_engine) == 300  # refused attempts gave their slot back


async def test_the_readme_example_runs_as_written(engine: AsyncEngine) -> None:
    """README's "Limits" block, as written (its top-level awaits inside a coroutine)."""
    await Quotas(engine).set_user_quota("acme", "alice", tier="standard")
    section = README.read_text().split("## Limits\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec("async def snippet(engine):\n" + "".join(f"    {line}\n" for line in code.splitlines()), namespace)  # noqa: S102 (our README)
    await namespace["snippet"](engine)
    assert (await held_and_used(engine))[("user", "tokens")] == d(1350, 0)
