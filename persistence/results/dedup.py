"""Opt-in result deduplication (seed 001's "Result Deduplication"): identical requests, one result.

**The key** (`dedup_key`) is the sha-256 of the canonical JSON (`canonical_json`) of the whole
request minus the transport-only fields in `TRANSPORT_ONLY_FIELDS` (top-level names that change
how a response travels, never what it says), plus the company, the provider, the resolved model
and `KEY_SCHEMA_VERSION`. Every other field counts, known or not: a deny-list, because an
allow-list silently serves a wrong answer when a provider adds a parameter (LiteLLM #894 ignored
`max_tokens` and `seed`, #42400 ignored ollama's `num_ctx`). A field absent and a field set to its
default are different keys, as are 1 and 1.0: a cache miss, never a wrong hit. Changing
`TRANSPORT_ONLY_FIELDS` or the canonical form means a new `KEY_SCHEMA_VERSION`.

**The cache** (`result_cache`, keyed (company, key)) is used only by callers that ask for it
(`Deduplicator`). The first caller of a key claims it (`INSERT ... ON CONFLICT` in one statement:
it becomes the leader, with a lease and a fencing token); concurrent callers of the same key see
the claim and wait, polling with plain reads and backoff up to their `wait`, then get the
leader's result. A
leader that fails gives the key up (`abandon`); one that dies leaves a lease that runs out, and
the next caller takes the key over. Only the leader that still holds the claim can complete it.
Entries expire after their `ttl` (None: never); an expired entry is taken over by the next claim
and removed by `purge_expired`. Company first in the table's key, and the company is hashed into
the key too: two companies never share an entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import asyncpg

from persistence.errors import InvalidRequestError
from persistence.results import sql
from persistence.results.errors import DedupTimeoutError
from persistence.results.store import ResultStore, StoredResult, canonical_json

__all__ = [
    "KEY_SCHEMA_VERSION",
    "TRANSPORT_ONLY_FIELDS",
    "DedupClaim",
    "DedupKey",
    "Deduplicated",
    "Deduplicator",
    "dedup_key",
]

KEY_SCHEMA_VERSION = 1

# Top-level request fields that never change the answer: streaming and its options (the stored
# result is the whole answer), client timeouts and retries, request/idempotency ids, headers and
# user agent, credentials and endpoints (the provider and resolved model are in the key
# themselves), and `user` (an end-user id for the provider's abuse monitoring; results are shared
# within a company, never across companies).
TRANSPORT_ONLY_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "timeout",
        "request_timeout",
        "max_retries",
        "request_id",
        "idempotency_key",
        "user_agent",
        "extra_headers",
        "api_key",
        "api_base",
        "base_url",
        "user",
    }
)


@dataclass(frozen=True, slots=True)
class DedupKey:
    """A request's deduplication key: `digest` is what the cache is keyed by (with the company)."""

    company_id: str
    provider: str
    model: str
    digest: bytes
    version: int = KEY_SCHEMA_VERSION

    @property
    def hex(self) -> str:
        return self.digest.hex()


def dedup_key(
    company_id: str,
    provider: str,
    model: str,
    request: Mapping[str, object],
    *,
    version: int = KEY_SCHEMA_VERSION,
) -> DedupKey:
    """The key of `request` (the provider call's parameters as JSON values) for `company_id`,
    `provider` and the resolved `model` (the model actually called, not an alias)."""
    if not company_id or not provider or not model:
        raise InvalidRequestError("a dedup key names the company, the provider and the resolved model")
    kept = {name: value for name, value in request.items() if name not in TRANSPORT_ONLY_FIELDS}
    material = {"v": version, "company": company_id, "provider": provider, "model": model, "request": kept}
    digest = hashlib.sha256(canonical_json(material).encode()).digest()
    return DedupKey(company_id, provider, model, digest, version)


@dataclass(frozen=True, slots=True)
class DedupClaim:
    """The leadership of a key: compute the result, then `complete` (or `abandon`) with it."""

    key: DedupKey
    token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Deduplicated:
    """What `Deduplicator.run` returned: `computed` by this call, a cache `hit`, or `joined` (an
    identical request's leader computed it while this call waited)."""

    result: StoredResult
    outcome: Literal["computed", "hit", "joined"]


def _seconds(name: str, value: timedelta | None) -> float | None:
    if value is None:
        return None
    if value <= timedelta(0):
        raise InvalidRequestError(f"{name} must be positive, got {value}")
    return value.total_seconds()


def _result(key: DedupKey, row: asyncpg.Record) -> StoredResult:
    return StoredResult(
        company_id=key.company_id,
        sha256=row["result_sha256"],
        kind=row["kind"],
        mime_type=row["mime_type"],
        size_bytes=row["size_bytes"],
        chunked=row["chunks"] > 0,
        created_at=row["created_at"],
    )


class Deduplicator:
    """The deduplication cache over a `ResultStore`'s connections."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self._leases = store.leases

    async def claim(
        self, key: DedupKey, *, lease: timedelta = timedelta(minutes=5)
    ) -> DedupClaim | StoredResult | None:
        """One statement: a `DedupClaim` if this caller leads `key` now, the cached result if there is
        one, or None while another caller leads it (ask again later)."""
        seconds = _seconds("lease", lease)
        token = uuid.uuid4()
        args = (key.company_id, key.digest, key.version, token, seconds)

        async def work(raw: asyncpg.Connection) -> asyncpg.Record:
            row: asyncpg.Record | None = await raw.fetchrow(sql.CLAIM, *args)
            assert row is not None  # one row, always
            return row

        row: asyncpg.Record = await self._leases.for_tenant(key.company_id, work)
        if row["claimed"]:
            return DedupClaim(key, token)
        if row["seen"] and row["result_sha256"] is not None and row["fresh"] and row["kind"] is not None:
            return _result(key, row)
        return None  # led by someone else, or changed since this statement's snapshot

    async def lookup(self, key: DedupKey) -> StoredResult | None:
        """The cached result of `key`, if one is there and not expired (claims nothing)."""

        async def work(raw: asyncpg.Connection) -> asyncpg.Record | None:
            row: asyncpg.Record | None = await raw.fetchrow(sql.LOOKUP, key.company_id, key.digest)
            return row

        row: asyncpg.Record | None = await self._leases.for_tenant(key.company_id, work)
        return None if row is None else _result(key, row)

    async def complete(
        self, claim: DedupClaim, result: StoredResult, *, ttl: timedelta | None = None
    ) -> bool:
        """Cache `result` for `claim`'s key, for `ttl` (None: until deleted). False when the claim
        was lost (its lease ran out and another caller took the key over): nothing is changed."""
        if result.company_id != claim.key.company_id:
            raise InvalidRequestError("a company's request is answered with its own company's result")
        args = (claim.key.company_id, claim.key.digest, claim.token, result.sha256, _seconds("ttl", ttl))

        async def work(raw: asyncpg.Connection) -> bool:
            return await raw.fetchrow(sql.COMPLETE, *args) is not None

        done: bool = await self._leases.for_tenant(claim.key.company_id, work)
        return done

    async def abandon(self, claim: DedupClaim) -> bool:
        """Give the key up (the leader failed): the next caller leads. False if it was not ours."""
        args = (claim.key.company_id, claim.key.digest, claim.token)

        async def work(raw: asyncpg.Connection) -> bool:
            status: str = await raw.execute(sql.ABANDON, *args)
            return status != "DELETE 0"

        done: bool = await self._leases.for_tenant(claim.key.company_id, work)
        return done

    async def run(
        self,
        key: DedupKey,
        compute: Callable[[], Awaitable[StoredResult]],
        *,
        ttl: timedelta | None = None,
        lease: timedelta = timedelta(minutes=5),
        wait: timedelta = timedelta(minutes=5),
        poll: timedelta = timedelta(milliseconds=50),
    ) -> Deduplicated:
        """The result of `key`: cached, or computed by `compute()` (which stores it and returns its
        header) in exactly one of the identical callers that run at once; the others wait up to
        `wait` (`DedupTimeoutError` after that) and get the same result. A `compute` that raises
        gives the key up for the next caller and the error propagates."""
        _seconds("wait", wait)
        deadline = time.monotonic() + wait.total_seconds()
        delay = _seconds("poll", poll) or 0.05
        waited = False
        while True:
            found = await self.claim(key, lease=lease)
            if isinstance(found, StoredResult):
                return Deduplicated(found, "joined" if waited else "hit")
            if isinstance(found, DedupClaim):
                return Deduplicated(await self._lead(found, compute, ttl), "computed")
            while True:  # another caller leads: poll with plain reads until its result or the key frees
                if time.monotonic() + delay > deadline:
                    raise DedupTimeoutError(f"an identical request (key {key.hex}) is still being computed")
                waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                row = await self._peek(key)
                if row is None or not row["open"]:
                    break  # free: claim it (or find what replaced it)
                if row["result_sha256"] is not None and row["kind"] is not None:
                    return Deduplicated(_result(key, row), "joined")

    async def _peek(self, key: DedupKey) -> asyncpg.Record | None:
        async def work(raw: asyncpg.Connection) -> asyncpg.Record | None:
            row: asyncpg.Record | None = await raw.fetchrow(sql.PEEK, key.company_id, key.digest)
            return row

        row: asyncpg.Record | None = await self._leases.for_tenant(key.company_id, work)
        return row

    async def _lead(
        self, claim: DedupClaim, compute: Callable[[], Awaitable[StoredResult]], ttl: timedelta | None
    ) -> StoredResult:
        try:
            result = await compute()
            if result.company_id != claim.key.company_id:
                raise InvalidRequestError("a company's request is answered with its own company's result")
        except BaseException:
            await asyncio.shield(self.abandon(claim))
            raise
        await self.complete(claim, result, ttl=ttl)
        return result

    async def purge_expired(self, *, limit: int = 10_000) -> int:
        """Delete up to `limit` expired entries (their results stay); returns how many. Every
        company's: platform work (the owner or `persistence_operator`; a service login purges none)."""

        async def work(raw: asyncpg.Connection) -> int:
            status: str = await raw.execute(sql.PURGE, limit)
            return int(status.split()[-1])

        purged: int = await self._leases.attempts(work)
        return purged
