"""Deduplication: what the key covers, tenancy, leader election under concurrency, expiry, failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import InvalidRequestError
from persistence.results import (
    KEY_SCHEMA_VERSION,
    TRANSPORT_ONLY_FIELDS,
    DedupClaim,
    DedupKey,
    Deduplicator,
    DedupTimeoutError,
    ResultStore,
    StoredResult,
    dedup_key,
)

REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Translate: hello"}],
    "temperature": 0,
    "max_tokens": 100,
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
}


def key(
    company: str = "acme", provider: str = "openai", model: str = "gpt-4o-2024-08-06", **changes: Any
) -> DedupKey:
    return dedup_key(company, provider, model, {**REQUEST, **changes})


# -- the key ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.7},
        {"max_tokens": 101},
        {"messages": [{"role": "system", "content": "Be verbose."}, REQUEST["messages"][1]]},
        {"tools": []},
        {"seed": 7},  # a field the key has never heard of counts too (deny-list, not allow-list)
        {"num_ctx": 8192},  # ollama's (LiteLLM #42400)
        {"temperature": None},  # explicitly null is not absent
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_parameter_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change).digest != key().digest


def test_a_missing_parameter_changes_the_key() -> None:
    without = {name: value for name, value in REQUEST.items() if name != "temperature"}
    assert dedup_key("acme", "openai", "gpt-4o-2024-08-06", without).digest != key().digest


@pytest.mark.parametrize("field", sorted(TRANSPORT_ONLY_FIELDS))
def test_transport_only_fields_do_not_change_the_key(field: str) -> None:
    assert key(**{field: "anything"}).digest == key().digest


def test_order_of_keys_does_not_matter_but_order_of_messages_does() -> None:
    reordered = dict(reversed(list(REQUEST.items())))
    assert dedup_key("acme", "openai", "gpt-4o-2024-08-06", reordered).digest == key().digest
    assert key(messages=list(reversed(REQUEST["messages"]))).digest != key().digest


def test_tenant_provider_model_and_schema_version_are_in_the_key() -> None:
    base = key()
    assert key(company="globex").digest != base.digest
    assert key(provider="azure").digest != base.digest
    assert key(model="gpt-4o-2024-11-20").digest != base.digest
    other_version = dedup_key("acme", "openai", "gpt-4o-2024-08-06", REQUEST, version=KEY_SCHEMA_VERSION + 1)
    assert other_version.digest != base.digest
    assert len(base.digest) == 32 and base.hex == base.digest.hex()


def test_a_request_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        key(temperature=float("nan"))
    with pytest.raises(InvalidRequestError):
        dedup_key("", "openai", "gpt-4o", REQUEST)


# -- the cache ------------------------------------------------------------------------------------------


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[ResultStore]:
    async with ResultStore(engine) as s:
        yield s


async def test_first_call_computes_the_next_one_hits(store: ResultStore) -> None:
    dedup = Deduplicator(store)
    calls: list[int] = []

    async def compute() -> StoredResult:
        calls.append(1)
        return await store.put_text("acme", "bonjour")

    first = await dedup.run(key(), compute)
    second = await dedup.run(key(), compute)
    assert (first.outcome, second.outcome, len(calls)) == ("computed", "hit", 1)
    assert second.result.sha256 == first.result.sha256
    assert await store.read_text("acme", second.result.sha256) == "bonjour"
    changed = await dedup.run(key(temperature=1), compute)
    assert (changed.outcome, len(calls)) == ("computed", 2)


async def test_two_tenants_never_share_an_entry(store: ResultStore) -> None:
    dedup = Deduplicator(store)
    await dedup.run(key(company="acme"), lambda: store.put_text("acme", "for acme"))
    assert await dedup.lookup(key(company="globex")) is None
    # Even a key computed for acme cannot be answered with another company's result.
    claim = await dedup.claim(key(company="globex"))
    assert isinstance(claim, DedupClaim)
    with pytest.raises(InvalidRequestError):
        await dedup.complete(claim, await store.put_text("acme", "for acme"))
    assert await dedup.abandon(claim)
    other = await dedup.run(key(company="globex"), lambda: store.put_text("globex", "for globex"))
    assert other.outcome == "computed" and other.result.company_id == "globex"


async def test_a_failed_leader_gives_the_key_up(store: ResultStore, engine: AsyncEngine) -> None:
    dedup = Deduplicator(store)

    async def fails() -> StoredResult:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError):
        await dedup.run(key(), fails)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM result_cache"))).scalar() == 0
    done = await dedup.run(key(), lambda: store.put_text("acme", "ok"))
    assert done.outcome == "computed"


async def test_an_expired_entry_is_computed_again_and_purged(store: ResultStore, engine: AsyncEngine) -> None:
    dedup = Deduplicator(store)
    await dedup.run(key(), lambda: store.put_text("acme", "old"), ttl=timedelta(hours=1))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE result_cache SET expires_at = now() - interval '1 second'"))
    assert await dedup.lookup(key()) is None
    fresh = await dedup.run(key(), lambda: store.put_text("acme", "new"), ttl=timedelta(hours=1))
    assert fresh.outcome == "computed" and await store.read_text("acme", fresh.result.sha256) == "new"
    await dedup.run(key(max_tokens=5), lambda: store.put_text("acme", "x"), ttl=timedelta(hours=1))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE result_cache SET expires_at = now() - interval '1 second'"))
    assert await dedup.purge_expired() == 2


async def test_a_dead_leader_is_taken_over_and_its_late_completion_refused(
    store: ResultStore, engine: AsyncEngine
) -> None:
    dedup = Deduplicator(store)
    dead = await dedup.claim(key(), lease=timedelta(minutes=1))
    assert isinstance(dead, DedupClaim)
    assert await dedup.claim(key()) is None  # led by someone else
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE result_cache SET lease_until = now() - interval '1 second'"))
    taken = await dedup.run(key(), lambda: store.put_text("acme", "by the new leader"))
    assert taken.outcome == "computed"
    assert not await dedup.complete(dead, await store.put_text("acme", "late"))
    hit = await dedup.lookup(key())
    assert hit is not None and await store.read_text("acme", hit.sha256) == "by the new leader"


async def test_a_waiting_caller_leads_when_the_leader_gives_up(store: ResultStore) -> None:
    dedup = Deduplicator(store)
    leader = await dedup.claim(key())
    assert isinstance(leader, DedupClaim)
    follower = asyncio.create_task(
        dedup.run(key(), lambda: store.put_text("acme", "by the follower"), poll=timedelta(milliseconds=10))
    )
    await asyncio.sleep(0.05)
    assert not follower.done()  # waiting on the leader
    assert await dedup.abandon(leader)
    done = await follower
    assert (
        done.outcome == "computed" and await store.read_text("acme", done.result.sha256) == "by the follower"
    )


async def test_followers_give_up_after_their_wait(store: ResultStore) -> None:
    dedup = Deduplicator(store)
    assert isinstance(await dedup.claim(key()), DedupClaim)
    with pytest.raises(DedupTimeoutError):
        await dedup.run(
            key(),
            lambda: store.put_text("acme", "never"),
            wait=timedelta(milliseconds=30),
            poll=timedelta(milliseconds=10),
        )


async def test_deleting_the_result_removes_its_cache_entries(store: ResultStore) -> None:
    dedup = Deduplicator(store)
    done = await dedup.run(key(), lambda: store.put_text("acme", "gone soon"))
    await store.delete("acme", done.result.sha256)
    assert await dedup.lookup(key()) is None


# -- concurrent identical requests (real commits, many connections) ----------------------------------------


@pytest.fixture
async def wide_engine(fresh_database: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(fresh_database.model_copy(update={"pool_size": 10, "max_overflow": 2}))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.commits
async def test_concurrent_identical_requests_collapse_onto_one_leader(wide_engine: AsyncEngine) -> None:
    callers = 20
    computing = asyncio.Event()
    release = asyncio.Event()
    computed: list[int] = []
    async with ResultStore(wide_engine, connections=10) as store:
        dedup = Deduplicator(store)

        async def compute() -> StoredResult:
            computed.append(1)
            computing.set()
            await release.wait()  # every other caller arrives while the leader is still working
            return await store.put_text("acme", "the one answer")

        async def caller() -> Any:
            return await dedup.run(key(), compute, poll=timedelta(milliseconds=10))

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await computing.wait()
        await asyncio.sleep(0.1)
        release.set()
        outcomes = await asyncio.gather(*tasks)

        # Different requests at the same time each compute their own.
        def answer(n: int) -> Callable[[], Awaitable[StoredResult]]:
            return lambda: store.put_text("acme", f"answer {n}")

        others = await asyncio.gather(*(dedup.run(key(max_tokens=n), answer(n)) for n in range(5)))
    assert len(computed) == 1
    assert sorted(o.outcome for o in outcomes) == ["computed"] + ["joined"] * (callers - 1)
    assert len({o.result.sha256 for o in outcomes}) == 1
    assert [o.outcome for o in others] == ["computed"] * 5
    async with wide_engine.connect() as conn:
        count = (
            await conn.execute(text("SELECT count(*) FROM result_cache WHERE result_sha256 IS NOT NULL"))
        ).scalar()
    assert count == 6
