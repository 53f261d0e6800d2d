"""Seed 002's `rate_limit_configs` and `company_quotas`: limit settings, keyed by company first.

Only the settings live here; the state that enforces them (GCRA timestamps, per-period usage rows,
reservations, `rate_limit_resets`) is the limits issue's. Both tables lead every key with
`company_id` (the tenant: the ledger's `organization_id`), so the schema can later be distributed
by tenant; '' stands for "no company" (a global or tier row), as `vendor_prices.tenant_id` does.

- `rate_limit_configs`: one row per limit (scope, metric, period). Rates are rolling (GCRA), so
  they have a length (`period`) but no time zone. Precedence when resolving: key > user > company
  > tier > global. Revision 0012 inserts seed 002's default (its `basic` tier: 50 requests a
  minute with a burst of 100, 1,000 an hour, 10,000 a day) as the global rows.
- `company_quotas`: one row per company, metric and calendar period in a named IANA time zone
  (a day there starts at local midnight, like the cost alerts' windows), or rolling window
  (`window_seconds`, revision 0014). Seed 002 inserts quotas
  for existing companies only; there is no company table yet, so there are no default rows.

Limits are NUMERIC(20, 6) for every metric: exact USD for `cost_usd`, whole numbers (a CHECK) for
counts; 0 blocks everything, no row means no limit.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Identity,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base, Timestamps

RATE_SCOPES = ("global", "tier", "company", "user", "key")
RATE_METRICS = ("requests", "tokens", "cost_usd", "concurrency")
RATE_PERIODS = ("second", "minute", "hour", "day")
QUOTA_METRICS = ("requests", "tokens", "cost_usd")
QUOTA_PERIODS = ("hourly", "daily", "weekly", "monthly", "rolling")
# A rolling window is counted in 60 buckets, so its length is whole minutes (from 1 minute to 31 days).
ROLLING_BUCKETS = 60
WINDOW_CHECK = "(period = 'rolling') = (window_seconds IS NOT NULL) AND window_seconds % 60 = 0 AND window_seconds BETWEEN 60 AND 2678400"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class RateLimitConfig(Timestamps, Base):
    """One rate limit: `limit_value` units of `metric` per `period` (concurrency: at most
    `limit_value` at once, no period), with an optional `burst` (GCRA's tolerance; NULL: the limit).

    `scope_id` names the tier, user or API key the row is for ('' for global and company rows).
    """

    __tablename__ = "rate_limit_configs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    company_id: Mapped[str] = mapped_column(String(100), server_default=text("''"))
    scope: Mapped[str] = mapped_column(String(10))
    scope_id: Mapped[str] = mapped_column(String(100), server_default=text("''"))
    metric: Mapped[str] = mapped_column(String(20))
    period: Mapped[str | None] = mapped_column(String(10))
    limit_value: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    burst: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))

    __table_args__ = (
        UniqueConstraint(
            "company_id", "scope", "scope_id", "metric", "period", postgresql_nulls_not_distinct=True
        ),
        CheckConstraint(_in("scope", RATE_SCOPES), name="scope_known"),
        CheckConstraint(_in("metric", RATE_METRICS), name="metric_known"),
        CheckConstraint(
            "(metric = 'concurrency') = (period IS NULL) AND (period IS NULL OR "
            + _in("period", RATE_PERIODS)
            + ")",
            name="period_known",
        ),
        CheckConstraint("(scope IN ('global', 'tier')) = (company_id = '')", name="company_given"),
        CheckConstraint("(scope IN ('global', 'company')) = (scope_id = '')", name="scope_id_given"),
        CheckConstraint(
            "limit_value >= 0 AND burst >= limit_value AND (metric = 'cost_usd' OR "
            "(limit_value = trunc(limit_value) AND burst = trunc(burst)))",
            name="limits_valid",
        ),
    )


class CompanyQuota(Timestamps, Base):
    """A company's quota: at most `limit_value` of `metric` per calendar `period` in `time_zone`."""

    __tablename__ = "company_quotas"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    company_id: Mapped[str] = mapped_column(String(100))
    metric: Mapped[str] = mapped_column(String(20))
    period: Mapped[str] = mapped_column(String(10))
    time_zone: Mapped[str] = mapped_column(String(64), server_default=text("'UTC'"))
    limit_value: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    # Revision 0014: the length of a rolling window (period 'rolling'; NULL for calendar periods).
    window_seconds: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        PrimaryKeyConstraint("company_id", "id"),  # the company first (revision 0025)
        UniqueConstraint("company_id", "metric", "period"),
        CheckConstraint(WINDOW_CHECK, name="window_valid"),
        CheckConstraint("company_id <> ''", name="company_given"),
        CheckConstraint(_in("metric", QUOTA_METRICS), name="metric_known"),
        CheckConstraint(_in("period", QUOTA_PERIODS), name="period_known"),
        CheckConstraint("time_zone <> ''", name="time_zone_given"),
        CheckConstraint(
            "limit_value >= 0 AND (metric = 'cost_usd' OR limit_value = trunc(limit_value))",
            name="limit_valid",
        ),
    )
    __mapper_args__ = {"primary_key": [id]}
