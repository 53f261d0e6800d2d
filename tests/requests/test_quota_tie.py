"""The quota tie: a request reserves its estimate in the transaction that queues it and settles its
actual tokens (or releases them) in the transaction that finishes it (seed 001's transaction example)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import LimitExceeded, QuotaLimits, Quotas, RequestQuotas, Requests, Worker

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def d(used: int | Decimal, held: int | Decimal) -> tuple[Decimal, Decimal]:
    return Decimal(used), Decimal(held)


def per_token(model_id: str, tokens: int) -> Decimal:
    return Decimal("0.000002") * tokens


async def counters(engine: AsyncEngine) -> dict[str, tuple[Decimal, Decimal]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT metric, used, held FROM quota_counters WHERE company_id = 'acme' AND scope = 'user'")
        )
        return {r.metric: (r.used, r.held) for r in rows}


async def requests_of(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM requests WHERE company_id = 'acme'")) or 0)


@pytest.fixture
async def tied(engine: AsyncEngine) -> Requests:
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "alice", limits=QuotaLimits(10, 1000, Decimal("1")))
    return Requests(engine, hooks=RequestQuotas(quotas, price=per_token))


async def test_queueing_reserves_and_completing_settles_in_the_same_transactions(
    engine: AsyncEngine, tied: Requests
) -> None:
    record = await tied.create("acme", "alice", "gpt-4o", "Translate ...", estimated_tokens=600, now=T0)
    assert await counters(engine) == {
        "requests": d(0, 1),
        "tokens": d(0, 600),
        "cost_usd": d(0, Decimal("0.0012")),
    }
    with pytest.raises(LimitExceeded) as refused:
        await tied.create("acme", "alice", "gpt-4o", "Another", estimated_tokens=600, now=T0)
    assert [lim.metric for lim in refused.value.decision.quota.refused_by] == ["tokens"]
    assert await requests_of(engine) == 1  # the refused request was not created
    [claim] = await tied.claim(Worker("w1"), 1, lease=LEASE, now=T0)
    assert claim.request_id == record.request_id
    await tied.complete(claim, prompt_tokens=120, completion_tokens=80, now=T0 + timedelta(seconds=2))
    assert await counters(engine) == {
        "requests": d(1, 0),
        "tokens": d(200, 0),
        "cost_usd": d(Decimal("0.0004"), 0),
    }
    async with engine.connect() as conn:
        usage = (
            await conn.execute(text("SELECT tokens_used FROM usage WHERE company_id = 'acme'"))
        ).scalars()
        assert set(usage) == {200}  # the daily and monthly rows of seed 001's usage


async def test_a_failed_request_releases_unless_it_used_tokens(engine: AsyncEngine, tied: Requests) -> None:
    await tied.create("acme", "alice", "gpt-4o", "a", estimated_tokens=300, now=T0)
    await tied.create("acme", "alice", "gpt-4o", "b", estimated_tokens=300, now=T0)
    first, second = await tied.claim(Worker("w1"), 2, lease=LEASE, now=T0)
    await tied.fail(first, "model overloaded", now=T0 + timedelta(seconds=1))
    assert (await counters(engine))["tokens"] == d(0, 300)
    await tied.fail(second, "cut off", prompt_tokens=100, completion_tokens=20, now=T0 + timedelta(seconds=1))
    assert (await counters(engine))["tokens"] == d(120, 0)


async def test_cancel_and_expiry_release_and_an_untied_request_finishes(
    engine: AsyncEngine, tied: Requests
) -> None:
    untied = Requests(engine)
    old = await untied.create("acme", "alice", "gpt-4o", "before the tie", estimated_tokens=50, now=T0)
    queued = await tied.create("acme", "alice", "gpt-4o", "q", estimated_tokens=400, now=T0)
    await tied.cancel("acme", queued.request_id, now=T0)
    assert (await counters(engine))["tokens"] == d(0, 0)
    [claim] = await tied.claim(Worker("w1"), 1, lease=LEASE, now=T0)
    assert claim.request_id == old.request_id
    done = await tied.complete(claim, prompt_tokens=10, completion_tokens=10, now=T0 + timedelta(seconds=1))
    assert done.status == "completed" and (await counters(engine))["tokens"] == d(0, 0)
