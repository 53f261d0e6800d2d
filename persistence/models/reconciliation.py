"""Reconciliation reports: the ledger compared with a metering vendor's numbers for one period.

Seed 000's table, extended: one report per (period, source), so a re-run replaces its report and two
vendors can be reconciled for the same week. Money is NUMERIC(16, 6), the ledger's own precision
summed, so a stored total equals the raw `SUM(cost_usd)` exactly (the seed's NUMERIC(12, 2) rounded it).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Identity,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import JSON, Base

RECONCILIATION_STATUSES = ("PASS", "FAIL")
DEFAULT_SOURCE = "revenium"  # seed 000 reconciles against Revenium; rows written by its script have no source


class ReconciliationReport(Base):
    """One comparison of the ledger against a usage source (metering vendor API or export) for a period."""

    __tablename__ = "reconciliation_reports"

    id: Mapped[int] = mapped_column(Integer, Identity(always=False), primary_key=True)
    report_date: Mapped[date]
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(200), server_default=text(f"'{DEFAULT_SOURCE}'"))

    total_calls: Mapped[int] = mapped_column(Integer)
    total_cost_usd: Mapped[Decimal] = mapped_column(Numeric(16, 6))
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    provider_stats: Mapped[JSON | None]
    # Calls of the period stored without a price and their tokens (revision 0009): their cost is
    # missing from total_cost_usd, which a cost variance then reflects.
    unpriced_calls: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    unpriced_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    # The vendor's side (seed 000 names it after Revenium; any source fills it).
    revenium_calls: Mapped[int | None] = mapped_column(Integer)
    revenium_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(16, 6))
    variance_pct: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    cost_variance_pct: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    coverage_pct: Mapped[Decimal | None] = mapped_column(Numeric(7, 3))
    threshold_pct: Mapped[Decimal] = mapped_column(Numeric(6, 3), server_default=text("2"))
    status: Mapped[str | None] = mapped_column(String(10))
    lines: Mapped[list[Any] | None] = mapped_column(JSONB)

    generated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("period_start", "period_end", "source"),
        CheckConstraint("period_end > period_start", name="period_ordered"),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in RECONCILIATION_STATUSES) + ")", name="status_known"
        ),
        CheckConstraint("threshold_pct >= 0", name="threshold_non_negative"),
    )
