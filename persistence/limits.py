"""`Limits`: what a service calls per request — check the API key, admit the request against its
quotas, concurrency cap and rate limits (all or nothing), then settle or release it.

Admission runs the reversible steps first and the irreversible one last, so a refused request
consumes nothing anywhere:

1. the quota reservation (`Quotas.admit`: every user and company limit, one statement);
2. a concurrency slot, when a `concurrency` config applies (`RateLimiter.acquire`);
3. the GCRA decision for the request, token and cost rates (`RateLimiter.check`, one statement;
   a refused decision writes nothing).

When step 2 or 3 refuses, the steps before it are given back (`release`) before `admit` returns.
While that happens the reservation briefly holds quota room: a concurrent request may see the
quota fuller than it ends up, never emptier (refusals are conservative, never generous).

Rate limits are charged the *estimate* (prompt tokens + `max_tokens`, the estimated cost), as
the providers' own token-per-minute limits do; quotas are settled with the actual usage.

The rate-limit configs in force for a subject are resolved in one query and kept for
`config_ttl` (5 s by default): a changed `rate_limit_configs` row applies within that time.
Counters are never cached.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.api_keys import ApiKeyPrincipal, ApiKeys
from persistence.errors import InvalidRequestError, PersistenceError
from persistence.quotas import Admission, Quotas, Reservation
from persistence.rate_limits import (
    ConcurrencyRefusal,
    ConcurrencySlot,
    RateDecision,
    RateLimiter,
    RateMetric,
    RateSubject,
    ResolvedLimits,
    rate_limit_headers,
)
from persistence.tenancy import check_tenant

__all__ = ["Grant", "LimitDecision", "LimitExceeded", "Limits", "RefusedBy"]

RefusedBy = Literal["quota", "concurrency", "rate"]
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted request: pass it to `Limits.settle` (it ran) or `Limits.release` (it failed)."""

    subject: RateSubject
    reservation: Reservation
    slot: ConcurrencySlot | None
    rate: RateDecision


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """The answer of `Limits.admit`: a `grant`, or which step refused (`refused_by`) and why.

    `quota` is always there; `rate` is None when the request was refused before the rate check,
    `concurrency` is the refusal when no slot was free."""

    grant: Grant | None
    refused_by: RefusedBy | None
    quota: Admission
    rate: RateDecision | None = None
    concurrency: ConcurrencyRefusal | None = None
    decided_at: datetime | None = None

    @property
    def allowed(self) -> bool:
        return self.grant is not None

    @property
    def retry_after(self) -> timedelta | None:
        """How long until the refusing limit has room again (None when admitted, or unknown)."""
        if self.refused_by == "rate" and self.rate is not None:
            return self.rate.retry_after
        if self.refused_by == "concurrency" and self.concurrency is not None:
            return self.concurrency.retry_after
        if self.refused_by == "quota":
            at = self.quota.retry_at
            if at is None:
                return None
            return max(timedelta(0), at - (self.decided_at or datetime.now(UTC)))
        return None

    def headers(self) -> dict[str, str]:
        """HTTP headers for the response: the rate limit's `RateLimit-*` (when one was checked) and
        `Retry-After` in whole seconds when refused and the wait is known."""
        headers = rate_limit_headers(self.rate) if self.rate is not None else {}
        headers.pop("Retry-After", None)
        wait = self.retry_after
        if not self.allowed and wait is not None:
            seconds = int(wait.total_seconds()) + (wait.total_seconds() % 1 > 0)
            headers["Retry-After"] = str(max(1, seconds))
        return headers

    def granted(self) -> Grant:
        """The grant, or `LimitExceeded` (a 429 problem in the FastAPI integration)."""
        if self.grant is None:
            raise LimitExceeded(self)
        return self.grant


class LimitExceeded(PersistenceError):
    """A request was refused by a quota, the concurrency cap or a rate limit; nothing was consumed."""

    def __init__(self, decision: LimitDecision) -> None:
        self.decision = decision
        super().__init__(f"request refused by the {decision.refused_by} limit")


class Limits:
    """API keys, quotas, concurrency and rate limits of one service, on `engine`.

    Build it once at startup (`async with Limits(engine) as limits:` or `close()` at shutdown).
    `api_keys` is built from the environment (`PERSISTENCE_API_KEY_*`) on the first `authenticate`
    when not given. `durable_rate_limits=True` commits limiter state synchronously (see
    `RateLimiter`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        api_keys: ApiKeys | None = None,
        durable_rate_limits: bool = False,
        config_ttl: timedelta = timedelta(seconds=5),
    ) -> None:
        if config_ttl < timedelta(0):
            raise InvalidRequestError("config_ttl cannot be negative")
        self.engine = engine
        self.quotas = Quotas(engine, connections=4)  # kept: no pool checkout per admission
        self.rate_limiter = RateLimiter(engine, durable=durable_rate_limits)
        self._api_keys = api_keys
        self._owns_keys = api_keys is None
        self._ttl = config_ttl.total_seconds()
        self._configs: dict[RateSubject, tuple[float, ResolvedLimits]] = {}

    async def __aenter__(self) -> Limits:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Give back the limiter's and the quotas' connections and, if this object built them, close
        the keys (writing their last uses)."""
        try:
            await self.rate_limiter.close()
        finally:
            try:
                await self.quotas.close()
            finally:
                if self._owns_keys and self._api_keys is not None:
                    await self._api_keys.close()

    @property
    def api_keys(self) -> ApiKeys:
        if self._api_keys is None:
            self._api_keys = ApiKeys(self.engine)
        return self._api_keys

    async def authenticate(self, raw_key: str, *, scopes: Iterable[str] = ()) -> ApiKeyPrincipal:
        """`ApiKeys.authenticate`: the key's principal, or an `AuthenticationError`."""
        return await self.api_keys.authenticate(raw_key, scopes=scopes)

    async def admit(
        self,
        who: ApiKeyPrincipal | RateSubject,
        *,
        prompt_tokens: int,
        max_tokens: int,
        cost_usd: Decimal,
        lease: timedelta = timedelta(minutes=5),
    ) -> LimitDecision:
        """Reserve the estimate on the quotas, take a concurrency slot, check the rates: all or
        nothing. A refusal says which step refused and when to retry; it holds nothing."""
        subject = (
            who if isinstance(who, RateSubject) else RateSubject(who.company_id, who.user_id, who.key_id)
        )
        if not subject.company_id:
            raise InvalidRequestError("a limited request needs its company_id")
        check_tenant(subject.company_id)  # each step acts as the company (tenancy.as_tenant)
        if not isinstance(cost_usd, Decimal):
            raise InvalidRequestError("cost_usd must be a Decimal")
        admission = await self.quotas.admit(
            subject.company_id,
            subject.user_id,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            cost_usd=cost_usd,
            lease=lease,
        )
        if admission.reservation is None:
            return LimitDecision(None, "quota", admission, decided_at=datetime.now(UTC))
        reservation = admission.reservation
        slot: ConcurrencySlot | None = None
        try:
            resolved = await self._resolve(subject)
            if resolved.concurrency is not None:
                scope, owner, cap = resolved.concurrency
                taken = await self.rate_limiter.acquire(subject.company_id, scope, owner, cap, lease=lease)
                if isinstance(taken, ConcurrencyRefusal):
                    await self.quotas.release(reservation)
                    return LimitDecision(None, "concurrency", admission, concurrency=taken)
                slot = taken
            usage: dict[RateMetric, Decimal] = {
                "requests": Decimal(1),
                "tokens": Decimal(prompt_tokens) + Decimal(max_tokens),
                "cost_usd": cost_usd,
            }
            rate = await self.rate_limiter.check(
                subject.company_id, [(limit, usage[limit.metric]) for limit in resolved.rates]
            )
        except BaseException:
            with contextlib.suppress(Exception):  # else the reservation and slot expire with their lease
                await self._give_back(reservation, slot)
            raise
        if not rate.allowed:
            await self._give_back(reservation, slot)
            return LimitDecision(None, "rate", admission, rate=rate)
        return LimitDecision(Grant(subject, reservation, slot, rate), None, admission, rate=rate)

    async def settle(self, grant: Grant, *, tokens: int, cost_usd: Decimal, requests: int = 1) -> bool:
        """Count the actual usage on the quotas (once) and free the concurrency slot; True if this
        call counted it."""
        try:
            return await self.quotas.settle(
                grant.reservation, tokens=tokens, cost_usd=cost_usd, requests=requests
            )
        finally:
            if grant.slot is not None:
                await self.rate_limiter.release(grant.slot)

    async def release(self, grant: Grant) -> bool:
        """The request failed: give its quota reservation and slot back; True if this call did it."""
        try:
            return await self.quotas.release(grant.reservation)
        finally:
            if grant.slot is not None:
                await self.rate_limiter.release(grant.slot)

    async def _give_back(self, reservation: Reservation, slot: ConcurrencySlot | None) -> None:
        try:
            await self.quotas.release(reservation)
        finally:
            if slot is not None:
                await self.rate_limiter.release(slot)

    async def _resolve(self, subject: RateSubject) -> ResolvedLimits:
        now = time.monotonic()
        cached = self._configs.get(subject)
        if cached is not None and cached[0] > now:
            return cached[1]
        resolved = await self.rate_limiter.resolve(subject)
        if self._ttl > 0:
            if len(self._configs) >= _CACHE_ENTRIES:
                self._configs.clear()
            self._configs[subject] = (now + self._ttl, resolved)
        return resolved
