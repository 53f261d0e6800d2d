"""Seed 001's per-user `quotas`, the per-period usage counters that enforce them (and
`company_quotas`), admission reservations with their per-counter holds, and seed 002's
`rate_limit_resets` (the audit trail of manual resets and overrides).

Every key and index leads with `company_id` (the tenant). Subjects are string ids owned by the
companies/users tables (no foreign keys yet). Amounts are NUMERIC(20, 6) for every metric, so one
counter shape serves requests, tokens and USD.

- `quotas`: seed 001's columns (`request_limit`, `token_limit`, `tier`, `reset_frequency`) plus
  `cost_limit_usd`, a time zone and `window_seconds` (reset_frequency 'rolling'); NULL limit =
  unlimited (still counted).
- `quota_counters`: one row per (company, scope, subject, metric, period, period_start). A new
  period is a new row, so nothing ever resets them. `used` is settled usage, `held` the sum of
  this counter's `quota_holds`. A rolling window is counted in 60 bucket rows (period 'rolling',
  period_start = the bucket's start); its usage is the sum of the buckets in the window.
  `limit_override` (this period or bucket only) and `version` (compare-and-swap for manual
  resets) belong to the admin path.
- `quota_reservations`: one row per admitted request (its estimate, lease, state, actual usage);
  a settled one is what `usage` (models/usage.py) is rebuilt from.
- `quota_holds`: what one reservation holds on one counter until its lease expires; any admission
  on that counter deletes expired holds and subtracts them in the same statement (no job).
- `rate_limit_resets`: append-only; who, why, what and whether the compare-and-swap applied it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base, CreatedAt, Timestamps
from persistence.models.limits import QUOTA_METRICS, QUOTA_PERIODS, WINDOW_CHECK

QUOTA_TIERS = ("basic", "standard", "premium")
QUOTA_SCOPES = ("user", "company")
RESERVATION_STATES = ("held", "settled", "released")
RESET_ACTIONS = ("reset", "override")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class Quota(Timestamps, Base):
    """Seed 001's `quotas`: one user's request, token and cost limits per `reset_frequency`."""

    __tablename__ = "quotas"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    quota_id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(100))
    tier: Mapped[str] = mapped_column(String(20), server_default=text("'basic'"))
    request_limit: Mapped[int | None] = mapped_column(BigInteger)
    token_limit: Mapped[int | None] = mapped_column(BigInteger)
    cost_limit_usd: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    reset_frequency: Mapped[str] = mapped_column(String(10), server_default=text("'monthly'"))
    time_zone: Mapped[str] = mapped_column(String(64), server_default=text("'UTC'"))
    window_seconds: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))

    __table_args__ = (
        UniqueConstraint("company_id", "user_id", "reset_frequency"),
        CheckConstraint(WINDOW_CHECK.replace("period =", "reset_frequency ="), name="window_valid"),
        CheckConstraint(_in("tier", QUOTA_TIERS), name="tier_known"),
        CheckConstraint(_in("reset_frequency", QUOTA_PERIODS), name="reset_frequency_known"),
        CheckConstraint("company_id <> '' AND user_id <> ''", name="subject_given"),
        CheckConstraint("time_zone <> ''", name="time_zone_given"),
        CheckConstraint(
            "request_limit >= 0 AND token_limit >= 0 AND cost_limit_usd >= 0", name="limits_valid"
        ),
    )


class QuotaCounter(Base):
    """Usage of one metric by one subject in one period (a new period is a new row)."""

    __tablename__ = "quota_counters"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    scope: Mapped[str] = mapped_column(String(10))
    subject_id: Mapped[str] = mapped_column(String(100), server_default=text("''"))
    metric: Mapped[str] = mapped_column(String(20))
    period: Mapped[str] = mapped_column(String(10))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used: Mapped[Decimal] = mapped_column(Numeric(20, 6), server_default=text("0"))
    held: Mapped[Decimal] = mapped_column(Numeric(20, 6), server_default=text("0"))
    limit_override: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    version: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    __table_args__ = (
        UniqueConstraint("company_id", "scope", "subject_id", "metric", "period", "period_start"),
        CheckConstraint(_in("scope", QUOTA_SCOPES), name="scope_known"),
        CheckConstraint(_in("metric", QUOTA_METRICS), name="metric_known"),
        CheckConstraint(_in("period", QUOTA_PERIODS), name="period_known"),
        CheckConstraint("(scope = 'company') = (subject_id = '')", name="subject_given"),
        CheckConstraint("period_end > period_start", name="period_valid"),
        CheckConstraint("used >= 0 AND held >= 0 AND limit_override >= 0", name="amounts_valid"),
    )


class QuotaReservation(Base):
    """One admitted request: its estimate held until `expires_at`, then its actual usage."""

    __tablename__ = "quota_reservations"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(10), server_default=text("'held'"))
    counter_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    requests: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    tokens: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    actual_requests: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    actual_tokens: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    actual_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The zone whose local dates filed this reservation's usage in `usage` (revision 0017), recorded
    # by the settling statement so that a rebuild files it exactly as the settlement did.
    usage_time_zone: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(_in("state", RESERVATION_STATES), name="state_known"),
        CheckConstraint("(state = 'held') = (finished_at IS NULL)", name="finished_given"),
        CheckConstraint("(state = 'settled') = (usage_time_zone IS NOT NULL)", name="usage_time_zone_given"),
    )


class QuotaHold(Base):
    """The part of one reservation's estimate held on one counter, until its lease expires."""

    __tablename__ = "quota_holds"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    reservation_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    counter_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    # The primary key serves settlement (by reservation); this index serves reclaiming (a range of
    # expired holds of one counter, which skips the live and the already deleted ones).
    __table_args__ = (
        Index(None, "company_id", "counter_id", "expires_at"),
        CheckConstraint("amount > 0", name="amount_positive"),
    )


class RateLimitReset(CreatedAt, Base):
    """Seed 002's audit trail: one manual reset or override of one counter, and whether it applied."""

    __tablename__ = "rate_limit_resets"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    scope: Mapped[str] = mapped_column(String(10))
    subject_id: Mapped[str] = mapped_column(String(100), server_default=text("''"))
    metric: Mapped[str] = mapped_column(String(20))
    period: Mapped[str] = mapped_column(String(10))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(10))
    new_limit: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    expected_version: Mapped[int] = mapped_column(Integer)
    applied: Mapped[bool]
    previous_used: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    requested_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index(None, "company_id", "created_at"),
        CheckConstraint(_in("action", RESET_ACTIONS), name="action_known"),
        CheckConstraint("(action = 'override') = (new_limit IS NOT NULL)", name="new_limit_given"),
        CheckConstraint("requested_by <> '' AND reason <> ''", name="who_and_why_given"),
    )
