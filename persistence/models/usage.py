"""Seed 001's `usage`: billing usage per company, user and calendar period, kept apart from the
quota counters so that a manual quota reset (which zeroes an enforcement counter) never erases it.

One row per (company, user, period, period_start); `period` is 'daily' or 'monthly', dates are the
user's local dates (the zone recorded on each settled reservation, `quota_reservations.usage_time_zone`),
`period_end` inclusive as in the seed. `user_id` '' holds requests admitted without a user.

Rows are written only by `Quotas.settle`'s statement (an upsert adding the settled actual usage,
in the same statement that flips the reservation, so a request is counted once) and by
`Quotas.rebuild_usage` (recomputed from the settled `quota_reservations`); never by a sum over a
requests table on the hot path, and never reset.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, Date, Index, Numeric, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base

USAGE_PERIODS = ("daily", "monthly")


class Usage(Base):
    """Settled usage of one user (or of the company's user-less requests) in one local day or month."""

    __tablename__ = "usage"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    period: Mapped[str] = mapped_column(String(20), primary_key=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    period_end: Mapped[date] = mapped_column(Date)
    requests_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    tokens_used: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 6), server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        # The reports read one period of every user of a company.
        Index(None, "company_id", "period", "period_start"),
        CheckConstraint("period IN ('daily', 'monthly')", name="period_known"),
        CheckConstraint(
            "period_end = CASE period WHEN 'daily' THEN period_start "
            "ELSE (period_start + interval '1 month - 1 day')::date END "
            "AND (period = 'daily' OR extract(day FROM period_start) = 1)",
            name="period_valid",
        ),
        CheckConstraint("requests_count >= 0 AND tokens_used >= 0 AND cost_usd >= 0", name="amounts_valid"),
    )
