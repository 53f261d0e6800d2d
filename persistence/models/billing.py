"""Billing validation (seed 002's `billing_data`): what vendors bill us, per period, against our ledger.

A billing period is one provider's calendar month (UTC) and moves `open -> grace -> closed`:
grace starts at `period_end`, and the period closes at `grace_ends_at` (period_end + the provider's
late-data window: vendors accept late usage, Stripe for 35 days). Transitions are conditional UPDATEs
(`WHERE state = ...`), one timestamp per state. `billing_data` rows of a closed period are
`adjustment`s: recorded against that period, never counted into its validation, which is final once
the period is closed (`billing_validations`, one per period, replaced by each run until then).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from persistence.models.base import Base

PERIOD_STATES = ("open", "grace", "closed")
BILLING_KINDS = ("usage", "adjustment")
BILLING_VERDICTS = ("ok", "mismatch")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class BillingPeriod(Base):
    """One provider's billing month [period_start, period_end) and where it is in its life."""

    __tablename__ = "billing_periods"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    provider: Mapped[str] = mapped_column(String(50))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    grace_ends_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10), server_default=text("'open'"))
    grace_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("provider", "period_start"),
        CheckConstraint("period_end > period_start", name="period_ordered"),
        CheckConstraint("grace_ends_at >= period_end", name="grace_after_period"),
        CheckConstraint(_in("state", PERIOD_STATES), name="state_known"),
        CheckConstraint(
            "(state = 'open' AND grace_at IS NULL AND closed_at IS NULL)"
            " OR (state = 'grace' AND grace_at IS NOT NULL AND closed_at IS NULL)"
            " OR (state = 'closed' AND grace_at IS NOT NULL AND closed_at IS NOT NULL)",
            name="state_timestamps",
        ),
    )


class BillingData(Base):
    """One billed line: a provider's model on a UTC day (or, `day` NULL, for the whole period).

    `amount_usd` may be negative (credits). `(source, external_id)` identifies a line, so importing
    the same invoice or export twice adds nothing.
    """

    __tablename__ = "billing_data"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    period_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("billing_periods.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(12))
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    day: Mapped[date | None]
    amount_usd: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    calls: Mapped[int | None] = mapped_column(Integer)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(200))
    external_id: Mapped[str] = mapped_column(String(300))
    recorded_at: Mapped[datetime] = mapped_column(server_default=func.now())

    period: Mapped[BillingPeriod] = relationship(lazy="raise")

    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        CheckConstraint(_in("kind", BILLING_KINDS), name="kind_known"),
        CheckConstraint("calls >= 0 AND tokens >= 0", name="counts_non_negative"),
    )


Index("ix_billing_data_period_id_kind", BillingData.period_id, BillingData.kind)


class BillingValidation(Base):
    """The latest validation of one period; final once it was made with the period closed."""

    __tablename__ = "billing_validations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    period_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("billing_periods.id", ondelete="CASCADE"))
    period_state: Mapped[str] = mapped_column(String(10))
    billed_usd: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    ledger_usd: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    ledger_calls: Mapped[int] = mapped_column(Integer)
    variance_usd: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    absolute_tolerance_usd: Mapped[Decimal] = mapped_column(Numeric(20, 12))
    relative_tolerance_pct: Mapped[Decimal] = mapped_column(Numeric(9, 4))
    verdict: Mapped[str] = mapped_column(String(10))
    lines: Mapped[list[Any]] = mapped_column(JSONB)
    validated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    period: Mapped[BillingPeriod] = relationship(lazy="raise")

    __table_args__ = (
        UniqueConstraint("period_id"),
        CheckConstraint(_in("period_state", PERIOD_STATES), name="period_state_known"),
        CheckConstraint(_in("verdict", BILLING_VERDICTS), name="verdict_known"),
        CheckConstraint("ledger_calls >= 0", name="ledger_calls_non_negative"),
        CheckConstraint(
            "absolute_tolerance_usd >= 0 AND relative_tolerance_pct >= 0", name="tolerance_non_negative"
        ),
        CheckConstraint("jsonb_typeof(lines) = 'array'", name="lines_is_list"),
    )
