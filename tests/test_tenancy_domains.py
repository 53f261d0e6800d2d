"""The domain modules on raw asyncpg (requests, results, quotas, rate limits, limits, API keys) as a
service logs in (`persistence_service`, bound by row-level security, revision 0026).

Each call that names a company acts as that company's tenant: the service's own work goes through
end to end, another company's rows stay out of reach, and a call for company b inside
`tenant("a")` is refused before any statement.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.api_keys import ApiKeyRevoked, ApiKeys
from persistence.errors import NotFoundError, TenantIsolationError
from persistence.limits import Limits
from persistence.quotas import QuotaLimits, Quotas, Reservation
from persistence.rate_limits import ConcurrencySlot, RateLimiter, RateSubject
from persistence.requests import RequestQuotas, Requests, Worker
from persistence.results.dedup import DedupClaim, Deduplicator, dedup_key
from persistence.results.store import ResultStore
from persistence.tenancy import tenant
from persistence.testing.pytest_plugin import LoginAs

pytestmark = pytest.mark.commits

PEPPER = "test-pepper-0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
async def login_as(engine: AsyncEngine, login_as: LoginAs) -> LoginAs:
    """The plugin's `login_as`, on a database where the superuser has put companies a and b, each
    with a user u1."""
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO companies (company_id, name) VALUES ('a', 'A'), ('b', 'B')"))
        await conn.execute(
            text("INSERT INTO users (company_id, user_id, name) VALUES ('a', 'u1', 'a1'), ('b', 'u1', 'b1')")
        )
    return login_as


async def _scalar(engine: AsyncEngine, sql: str, **params: object) -> object:
    """What the superuser (not bound by RLS) sees."""
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def test_requests_act_as_their_company(engine: AsyncEngine, login_as: LoginAs) -> None:
    theirs = await Requests(engine).create("b", "u1", "m", "b's prompt")
    async with login_as("persistence_service") as svc:
        quotas = Quotas(svc)
        requests = Requests(svc, hooks=RequestQuotas(quotas))
        await quotas.set_user_quota("a", "u1", limits=QuotaLimits(10, 1000))
        mine = await requests.create("a", "u1", "m", "a's prompt", estimated_tokens=5)
        assert (await requests.status("a", mine.request_id)).status == "queued"
        assert [r.request_id for r in (await requests.recent("a", "u1")).items] == [mine.request_id]
        claim = await requests.start("a", mine.request_id, Worker("w"))
        assert not (await requests.heartbeat(claim)).cancel_requested
        done = await requests.complete(claim, prompt_tokens=3, completion_tokens=4)
        assert done.status == "completed"
        assert [t.to_status for t in await requests.transitions("a", mine.request_id)] == [
            "queued",
            "processing",
            "completed",
        ]
        day = done.created_at.date()
        stats = await requests.stats("a", day, day + timedelta(days=1))
        assert sum(row.request_count for row in stats) == 1
        # The quota tie settled in the finishing transaction, on the same connection, as a.
        assert (
            await _scalar(
                engine,
                "SELECT state FROM quota_reservations WHERE company_id = 'a' AND id = :id",
                id=mine.request_id,
            )
            == "settled"
        )
        # b's request: not a's to see, and not to be touched from inside tenant("a").
        with pytest.raises(NotFoundError):
            await requests.status("a", theirs.request_id)
        async with tenant("a"):
            assert (await requests.status("a", mine.request_id)).status == "completed"
            with pytest.raises(TenantIsolationError):
                await requests.status("b", theirs.request_id)
            with pytest.raises(TenantIsolationError):
                await requests.cancel("b", theirs.request_id)
            with pytest.raises(TenantIsolationError):
                await requests.start("b", theirs.request_id, Worker("w"))
    assert (
        await _scalar(
            engine, "SELECT status FROM request_inflight WHERE request_id = :id", id=theirs.request_id
        )
        == "queued"
    )


async def test_results_act_as_their_company(engine: AsyncEngine, login_as: LoginAs) -> None:
    async with ResultStore(engine) as owner:
        theirs = await owner.put_text("b", "b's answer")
    async with (
        login_as("persistence_service") as svc,
        ResultStore(svc, inline_limit=4, chunk_size=4) as store,
    ):
        small = await store.put_text("a", "tiny")
        big = await store.put_text("a", "a longer answer, chunked")
        assert (await store.get("a", small.sha256)) is not None
        assert await store.read_text("a", big.sha256) == "a longer answer, chunked"
        assert (
            b"".join([piece async for piece in store.stream("a", big.sha256)]) == b"a longer answer, chunked"
        )
        assert not (await store.put_text("a", "a longer answer, chunked")).created
        dedup = Deduplicator(store)
        key = dedup_key("a", "openai", "m", {"prompt": "p"})
        claimed = await dedup.claim(key)
        assert isinstance(claimed, DedupClaim)
        assert await dedup.complete(claimed, small)
        cached = await dedup.lookup(key)
        assert cached is not None and cached.sha256 == small.sha256
        # b's result is not a's, even under a's own company id.
        assert await store.get("a", theirs.sha256) is None
        assert await store.delete("a", small.sha256)
        async with tenant("a"):
            with pytest.raises(TenantIsolationError):
                await store.get("b", theirs.sha256)
            with pytest.raises(TenantIsolationError):
                await store.delete("b", theirs.sha256)
            with pytest.raises(TenantIsolationError):
                await store.put_text("b", "forged")
            with pytest.raises(TenantIsolationError):
                await dedup.lookup(dedup_key("b", "openai", "m", {"prompt": "p"}))
    assert await _scalar(engine, "SELECT count(*) FROM results WHERE company_id = 'b'") == 1


async def test_quotas_act_as_their_company(engine: AsyncEngine, login_as: LoginAs) -> None:
    owner = Quotas(engine)
    await owner.set_user_quota("b", "u1", limits=QuotaLimits(10, 1000))
    held = await owner.admit("b", "u1", prompt_tokens=10, max_tokens=10, cost_usd=Decimal(0))
    assert held.reservation is not None
    async with login_as("persistence_service") as svc:
        quotas = Quotas(svc, connections=1)
        await quotas.set_user_quota("a", "u1", limits=QuotaLimits(10, 1000))
        admission = await quotas.admit("a", "u1", prompt_tokens=10, max_tokens=10, cost_usd=Decimal(0))
        assert admission.admitted and admission.reservation is not None
        assert await quotas.settle(admission.reservation, tokens=15, cost_usd=Decimal(0))
        remaining = await quotas.remaining_tokens("a", "u1")
        assert remaining is not None and remaining.used == 15
        assert [row.tokens_used for row in await quotas.usage_report("a")] == [15]
        # b's reservation, named as a's: not found (RLS shows a only); named as b's inside a: refused.
        forged = Reservation(company_id="a", id=held.reservation.id, expires_at=held.reservation.expires_at)
        with pytest.raises(NotFoundError):
            await quotas.settle(forged, tokens=1, cost_usd=Decimal(0))
        async with tenant("a"):
            with pytest.raises(TenantIsolationError):
                await quotas.settle(held.reservation, tokens=1, cost_usd=Decimal(0))
            with pytest.raises(TenantIsolationError):
                await quotas.admit("b", "u1", prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0))
        await quotas.close()
    assert await _scalar(engine, "SELECT state FROM quota_reservations WHERE company_id = 'b'") == "held"


async def test_rate_limits_and_limits_act_as_their_company(engine: AsyncEngine, login_as: LoginAs) -> None:
    async with login_as("persistence_service") as svc, RateLimiter(svc, connections=1) as limiter:
        decision = await limiter.decide(RateSubject("a", "u1"), tokens=10)
        assert decision.allowed and decision.statuses  # the global configs resolved, a's counters written
        slot = await limiter.acquire("a", "company", "a", 2, lease=timedelta(minutes=1))
        assert isinstance(slot, ConcurrencySlot)
        assert await limiter.renew(slot, lease=timedelta(minutes=2)) is not None
        assert await limiter.release(slot)
        async with Limits(svc, api_keys=ApiKeys(svc, pepper=PEPPER, environment="live")) as limits:
            await limits.quotas.set_user_quota("a", "u1", limits=QuotaLimits(10, 1000))
            granted = await limits.admit(
                RateSubject("a", "u1"), prompt_tokens=5, max_tokens=5, cost_usd=Decimal(0)
            )
            assert granted.allowed
            assert await limits.settle(granted.granted(), tokens=7, cost_usd=Decimal(0))
            async with tenant("a"):
                with pytest.raises(TenantIsolationError):
                    await limits.admit(RateSubject("b"), prompt_tokens=1, max_tokens=1, cost_usd=Decimal(0))
        async with tenant("a"):
            with pytest.raises(TenantIsolationError):
                await limiter.decide(RateSubject("b", "u1"))
    assert await _scalar(engine, "SELECT count(*) FROM rate_limit_state WHERE company_id = 'a'") != 0
    assert await _scalar(engine, "SELECT count(*) FROM rate_limit_state WHERE company_id = 'b'") == 0


async def test_api_keys_authenticate_and_are_managed_as_their_company(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    async with ApiKeys(engine, pepper=PEPPER, environment="live") as owner:
        theirs = await owner.create("b", user_id="u1")
    async with login_as("persistence_service") as svc:
        keys = ApiKeys(svc, pepper=PEPPER, environment="live", flush_interval=3600)
        mine = await keys.create("a", user_id="u1", scopes=["chat"])
        # authenticate knows no tenant yet: revision 0027's function finds the key.
        principal = await keys.authenticate(mine.key.get_secret_value(), scopes=["chat"])
        assert (principal.company_id, principal.user_id) == ("a", "u1")
        assert (await keys.authenticate(theirs.key.get_secret_value())).company_id == "b"
        assert await keys.flush() == 2  # one UPDATE per company, each as its tenant
        assert [k.key_id for k in await keys.list_keys("a")] == [mine.key_id]
        assert (await keys.get("a", mine.key_id)).last_used_at is not None
        rotated = await keys.rotate("a", mine.key_id, overlap=timedelta(0))
        await keys.revoke("a", rotated.key_id)
        with pytest.raises(ApiKeyRevoked):
            await keys.authenticate(rotated.key.get_secret_value())
        with pytest.raises(NotFoundError):
            await keys.get("a", theirs.key_id)
        async with tenant("a"):
            with pytest.raises(TenantIsolationError):
                await keys.revoke("b", theirs.key_id)
            with pytest.raises(TenantIsolationError):
                await keys.list_keys("b")
        await keys.close()
    assert (
        await _scalar(engine, "SELECT last_used_at IS NOT NULL FROM api_keys WHERE company_id = 'b'") is True
    )
    assert await _scalar(engine, "SELECT revoked_at FROM api_keys WHERE company_id = 'b'") is None


async def test_the_key_lookup_function_is_a_narrow_definer(engine: AsyncEngine) -> None:
    """Revision 0027: SECURITY DEFINER, a fixed search_path, EXECUTE for the service role, not PUBLIC."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT p.prosecdef, p.proconfig, "
                    "has_function_privilege('persistence_service', p.oid, 'EXECUTE') AS service, "
                    "EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public "
                    "FROM pg_proc p WHERE p.oid = 'public.api_key_candidates(varchar)'::regprocedure"
                )
            )
        ).one()
    assert (row.prosecdef, row.proconfig, row.service, row.public) == (
        True,
        ["search_path=pg_catalog, pg_temp"],
        True,
        False,
    )
