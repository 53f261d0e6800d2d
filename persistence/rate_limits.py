"""Rate limits: GCRA decisions and concurrency leases, each one statement on the server's clock.

**Configs** (`rate_limit_configs`) are resolved in one query: per (metric, period) the most
specific enabled row wins, key > user > company > tier > global. The winner also names whose
counter it limits: a key row limits that key, a user row that user, and company, tier and global
rows each company (a global default is per company, never one counter for everybody).

**GCRA**: a counter's state is its theoretical arrival time `tat`. With emission interval
`T = period / limit` and tolerance `tau = burst * T`, a request of `n` units is admitted when
`max(tat, now) + n*T - now <= tau`, and then `tat` becomes `max(tat, now) + n*T`. An empty bucket
admits exactly `burst` units at once, then one unit every `T`. A refused request changes nothing.
`tat` is NUMERIC epoch seconds and `T` a Decimal computed once per limit, so sums are exact: no
rounding admits one unit too many or too few.

- One limit: `INSERT ... ON CONFLICT DO UPDATE ... WHERE <fits> RETURNING` (the row is created
  on first use; no row returned = refused, nothing written).
- Several limits (requests + tokens for key, user and company): one statement locks the existing
  rows in key order (`FOR UPDATE`, so concurrent callers cannot deadlock and see the latest
  values), decides every limit, and updates them all only if all fit. A counter used for the very
  first time has no row to lock: the statement then writes nothing, the missing rows are inserted
  (`ON CONFLICT DO NOTHING`, empty buckets) and the decision runs again; only first use pays that.
- Concurrency: slots 0..limit-1 per subject; acquire claims the lowest free one (lease expired)
  with `FOR UPDATE SKIP LOCKED`, release and renew are fenced by the holder's uuid.

Time is `clock_timestamp()` of the server; `now=` exists for tests only.

**Durability.** Limiter statements run on connections leased from the engine's pool, one implicit
transaction each (one round trip). By default (`durable=False`) they commit with
`synchronous_commit = off`, set with `set_config(..., true)` inside the statement itself: the
commit returns before its WAL is flushed, so a server crash may forget the last fraction of a
second (at most `wal_writer_delay` x 3) of limiter state: a few requests may be admitted again
after a crash. Never quota or ledger data: the setting is local to the limiter's own
transactions. `durable=True` keeps the server's setting. Both tables are LOGGED on purpose: an
UNLOGGED table is truncated by crash recovery (every bucket refilled at once, not just the last
instant forgotten) and is absent on replicas (a failover forgets everything), while asynchronous
commit already removes the flush wait that bounds a hot key (see BENCHMARKS.md).

A decision retried after a lost connection (the leases' one retry) may count twice: limiter
errors are conservative, never generous.

**Row-level security** (revision 0026): every call names its company (a subject or a slot carries
it) and acts as that tenant (`tenancy.as_tenant`): a service login decides on its own counters and
resolves its configs from the global rows (`''`, visible to every tenant) and its own overrides.
Under RLS each statement runs in a transaction that sets the tenant first (two more round trips).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Context, Decimal, localcontext
from typing import Literal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.leases import Leases
from persistence.errors import Endpoint, InvalidRequestError

__all__ = [
    "ConcurrencyRefusal",
    "ConcurrencySlot",
    "LimitStatus",
    "RateDecision",
    "RateLimit",
    "RateLimiter",
    "RateSubject",
    "ResolvedLimits",
    "rate_limit_headers",
]

CounterScope = Literal["key", "user", "company"]
RateMetric = Literal["requests", "tokens", "cost_usd"]
PERIOD_SECONDS: Mapping[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_ZERO = Decimal(0)
# T is rounded once, to 28 digits; every product and sum after that is exact in this context
# (amounts have at most 20 digits, epoch seconds 10 before the point), as NUMERIC is on the server.
_INTERVAL = Context(prec=28)
_EXACT = Context(prec=100)


@dataclass(frozen=True, slots=True)
class RateSubject:
    """Who is asking: a company (tenant), optionally one of its users and API keys, and its tier."""

    company_id: str
    user_id: str | None = None
    key_id: str | None = None
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`limit` units of `metric` per `period` on one counter (scope, subject), with a `burst`."""

    scope: CounterScope
    subject: str
    metric: RateMetric
    period: str
    limit: Decimal
    burst: Decimal | None = None

    def __post_init__(self) -> None:
        if self.period not in PERIOD_SECONDS:
            raise InvalidRequestError(f"unknown rate period {self.period!r}; one of {sorted(PERIOD_SECONDS)}")
        if self.limit < 0 or (self.burst is not None and self.burst < self.limit):
            raise InvalidRequestError("a rate limit needs limit >= 0 and burst >= limit")

    @property
    def capacity(self) -> Decimal:
        """Units an empty bucket admits at once."""
        return self.limit if self.burst is None else self.burst

    @property
    def interval(self) -> Decimal:
        """Seconds one unit occupies (GCRA's emission interval T); the limit must be positive."""
        return _INTERVAL.divide(Decimal(PERIOD_SECONDS[self.period]), self.limit)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.scope, self.subject, self.metric, self.period)


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """One limit's answer: whether the request fits, what is left, when it would fit, when full."""

    limit: RateLimit
    fits: bool
    remaining: Decimal
    retry_after: timedelta | None  # None when it fits, or can never fit (amount above the burst)
    reset: timedelta  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The verdict over every limit checked at once; the headline fields are the binding limit's.

    Binding limit: when refused, the refusing limit that frees up last; when allowed, the one with
    the least remaining. `limit` is None when no limit applied.
    """

    allowed: bool
    remaining: Decimal | None
    retry_after: timedelta | None
    reset: timedelta
    limit: RateLimit | None
    statuses: tuple[LimitStatus, ...] = ()

    @property
    def refused_by(self) -> tuple[RateLimit, ...]:
        return tuple(s.limit for s in self.statuses if not s.fits)


@dataclass(frozen=True, slots=True)
class ResolvedLimits:
    """The configs in force for a subject, as counters: rates, and the concurrency cap if any."""

    rates: tuple[RateLimit, ...]
    concurrency: tuple[CounterScope, str, int] | None = None


@dataclass(frozen=True, slots=True)
class ConcurrencySlot:
    """A held concurrency slot: free again at `expires_at` unless renewed, or when released."""

    company_id: str
    scope: str
    subject: str
    slot: int
    holder: uuid.UUID
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ConcurrencyRefusal:
    """No free slot: `retry_after` is when the earliest lease runs out (a release may come sooner)."""

    retry_after: timedelta | None = None


def _ceil_seconds(delta: timedelta) -> int:
    return max(0, math.ceil(delta.total_seconds()))


def rate_limit_headers(decision: RateDecision) -> dict[str, str]:
    """The standard headers for a decision: `RateLimit-Limit/-Remaining/-Reset` (seconds) and
    `RateLimit-Policy` (IETF httpapi draft), plus `Retry-After` (RFC 9110, seconds) when refused
    and the request can fit later. Empty when no limit applied."""
    limit = decision.limit
    if limit is None:
        return {}
    window = PERIOD_SECONDS[limit.period]
    headers = {
        "RateLimit-Limit": f"{limit.limit.normalize():f}",
        "RateLimit-Remaining": str(max(0, math.floor(decision.remaining or _ZERO))),
        "RateLimit-Reset": str(_ceil_seconds(decision.reset)),
        "RateLimit-Policy": f"{limit.limit.normalize():f};w={window}",
    }
    if not decision.allowed and decision.retry_after is not None:
        headers["Retry-After"] = str(max(1, _ceil_seconds(decision.retry_after)))
    return headers


_PRECEDENCE = (
    "CASE scope WHEN 'key' THEN 5 WHEN 'user' THEN 4 WHEN 'company' THEN 3 WHEN 'tier' THEN 2 ELSE 1 END"
)

_RESOLVE = f"""
SELECT DISTINCT ON (metric, period) scope, metric, period, limit_value, burst
  FROM rate_limit_configs
 WHERE enabled AND (
       scope = 'global'
    OR (scope = 'tier' AND scope_id = coalesce(nullif($2, ''),
                                               (SELECT tier FROM companies WHERE company_id = $1)))
    OR (company_id = $1 AND (scope = 'company'
         OR (scope = 'user' AND scope_id = $3)
         OR (scope = 'key' AND scope_id = $4))))
 ORDER BY metric, period, {_PRECEDENCE} DESC
"""  # noqa: S608 (constant SQL only)


def _clock(durable: bool, now_type: str) -> str:
    sc = "" if durable else ", set_config('synchronous_commit', 'off', true) AS sc"
    source = "extract(epoch FROM clock_timestamp())" if now_type == "numeric" else "clock_timestamp()"
    return f"clock AS (SELECT coalesce($1::{now_type}, {source}) AS t{sc})"


def _single_sql(durable: bool) -> str:
    return f"""
WITH {_clock(durable, "numeric")},
up AS (
  INSERT INTO rate_limit_state AS s (company_id, scope, subject, metric, period, tat)
  SELECT $2, $3, $4, $5, $6, clock.t + $7::numeric FROM clock
  ON CONFLICT (company_id, scope, subject, metric, period) DO UPDATE
     SET tat = greatest(s.tat + $7::numeric, excluded.tat)
   WHERE greatest(s.tat + $7::numeric, excluded.tat) <= excluded.tat + ($8::numeric - $7::numeric)
  RETURNING s.tat)
SELECT clock.t AS now, (SELECT tat FROM up) AS tat,
       (SELECT s.tat FROM rate_limit_state s
         WHERE s.company_id = $2 AND s.scope = $3 AND s.subject = $4 AND s.metric = $5 AND s.period = $6
           AND NOT EXISTS (SELECT FROM up) FOR SHARE) AS seen
  FROM clock
"""  # noqa: S608 (constant SQL only)


def _multi_sql(durable: bool) -> str:
    return f"""
WITH {_clock(durable, "numeric")},
input AS (
  SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::numeric[], $8::numeric[])
         WITH ORDINALITY AS i(scope, subject, metric, period, inc, tau, ord)),
locked AS (
  SELECT s.scope, s.subject, s.metric, s.period, s.tat FROM rate_limit_state s
   WHERE s.company_id = $2
     AND (s.scope, s.subject, s.metric, s.period) IN (SELECT scope, subject, metric, period FROM input)
   ORDER BY s.scope, s.subject, s.metric, s.period
     FOR UPDATE),
decided AS (
  SELECT i.ord, i.scope, i.subject, i.metric, i.period, i.inc, c.t, l.tat AS seen,
         l.tat IS NOT NULL AS present, greatest(l.tat, c.t) + i.inc <= c.t + i.tau AS fits
    FROM input i CROSS JOIN clock c LEFT JOIN locked l USING (scope, subject, metric, period)),
verdict AS (SELECT bool_and(present) AND bool_and(fits) AS go FROM decided),
upd AS (
  UPDATE rate_limit_state s SET tat = greatest(d.seen, d.t) + d.inc
    FROM decided d, verdict v
   WHERE v.go AND s.company_id = $2 AND s.scope = d.scope AND s.subject = d.subject
     AND s.metric = d.metric AND s.period = d.period
  RETURNING 1)
SELECT d.ord, d.t AS now, d.seen, d.present, d.fits, (SELECT count(*) FROM upd) AS written
  FROM decided d ORDER BY d.ord
"""  # noqa: S608 (constant SQL only)


_CREATE_MISSING = """
INSERT INTO rate_limit_state (company_id, scope, subject, metric, period, tat)
SELECT $1, i.* , 0 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS i
ON CONFLICT DO NOTHING
"""


def _acquire_sql(durable: bool) -> str:
    return f"""
WITH {_clock(durable, "timestamptz")},
free AS (
  SELECT s.slot FROM rate_limit_slots s, clock
   WHERE s.company_id = $2 AND s.scope = $3 AND s.subject = $4 AND s.slot < $5 AND s.expires_at <= clock.t
   ORDER BY s.slot LIMIT 1
     FOR UPDATE OF s SKIP LOCKED),
taken AS (
  UPDATE rate_limit_slots s SET holder = $6, expires_at = clock.t + $7::interval
    FROM free, clock
   WHERE s.company_id = $2 AND s.scope = $3 AND s.subject = $4 AND s.slot = free.slot
  RETURNING s.slot, s.expires_at),
known AS (
  SELECT count(*) AS n, extract(epoch FROM min(s.expires_at) FILTER (WHERE s.expires_at > clock.t) - max(clock.t)) AS wait
    FROM rate_limit_slots s, clock
   WHERE s.company_id = $2 AND s.scope = $3 AND s.subject = $4 AND s.slot < $5)
SELECT clock.t AS now, (SELECT slot FROM taken) AS slot, (SELECT expires_at FROM taken) AS expires_at,
       known.n, known.wait
  FROM clock, known
"""  # noqa: S608 (constant SQL only)


_CREATE_SLOTS = """
INSERT INTO rate_limit_slots (company_id, scope, subject, slot)
SELECT $1, $2, $3, g FROM generate_series(0, $4::int - 1) AS g
ON CONFLICT DO NOTHING
"""


def _release_sql(durable: bool) -> str:
    return f"""
WITH {_clock(durable, "timestamptz")}
UPDATE rate_limit_slots s SET holder = NULL, expires_at = '-infinity'
  FROM clock
 WHERE s.company_id = $2 AND s.scope = $3 AND s.subject = $4 AND s.slot = $5 AND s.holder = $6
RETURNING s.slot
"""  # noqa: S608 (constant SQL only)


def _renew_sql(durable: bool) -> str:
    return f"""
WITH {_clock(durable, "timestamptz")}
UPDATE rate_limit_slots s SET expires_at = clock.t + $7::interval
  FROM clock
 WHERE s.company_id = $2 AND s.scope = $3 AND s.subject = $4 AND s.slot = $5 AND s.holder = $6
   AND s.expires_at > clock.t
RETURNING s.expires_at
"""  # noqa: S608 (constant SQL only)


def _one(row: asyncpg.Record | None) -> asyncpg.Record:
    """The one row a statement selecting FROM its clock always returns."""
    if row is None:  # pragma: no cover - the statements select from a one-row CTE
        raise InvalidRequestError("the limiter statement returned no row")
    return row


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch(moment: datetime) -> Decimal:
    """Exact epoch seconds of an aware datetime (float timestamps lose microseconds)."""
    if moment.tzinfo is None:
        raise InvalidRequestError("now must be timezone-aware")
    delta = moment - _EPOCH
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)


def _seconds(value: Decimal) -> timedelta:
    return timedelta(seconds=float(max(value, _ZERO)))


def _units(limit: RateLimit, span: Decimal, interval: Decimal) -> Decimal:
    """`span` seconds of bucket as units of the limit's metric: whole for counts, micro-dollars for
    cost, never negative."""
    value = _INTERVAL.divide(span, interval)
    step = Decimal("0.000001") if limit.metric == "cost_usd" else Decimal(1)
    return max(_ZERO, value.quantize(step, rounding=ROUND_FLOOR, context=_EXACT))


def _status(
    limit: RateLimit,
    amount: Decimal,
    now: Decimal,
    seen: Decimal | None,
    after: Decimal | None,
    *,
    refused: bool = False,
) -> LimitStatus:
    """One limit's status: `after` is its new tat when admitted, `seen` its tat otherwise.

    `refused`: the server refused this limit, so the true tat is above `now + tau - amount*T`
    even if `seen` (read after the refusal) is older or missing (a concurrent first use).
    Sums are exact (`_EXACT`); the one division per figure is correctly rounded to 28 digits,
    so a whole number of units left comes out whole."""
    interval = limit.interval
    with localcontext(_EXACT):
        tau = limit.capacity * interval
        if after is not None:
            return LimitStatus(
                limit, True, _units(limit, now + tau - after, interval), None, _seconds(after - now)
            )
        base = now if seen is None else max(seen, now)
        if refused:
            base = max(base, now + tau - amount * interval + interval.scaleb(-9))
        late = base + amount * interval - tau - now
        fits = late <= 0
        wait = None if fits or amount > limit.capacity else _seconds(late)
        return LimitStatus(limit, fits, _units(limit, now + tau - base, interval), wait, _seconds(base - now))


def _blocked(limit: RateLimit) -> LimitStatus:
    """A limit of 0, or an amount above its burst: never fits, nothing to ask the server."""
    return LimitStatus(limit, False, _ZERO, None, timedelta(0))


def _decision(statuses: Sequence[LimitStatus], allowed: bool) -> RateDecision:
    if not statuses:
        return RateDecision(True, None, None, timedelta(0), None)
    if allowed:
        head = min(statuses, key=lambda s: s.remaining / s.limit.capacity if s.limit.capacity else _ZERO)
    else:
        refusing = [s for s in statuses if not s.fits]
        never = [s for s in refusing if s.retry_after is None]
        head = never[0] if never else max(refusing, key=lambda s: s.retry_after or timedelta(0))
    return RateDecision(allowed, head.remaining, head.retry_after, head.reset, head.limit, tuple(statuses))


class RateLimiter:
    """Rate and concurrency limits over `engine`, on up to `connections` leased connections.

    `durable=False` (the default) commits limiter state with `synchronous_commit = off` (see the
    module docstring for the trade-off). Use as an async context manager, or call `close()`.
    """

    def __init__(self, engine: AsyncEngine, *, connections: int = 4, durable: bool = False) -> None:
        self.durable = durable
        self._leases = Leases(engine, connections, Endpoint.of_url(engine.url))
        self._single = _single_sql(durable)
        self._multi = _multi_sql(durable)
        self._acquire = _acquire_sql(durable)
        self._release = _release_sql(durable)
        self._renew = _renew_sql(durable)

    async def __aenter__(self) -> RateLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._leases.close()

    # -- configs -------------------------------------------------------------------------------

    async def resolve(self, subject: RateSubject) -> ResolvedLimits:
        """The limits in force for `subject`, one query: per (metric, period) the most specific row.
        Without `subject.tier`, the company's tier (`companies.tier`) selects the tier rows."""

        async def work(raw: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await raw.fetch(
                _RESOLVE, subject.company_id, subject.tier or "", subject.user_id or "", subject.key_id or ""
            )
            return rows

        rows = await self._leases.for_tenant(subject.company_id, work)
        rates: list[RateLimit] = []
        concurrency: tuple[CounterScope, str, int] | None = None
        for row in rows:
            scope, owner = self._owner(subject, row["scope"])
            if row["metric"] == "concurrency":
                concurrency = (scope, owner, int(row["limit_value"]))
                continue
            rates.append(
                RateLimit(scope, owner, row["metric"], row["period"], row["limit_value"], row["burst"])
            )
        return ResolvedLimits(tuple(rates), concurrency)

    @staticmethod
    def _owner(subject: RateSubject, config_scope: str) -> tuple[CounterScope, str]:
        if config_scope == "key" and subject.key_id is not None:
            return "key", subject.key_id
        if config_scope == "user" and subject.user_id is not None:
            return "user", subject.user_id
        return "company", subject.company_id

    async def decide(
        self, subject: RateSubject, *, tokens: int = 0, cost_usd: Decimal = _ZERO, now: datetime | None = None
    ) -> RateDecision:
        """Resolve `subject`'s limits and check one request of `tokens` and `cost_usd` against all.

        Two statements (`resolve`, then `check`); a caller that caches `resolve`'s answer per
        subject for a few seconds makes it one."""
        resolved = await self.resolve(subject)
        usage: dict[RateMetric, Decimal] = {
            "requests": Decimal(1),
            "tokens": Decimal(tokens),
            "cost_usd": cost_usd,
        }
        return await self.check(
            subject.company_id, [(limit, usage[limit.metric]) for limit in resolved.rates], now=now
        )

    # -- GCRA ----------------------------------------------------------------------------------

    async def check(
        self,
        company_id: str,
        charges: Sequence[tuple[RateLimit, Decimal | int]],
        *,
        now: datetime | None = None,
    ) -> RateDecision:
        """Admit `amount` units on every `(limit, amount)` at once, or on none (one statement).

        `now` replaces the server's clock (tests only)."""
        items = [(limit, Decimal(amount)) for limit, amount in charges]
        if any(amount < 0 for _, amount in items):
            raise InvalidRequestError("a rate-limited amount cannot be negative")
        if len({limit.key for limit, _ in items}) != len(items):
            raise InvalidRequestError("each counter (scope, subject, metric, period) may be charged once")
        blocked = [limit for limit, amount in items if (limit.limit == 0 and amount > 0) or
                   (limit.limit > 0 and amount > limit.capacity)]  # fmt: skip
        if blocked:
            return _decision([_blocked(limit) for limit in blocked], False)
        items = [(limit, amount) for limit, amount in items if limit.limit > 0]
        if not items:
            return _decision([], True)
        at = None if now is None else _epoch(now)
        if len(items) == 1:
            return await self._check_one(company_id, *items[0], at)
        return await self._check_many(company_id, items, at)

    async def _check_one(
        self, company_id: str, limit: RateLimit, amount: Decimal, at: Decimal | None
    ) -> RateDecision:
        with localcontext(_EXACT):
            inc = amount * limit.interval
            tau = limit.capacity * limit.interval

        async def work(raw: asyncpg.Connection) -> asyncpg.Record:
            return _one(await raw.fetchrow(self._single, at, company_id, *limit.key, inc, tau))

        row = await self._leases.for_tenant(company_id, work)
        status = _status(limit, amount, row["now"], row["seen"], row["tat"], refused=row["tat"] is None)
        return _decision([status], row["tat"] is not None)

    async def _check_many(
        self, company_id: str, items: Sequence[tuple[RateLimit, Decimal]], at: Decimal | None
    ) -> RateDecision:
        columns = [list(c) for c in zip(*(limit.key for limit, _ in items), strict=True)]
        with localcontext(_EXACT):
            incs = [amount * limit.interval for limit, amount in items]
            taus = [limit.capacity * limit.interval for limit, _ in items]

        async def work(raw: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await raw.fetch(self._multi, at, company_id, *columns, incs, taus)
            return rows

        async def create(raw: asyncpg.Connection, missing: list[tuple[str, str, str, str]]) -> None:
            await raw.execute(_CREATE_MISSING, company_id, *[list(c) for c in zip(*missing, strict=True)])

        for _ in range(3):
            rows = await self._leases.for_tenant(company_id, work)
            missing = [items[row["ord"] - 1][0].key for row in rows if not row["present"]]
            if not missing:
                break
            await self._leases.for_tenant(
                company_id, create, missing
            )  # first use of a counter: empty buckets
        else:
            raise InvalidRequestError("rate-limit counters vanished while being created")  # pragma: no cover
        allowed = rows[0]["written"] == len(items)
        statuses = []
        for (limit, amount), inc, row in zip(items, incs, rows, strict=True):
            with localcontext(_EXACT):
                after = max(row["seen"], row["now"]) + inc if allowed else None
            statuses.append(_status(limit, amount, row["now"], row["seen"], after, refused=not row["fits"]))
        return _decision(statuses, allowed)

    # -- concurrency ---------------------------------------------------------------------------

    async def acquire(
        self,
        company_id: str,
        scope: CounterScope,
        subject: str,
        limit: int,
        *,
        lease: timedelta,
        now: datetime | None = None,
    ) -> ConcurrencySlot | ConcurrencyRefusal:
        """Take one of `limit` in-flight slots for `lease` (renew to keep it), or say when one frees."""
        if limit <= 0:
            return ConcurrencyRefusal(None)
        holder = uuid.uuid4()

        async def work(raw: asyncpg.Connection) -> asyncpg.Record:
            return _one(
                await raw.fetchrow(self._acquire, now, company_id, scope, subject, limit, holder, lease)
            )

        async def create(raw: asyncpg.Connection) -> None:
            await raw.execute(_CREATE_SLOTS, company_id, scope, subject, limit)

        for attempt in (1, 2):
            row = await self._leases.for_tenant(company_id, work)
            if row["slot"] is not None:
                return ConcurrencySlot(company_id, scope, subject, row["slot"], holder, row["expires_at"])
            if row["n"] >= limit or attempt == 2:
                break
            await self._leases.for_tenant(
                company_id, create
            )  # first use, or a raised limit: the missing slots
        # The earliest live lease's end; 0 when a slot is free but was being taken or released.
        return ConcurrencyRefusal(timedelta(0) if row["wait"] is None else _seconds(row["wait"]))

    async def release(self, slot: ConcurrencySlot, *, now: datetime | None = None) -> bool:
        """Free `slot`; False when it was no longer ours (expired and taken by someone else)."""

        async def work(raw: asyncpg.Connection) -> bool:
            row = await raw.fetchrow(
                self._release, now, slot.company_id, slot.scope, slot.subject, slot.slot, slot.holder
            )
            return row is not None

        freed: bool = await self._leases.for_tenant(slot.company_id, work)
        return freed

    async def renew(
        self, slot: ConcurrencySlot, *, lease: timedelta, now: datetime | None = None
    ) -> ConcurrencySlot | None:
        """Extend a live lease to `now + lease`; None when it had already expired (the slot is lost)."""

        async def work(raw: asyncpg.Connection) -> datetime | None:
            value: datetime | None = await raw.fetchval(
                self._renew, now, slot.company_id, slot.scope, slot.subject, slot.slot, slot.holder, lease
            )
            return value

        expires: datetime | None = await self._leases.for_tenant(slot.company_id, work)
        if expires is None:
            return None
        return ConcurrencySlot(slot.company_id, slot.scope, slot.subject, slot.slot, slot.holder, expires)
