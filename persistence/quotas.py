"""Exact request, token and cost quotas per user and per company, with no reset job.

`Quotas(engine).admit(...)` reserves a request's estimate (1 request, prompt estimate +
max_tokens, estimated USD) against every applicable limit (the user's `quotas` row, the company's
`company_quotas` rows) in one statement, all or nothing; `settle` replaces the reservation by the
actual usage (once, however often it is called), `release` drops it. Reservations hold their room
until a lease expires; the next admission on the same counter frees expired holds. Usage counters
are rows per period (`quota_counters`), so a new period starts from zero by being a new row.
Periods are hourly/daily/weekly/monthly in a named IANA time zone, or a rolling window (whole
minutes, counted in 60 buckets: the window slides a bucket at a time).

Billing usage is kept apart from those counters (which a manual reset zeroes): the statement that
settles a reservation also adds its actual usage to seed 001's `usage` rows (daily and monthly, on
the user's local dates), and `rebuild_usage` recomputes them from the settled reservations.

Decisions run on the database server's clock; every method takes `now` for callers (and tests)
that drive time explicitly. Statements are in `quotas_sql.py`; why they are exact is explained there.

Row-level security (revision 0026): every call names its company (a reservation or counter carries
it) and acts as that tenant (`tenancy.as_tenant`), so a service login can run each of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import quotas_sql as sql
from persistence.advisory import advisory_key
from persistence.ai_calls.alerts import _load_zone
from persistence.ai_calls.leases import Leases
from persistence.ai_calls.rollups import _on_raw
from persistence.errors import (
    Endpoint,
    InvalidRequestError,
    NotFoundError,
    TransientError,
    translated,
)
from persistence.models.limits import QUOTA_METRICS, QUOTA_PERIODS
from persistence.models.usage import USAGE_PERIODS
from persistence.tenancy import as_tenant, check_tenant

__all__ = [
    "TIERS",
    "Admission",
    "CounterState",
    "LimitState",
    "QuotaLimits",
    "Quotas",
    "RemainingTokens",
    "Reservation",
    "ResetOutcome",
    "TierRecommendation",
    "UsageRow",
]

Scope = Literal["user", "company"]
T = TypeVar("T")


@dataclass(frozen=True)
class QuotaLimits:
    """A user's limits per period; None = unlimited (usage is still counted)."""

    requests: int | None
    tokens: int | None
    cost_usd: Decimal | None = None


# Seed 001's tiers. Its "tiered pricing analysis" recommends basic below 100,000 tokens a month,
# standard below 1,000,000, premium above: the token limits here are those ceilings.
TIERS: dict[str, QuotaLimits] = {
    "basic": QuotaLimits(requests=1_000, tokens=100_000),
    "standard": QuotaLimits(requests=10_000, tokens=1_000_000),
    "premium": QuotaLimits(requests=None, tokens=None),
}
CALENDAR_PERIODS = tuple(p for p in QUOTA_PERIODS if p != "rolling")
_BASIC_CEILING = 100_000
_STANDARD_CEILING = 1_000_000
_ATTEMPTS = 10  # a new period's (or bucket's) row is created by one attempt; more means churn
# Class of the per-company advisory lock (two-int form: hashtext(company_id) is the other half)
# that settlements take shared and `rebuild_usage` exclusively.
_USAGE_LOCK_CLASS = advisory_key("persistence.quotas.usage") >> 32


@dataclass(frozen=True)
class LimitState:
    """One applicable limit as admission saw it (latest committed values, under its row lock).

    For a rolling window, `period_start` is where the window starts (its oldest bucket), and
    `used`/`held` are the sums over its buckets."""

    scope: Scope
    subject_id: str
    metric: str
    period: str
    period_start: datetime
    period_end: datetime
    limit: Decimal | None
    used: Decimal
    held: Decimal
    requested: Decimal
    frees_at: datetime | None
    """When this limit has room for the request again at the latest: the period's end (a new row
    starts at 0), or for a rolling window when enough of the oldest buckets have left it; None if
    the request is larger than the limit."""

    @property
    def in_use(self) -> Decimal:
        """Settled usage plus live holds: what the limit is compared with."""
        return self.used + self.held

    @property
    def has_room(self) -> bool:
        return self.limit is None or self.in_use + self.requested <= self.limit


@dataclass(frozen=True)
class Reservation:
    """An admitted request's hold; pass it to `settle` or `release`."""

    company_id: str
    id: uuid.UUID
    expires_at: datetime


@dataclass(frozen=True)
class Admission:
    """The answer of `admit`: admitted with a reservation, or which limits refused and until when."""

    admitted: bool
    reservation: Reservation | None
    limits: tuple[LimitState, ...]

    @property
    def refused_by(self) -> tuple[LimitState, ...]:
        return () if self.admitted else tuple(limit for limit in self.limits if not limit.has_room)

    @property
    def retry_at(self) -> datetime | None:
        """When every refusing limit has room again (None when admitted, or never)."""
        frees = [limit.frees_at for limit in self.refused_by]
        known = [moment for moment in frees if moment is not None]
        return max(known) if known and len(known) == len(frees) else None


@dataclass(frozen=True)
class CounterState:
    """One counter of the current period, with the version a reset or override must name."""

    id: int
    company_id: str
    scope: Scope
    subject_id: str
    metric: str
    period: str
    period_start: datetime
    period_end: datetime
    limit: Decimal | None
    used: Decimal
    held: Decimal
    version: int


@dataclass(frozen=True)
class ResetOutcome:
    """A manual reset or override as recorded in `rate_limit_resets`; `applied` is False when
    another admin changed the counter first (the compare-and-swap lost)."""

    reset_id: int
    applied: bool


@dataclass(frozen=True)
class RemainingTokens:
    """Seed 001's "remaining tokens": the limit minus settled usage and live holds."""

    limit: int | None
    used: int
    held: int
    period_start: datetime
    period_end: datetime

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else self.limit - self.used - self.held


@dataclass(frozen=True)
class UsageRow:
    """A row of seed 001's `usage` table (the user's local dates, `period_end` inclusive)."""

    user_id: str
    period: str
    period_start: date
    period_end: date
    requests_count: int
    tokens_used: int
    cost_usd: Decimal


@dataclass(frozen=True)
class TierRecommendation:
    """A row of seed 001's "tiered pricing analysis"."""

    user_id: str
    max_requests: int
    max_tokens: int
    recommended_tier: str


def _amount(name: str, value: int | Decimal) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InvalidRequestError(f"{name} must be an int or Decimal, got {type(value).__name__}")
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise InvalidRequestError(f"{name} must be a finite amount >= 0, got {value}")
    return amount


def _window_seconds(period: str, window: timedelta | None) -> int | None:
    if (period == "rolling") != (window is not None):
        raise InvalidRequestError("a rolling period takes a window, and only a rolling period does")
    if window is None:
        return None
    seconds = window.total_seconds()
    if seconds % 60 or not 60 <= seconds <= 31 * 86400:
        raise InvalidRequestError(f"a rolling window is whole minutes, 1 minute to 31 days, got {window}")
    return int(seconds)


def _moment(now: datetime | None) -> datetime | None:
    if now is not None and now.utcoffset() is None:
        raise InvalidRequestError("now must be timezone-aware")
    return now


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequestError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _limit_state(row: asyncpg.Record) -> LimitState:
    return LimitState(
        scope=row["scope"],
        subject_id=row["subject_id"],
        metric=row["metric"],
        period=row["period"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        limit=row["lim"],
        used=row["used"] if row["used"] is not None else Decimal(0),
        held=row["held"] if row["held"] is not None else Decimal(0),
        requested=row["amount"],
        frees_at=row["frees_at"],
    )


class Quotas:
    """Quota settings, admission, settlement, manual resets and seed 001's reports on one engine."""

    def __init__(self, engine: AsyncEngine, *, connections: int = 0) -> None:
        """`connections=n` keeps up to n pooled connections for this object's statements (close it,
        or use `async with`): no pool checkout per call, for a service's hot path. 0: a checkout
        per call."""
        if connections < 0:
            raise InvalidRequestError("connections must be >= 0")
        self._engine = engine
        self._leases = (
            Leases(engine, connections, Endpoint.of_url(engine.url), owner="Quotas") if connections else None
        )

    async def __aenter__(self) -> Quotas:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Give back the kept connections (nothing to do without `connections`)."""
        if self._leases is not None:
            await self._leases.close()

    # -- settings ---------------------------------------------------------------------------

    async def set_user_quota(
        self,
        company_id: str,
        user_id: str,
        *,
        tier: str = "basic",
        limits: QuotaLimits | None = None,
        reset_frequency: str = "monthly",
        time_zone: str = "UTC",
        window: timedelta | None = None,
    ) -> int:
        """Create or replace a user's quota for `reset_frequency`; `limits` default to the tier's.
        `reset_frequency="rolling"` takes a `window` (whole minutes, at most 31 days)."""
        _choice("tier", tier, tuple(TIERS))
        _choice("reset_frequency", reset_frequency, QUOTA_PERIODS)
        _load_zone(time_zone)
        chosen = limits or TIERS[tier]
        cost = None if chosen.cost_usd is None else _amount("cost_usd", chosen.cost_usd)
        seconds = _window_seconds(reset_frequency, window)
        args = (
            company_id,
            user_id,
            tier,
            chosen.requests,
            chosen.tokens,
            cost,
            reset_frequency,
            time_zone,
            seconds,
        )

        async def work(raw: asyncpg.Connection) -> int:
            value: int = await raw.fetchval(sql.UPSERT_USER_QUOTA, *args)
            return value

        return await self._run(company_id, None, work)

    async def set_company_quota(
        self,
        company_id: str,
        metric: str,
        period: str,
        limit: int | Decimal,
        *,
        time_zone: str = "UTC",
        window: timedelta | None = None,
    ) -> int:
        """Create or replace a company's limit of `metric` per calendar `period` in `time_zone`,
        or per rolling `window` (`period="rolling"`)."""
        _choice("metric", metric, QUOTA_METRICS)
        _choice("period", period, QUOTA_PERIODS)
        _load_zone(time_zone)
        seconds = _window_seconds(period, window)
        args = (company_id, metric, period, time_zone, _amount("limit", limit), seconds)

        async def work(raw: asyncpg.Connection) -> int:
            value: int = await raw.fetchval(sql.UPSERT_COMPANY_QUOTA, *args)
            return value

        return await self._run(company_id, None, work)

    # -- admission ----------------------------------------------------------------------------

    async def admit(
        self,
        company_id: str,
        user_id: str | None,
        *,
        prompt_tokens: int,
        max_tokens: int,
        cost_usd: Decimal,
        requests: int = 1,
        lease: timedelta = timedelta(minutes=5),
        reservation_id: uuid.UUID | None = None,
        on: asyncpg.Connection | None = None,
        now: datetime | None = None,
    ) -> Admission:
        """Reserve the estimate against every limit of the user and the company, or nothing.

        One statement per attempt; a second attempt happens only when a counter row of a new
        period had to be created first (once per subject and period). `reservation_id` names the
        reservation (e.g. the request's id; a new uuid by default). `on`: run on the caller's
        asyncpg connection, inside its transaction (a request's status change and its quota
        commit together), instead of a pooled connection."""
        tokens = _amount("prompt_tokens", prompt_tokens) + _amount("max_tokens", max_tokens)
        args = (
            company_id,
            user_id,
            _moment(now),
            _amount("requests", requests),
            tokens,
            _amount("cost_usd", cost_usd),
            reservation_id or uuid.uuid4(),
            lease.total_seconds(),
        )
        if lease <= timedelta(0):
            raise InvalidRequestError("lease must be positive")
        return await self._run(company_id, on, lambda raw: _admit_raw(raw, company_id, args))

    async def settle(
        self,
        reservation: Reservation,
        *,
        tokens: int,
        cost_usd: Decimal,
        requests: int = 1,
        on: asyncpg.Connection | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Replace the reservation by the actual usage; True if this call counted it (a second
        settle, or one after `release`, counts nothing). A reservation whose lease expired still
        counts its actual usage: the work happened. `on` as for `admit`."""
        return await self._finish(
            reservation,
            "settled",
            (_amount("requests", requests), _amount("tokens", tokens), _amount("cost_usd", cost_usd)),
            now,
            on,
        )

    async def release(
        self, reservation: Reservation, *, on: asyncpg.Connection | None = None, now: datetime | None = None
    ) -> bool:
        """Drop the reservation (the request failed): nothing is counted. True if this call did it."""
        zero = Decimal(0)
        return await self._finish(reservation, "released", (zero, zero, zero), now, on)

    async def _run(
        self,
        company_id: str,
        on: asyncpg.Connection | None,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
    ) -> T:
        """`work` on the caller's connection (`on`), else a kept one, else a pooled checkout, acting
        for `company_id` (`tenancy.as_tenant`; on `on`, inside the caller's transaction, that is a
        savepoint setting the tenant). Refused before any statement inside another company's
        `tenant()` context."""
        check_tenant(company_id)

        def tenanted(raw: asyncpg.Connection) -> Awaitable[T]:
            return as_tenant(raw, company_id, work)

        if on is not None:
            with translated(Endpoint.of_url(self._engine.url)):
                return await tenanted(on)
        if self._leases is not None:
            # No retry on a lost connection: an admission may have committed before it was lost.
            async with self._leases.connection() as raw:
                return await tenanted(raw)
        return await _on_raw(self._engine, tenanted)

    async def _finish(
        self,
        reservation: Reservation,
        state: str,
        actual: tuple[Decimal, Decimal, Decimal],
        now: datetime | None,
        on: asyncpg.Connection | None = None,
    ) -> bool:
        args = (reservation.company_id, reservation.id, *actual, state, _moment(now), _USAGE_LOCK_CLASS)

        async def work(raw: asyncpg.Connection) -> bool:
            row = await raw.fetchrow(sql.FINISH, *args)
            assert row is not None
            if not row["known"]:
                raise NotFoundError("quota reservation", reservation.id)
            counted: bool = row["counted"]
            return counted

        return await self._run(reservation.company_id, on, work)

    # -- admin: current counters, resets and overrides ---------------------------------------------

    async def counters(
        self, company_id: str, user_id: str | None = None, *, now: datetime | None = None
    ) -> list[CounterState]:
        """The counters of the periods containing `now` for the company (and the user), created if
        missing; each carries the `version` that `reset`/`override` compare against."""
        args = (company_id, user_id, _moment(now))

        async def work(raw: asyncpg.Connection) -> list[CounterState]:
            await raw.execute(sql.ENSURE_COUNTERS, *args)
            rows = await raw.fetch(sql.COUNTERS, *args)
            return [
                CounterState(
                    id=r["id"],
                    company_id=company_id,
                    scope=r["scope"],
                    subject_id=r["subject_id"],
                    metric=r["metric"],
                    period=r["period"],
                    period_start=r["period_start"],
                    period_end=r["period_end"],
                    limit=r["lim"],
                    used=r["used"],
                    held=r["held"],
                    version=r["version"],
                )
                for r in rows
            ]

        return await self._run(company_id, None, work)

    async def reset(self, counter: CounterState, *, requested_by: str, reason: str) -> ResetOutcome:
        """Set the counter's settled usage to 0 if nobody changed it since `counter` was read;
        recorded in `rate_limit_resets` either way (live holds stay: those requests are running).
        For a rolling window the counter is its current bucket."""
        return await self._cas(counter, "reset", None, requested_by, reason)

    async def override(
        self, counter: CounterState, limit: int | Decimal, *, requested_by: str, reason: str
    ) -> ResetOutcome:
        """Replace the counter's limit for its period only, with the same compare-and-swap."""
        return await self._cas(counter, "override", _amount("limit", limit), requested_by, reason)

    async def _cas(
        self, counter: CounterState, action: str, limit: Decimal | None, requested_by: str, reason: str
    ) -> ResetOutcome:
        if not requested_by or not reason:
            raise InvalidRequestError("a reset names who asked for it and why")
        args = (counter.company_id, counter.id, action, limit, counter.version, requested_by, reason)

        async def work(raw: asyncpg.Connection) -> ResetOutcome:
            row = await raw.fetchrow(sql.RESET, *args)
            if row is None:
                raise NotFoundError("quota counter", counter.id)
            return ResetOutcome(reset_id=row["id"], applied=row["applied"])

        return await self._run(counter.company_id, None, work)

    # -- seed 001's reports -------------------------------------------------------------------------

    async def remaining_tokens(
        self,
        company_id: str,
        user_id: str,
        *,
        reset_frequency: str = "monthly",
        now: datetime | None = None,
    ) -> RemainingTokens | None:
        """Seed 001's quota check: the user's token limit minus this period's usage (None: no quota)."""
        _choice("reset_frequency", reset_frequency, QUOTA_PERIODS)
        args = (company_id, user_id, _moment(now), reset_frequency)

        async def work(raw: asyncpg.Connection) -> RemainingTokens | None:
            row = await raw.fetchrow(sql.REMAINING_TOKENS, *args)
            if row is None:
                return None
            limit = row["effective"]
            return RemainingTokens(
                limit=None if limit is None else int(limit),
                used=int(row["used"]),
                held=int(row["held"]),
                period_start=row["period_start"],
                period_end=row["period_end"],
            )

        return await self._run(company_id, None, work)

    async def usage_report(
        self, company_id: str, *, period: str = "monthly", now: datetime | None = None
    ) -> list[UsageRow]:
        """Seed 001's usage report: per user, the daily or monthly period containing `now` in the
        user's zone, from `usage` (billing usage: a manual reset of a quota counter leaves it as is)."""
        _choice("period", period, USAGE_PERIODS)
        args = (company_id, period, _moment(now))

        async def work(raw: asyncpg.Connection) -> list[UsageRow]:
            rows = await raw.fetch(sql.USAGE_REPORT, *args)
            return [
                UsageRow(
                    user_id=r["user_id"],
                    period=r["period"],
                    period_start=r["period_start"],
                    period_end=r["period_end"],
                    requests_count=r["requests_count"],
                    tokens_used=r["tokens_used"],
                    cost_usd=r["cost_usd"],
                )
                for r in rows
            ]

        return await self._run(company_id, None, work)

    async def rebuild_usage(self, company_id: str, since: date, until: date) -> int:
        """Recompute the company's `usage` rows whose period starts in [since, until) (local dates)
        from its settled reservations, in one transaction; returns the rows written.

        Equal to what settlements wrote: each reservation is filed by its admission instant in the
        zone its settlement recorded. The company's usage lock (exclusive here, shared by every
        settlement) makes the rebuild see either all or none of a settlement. A monthly row is
        rebuilt whole when its first day is in the window; one starting before `since` is kept.
        Only reservations still stored can be counted."""
        for name, value in (("since", since), ("until", until)):
            if isinstance(value, datetime) or not isinstance(value, date):
                raise InvalidRequestError(f"{name} must be a date (local dates key the usage rows)")
        if until <= since:
            raise InvalidRequestError("invalid window: until must be after since")

        async def work(raw: asyncpg.Connection) -> int:
            async with raw.transaction():
                await raw.execute(sql.USAGE_LOCK, _USAGE_LOCK_CLASS, company_id)
                await raw.execute(sql.USAGE_DELETE, company_id, since, until)
                status: str = await raw.execute(sql.USAGE_REBUILD, company_id, since, until)
            return int(status.rsplit(" ", 1)[1])

        return await self._run(company_id, None, work)

    async def tier_analysis(self, company_id: str) -> list[TierRecommendation]:
        """Seed 001's tiered pricing analysis over every monthly `usage` row of the company's users."""

        async def work(raw: asyncpg.Connection) -> list[TierRecommendation]:
            rows = await raw.fetch(sql.TIER_ANALYSIS, company_id, _BASIC_CEILING, _STANDARD_CEILING)
            return [
                TierRecommendation(
                    user_id=r["user_id"],
                    max_requests=r["max_requests"],
                    max_tokens=r["max_tokens"],
                    recommended_tier=r["recommended_tier"],
                )
                for r in rows
            ]

        return await self._run(company_id, None, work)


async def _admit_raw(raw: asyncpg.Connection, company_id: str, args: Sequence[object]) -> Admission:
    for _ in range(_ATTEMPTS):
        rows = await raw.fetch(sql.ADMIT, *args)
        if any(r["missing"] for r in rows):
            continue  # the statement created this period's counter rows; decide on them now
        first = rows[0]
        limits = tuple(_limit_state(r) for r in rows if r["scope"] is not None)
        if not first["admitted"]:
            return Admission(admitted=False, reservation=None, limits=limits)
        reservation_id = args[6]
        assert isinstance(reservation_id, uuid.UUID)
        return Admission(
            admitted=True,
            reservation=Reservation(company_id=company_id, id=reservation_id, expires_at=first["expires_at"]),
            limits=limits,
        )
    raise TransientError(f"quota counters of company {company_id!r} kept changing; try again")
