"""Seed 001's quota-checking and usage-reporting SQL, run as the seed wrote it on the seed's tables
(`requests`, `usage`: temporary here; `quotas` is ours), give what `Quotas`' typed functions give
from the counters and our `usage` rows fed with the same requests.

The seed's temporary `usage` would hide ours on the test's one connection, so it is created only
after every typed answer was read."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.quotas import QuotaLimits, Quotas

# Seed 001's DDL for the two tables this package replaces by counters; only `REFERENCES users`
# is left out (the users table is not part of this revision).
SEED_REQUESTS = """
CREATE TEMPORARY TABLE requests (
    request_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id VARCHAR(50),
    prompt TEXT NOT NULL,
    result TEXT,
    status VARCHAR(20) NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completed_at TIMESTAMP,
    estimated_tokens INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    model VARCHAR(50),
    error TEXT
)"""
SEED_USAGE = """
CREATE TEMPORARY TABLE usage (
    usage_id SERIAL PRIMARY KEY,
    user_id VARCHAR(50),
    period VARCHAR(20) NOT NULL,
    period_start DATE NOT NULL,
    period_end DATE NOT NULL,
    requests_count INTEGER DEFAULT 0,
    tokens_used INTEGER DEFAULT 0,
    UNIQUE(user_id, period, period_start)
)"""

# Verbatim from seed 001 (user 'user123' as in the seed; the others by parameter).
SEED_QUOTA_CHECK = """
WITH user_quota AS (
  SELECT token_limit
  FROM quotas
  WHERE user_id = :user_id
),
user_usage AS (
  SELECT COALESCE(SUM(total_tokens), 0) as tokens_used
  FROM requests
  WHERE user_id = :user_id
  AND created_at >= DATE_TRUNC('month', CURRENT_DATE)
)
SELECT
  (SELECT token_limit FROM user_quota) -
  (SELECT tokens_used FROM user_usage) AS remaining_tokens;
"""
SEED_USAGE_REPORT = """
INSERT INTO usage (user_id, period, period_start, period_end, requests_count, tokens_used)
SELECT
  user_id,
  'monthly',
  DATE_TRUNC('month', CURRENT_DATE),
  (DATE_TRUNC('month', CURRENT_DATE) + INTERVAL '1 month - 1 day')::date,
  COUNT(*),
  COALESCE(SUM(total_tokens), 0)
FROM requests
WHERE
  created_at >= DATE_TRUNC('month', CURRENT_DATE) AND
  created_at < (DATE_TRUNC('month', CURRENT_DATE) + INTERVAL '1 month')
GROUP BY user_id
ON CONFLICT (user_id, period, period_start)
DO UPDATE SET
  requests_count = EXCLUDED.requests_count,
  tokens_used = EXCLUDED.tokens_used;
"""
SEED_TIER_ANALYSIS = """
WITH user_usage AS (
  SELECT
    user_id,
    MAX(requests_count) as max_requests,
    MAX(tokens_used) as max_tokens
  FROM usage
  WHERE period = 'monthly'
  GROUP BY user_id
)
SELECT
  u.user_id,
  u.max_requests,
  u.max_tokens,
  CASE
    WHEN u.max_tokens < 100000 THEN 'basic'
    WHEN u.max_tokens < 1000000 THEN 'standard'
    ELSE 'premium'
  END as recommended_tier
FROM user_usage u;
"""

# (user, tier, [(months ago, total tokens of each request)]): the three tiers' recommendations
# appear, from last month's maximum or this month's.
SEEDED: list[tuple[str, str, list[tuple[int, list[int]]]]] = [
    ("user123", "basic", [(0, [150, 200, 120]), (1, [90_000])]),
    ("user456", "standard", [(0, [60_000, 50_000]), (1, [1_000])]),
    ("user789", "premium", [(0, [400_000, 700_000]), (2, [5])]),
    ("user000", "basic", [(1, [10])]),
]


def _months_back(moment: datetime, months: int) -> datetime:
    first = moment.replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    for _ in range(months):
        first = (first - timedelta(days=1)).replace(day=1)
    return first


async def test_seed_001s_quota_queries_equal_the_typed_functions(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    await connection.execute(text("SET LOCAL TimeZone = 'UTC'"))
    await connection.execute(text(SEED_REQUESTS))
    earlier_months: list[dict[str, object]] = []
    now: datetime = await connection.scalar(text("SELECT now()"))
    quotas = Quotas(engine)
    for user, tier, months in SEEDED:
        await quotas.set_user_quota("acme", user, tier=tier, limits=QuotaLimits(None, 2_000_000))
        for back, totals in months:
            moment = now if back == 0 else _months_back(now, back)
            for total in totals:
                a = await quotas.admit(
                    "acme", user, prompt_tokens=total // 2, max_tokens=total, cost_usd=Decimal(0), now=moment
                )
                assert a.reservation is not None
                await quotas.settle(a.reservation, tokens=total, cost_usd=Decimal(0), now=moment)
                await connection.execute(
                    text(
                        "INSERT INTO requests (user_id, prompt, status, created_at, prompt_tokens, "
                        "completion_tokens, total_tokens) VALUES (:u, 'p', 'completed', :at, :pt, :ct, :t)"
                    ),
                    {
                        "u": user,
                        "at": moment.replace(tzinfo=None),
                        "pt": total // 2,
                        "ct": total - total // 2,
                        "t": total,
                    },
                )
            if back:
                # Earlier months of the seed's `usage` table, as its monthly job would have left them.
                start = moment.date().replace(day=1)
                earlier_months.append({"u": user, "s": start, "n": len(totals), "t": sum(totals)})

    # Quota checking: remaining tokens this month.
    for user, _, _ in SEEDED:
        seed = await connection.scalar(text(SEED_QUOTA_CHECK), {"user_id": user})
        ours = await quotas.remaining_tokens("acme", user)
        assert ours is not None and ours.held == 0
        assert ours.remaining == seed, user

    # Our answers first (see the module docstring).
    ours_rows = [
        (r.user_id, r.period, r.period_start, r.period_end, r.requests_count, r.tokens_used)
        for r in await quotas.usage_report("acme")
    ]
    ours_tiers = [
        (r.user_id, r.max_requests, r.max_tokens, r.recommended_tier)
        for r in await quotas.tier_analysis("acme")
    ]
    await connection.execute(text(SEED_USAGE))
    for month in earlier_months:
        await connection.execute(
            text(
                "INSERT INTO usage (user_id, period, period_start, period_end, requests_count, "
                "tokens_used) VALUES (:u, 'monthly', :s, (CAST(:s AS date) + interval '1 month - 1 day')::date, :n, :t) "
                "ON CONFLICT (user_id, period, period_start) DO UPDATE SET "
                "requests_count = usage.requests_count + EXCLUDED.requests_count, "
                "tokens_used = usage.tokens_used + EXCLUDED.tokens_used"
            ),
            month,
        )

    # Usage reporting: this month's rows.
    await connection.execute(text(SEED_USAGE_REPORT))
    seed_rows = (
        await connection.execute(
            text(
                "SELECT user_id, period, period_start, period_end, requests_count, tokens_used FROM usage "
                "WHERE period_start = DATE_TRUNC('month', CURRENT_DATE) ORDER BY user_id"
            )
        )
    ).all()
    assert ours_rows == [tuple(r) for r in seed_rows]
    assert len(ours_rows) == 3 and isinstance(ours_rows[0][2], date)

    # Tiered pricing analysis over every month.
    seed_tiers = sorted(tuple(r) for r in (await connection.execute(text(SEED_TIER_ANALYSIS))).all())
    assert ours_tiers == seed_tiers
    assert {t[3] for t in ours_tiers} == {"basic", "standard", "premium"}
