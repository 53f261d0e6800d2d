"""Cost accuracy (seed 002's `cost_calculations` / `cost_accuracy_validations`).

`cost_calculations` is a VIEW over the ledger, not a table: `ai_calls` already stores, per call, the
cost it was given (`cost_usd` with `cost_source = 'provided'`), ours (`computed_cost_usd`, exact) and
the price row used (`price_id`). A table would be a second copy of a partitioned, append-only ledger
that `reprice` and retention would have to keep in step; the view is always the ledger's current truth
and costs nothing to store. It is created after the tables (`after_create`), so `create_all` and the
migrations build the same schema.

`cost_accuracy_validations` holds one validation run over a period [period_start, period_end): one row
per provider, model and UTC day, with the tolerance rule it was judged by, a verdict and the worst
calls. A re-run over the same period replaces the period's rows (see `ai_calls/cost_accuracy.py`).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    CheckConstraint,
    Identity,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    event,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base

# A day of a run: every compared call within tolerance / some call over it / calls priced by us but
# given no cost to compare with / no call of the day could be priced by us.
ACCURACY_VERDICTS = ("ok", "over_tolerance", "no_provided_cost", "unpriced")

# One row per ledger call. `provided_cost_usd` is the caller's (provider-given) figure, NULL when the
# ledger computed the cost itself; variance is provided - computed, NULL unless both exist.
# Revision 0011 holds a frozen copy of this text; the schema test compares the two views' columns.
COST_CALCULATIONS_VIEW = """
CREATE VIEW cost_calculations AS
SELECT c.id AS call_id,
       c.created_at,
       (c.created_at AT TIME ZONE 'UTC')::date AS day,
       c.provider,
       c.model,
       c.organization_id,
       c.customer_id,
       c.status,
       c.total_tokens,
       c.cost_source,
       c.cost_usd AS recorded_cost_usd,
       CASE WHEN c.cost_source = 'provided' THEN c.cost_usd END AS provided_cost_usd,
       c.computed_cost_usd,
       CASE WHEN c.cost_source = 'provided' THEN c.cost_usd - c.computed_cost_usd END AS variance_usd,
       CASE WHEN c.cost_source = 'provided' THEN abs(c.cost_usd - c.computed_cost_usd) END AS abs_variance_usd,
       CASE WHEN c.cost_source = 'provided' AND c.computed_cost_usd > 0
            THEN round(abs(c.cost_usd - c.computed_cost_usd) * 100 / c.computed_cost_usd, 4) END AS variance_pct,
       c.price_id,
       p.source AS price_source,
       p.tenant_id AS price_tenant_id,
       p.effective_from AS price_effective_from
  FROM ai_calls c
  LEFT JOIN vendor_prices p ON p.id = c.price_id
"""


class CostAccuracyValidation(Base):
    """One provider/model/UTC day of a validation run over [period_start, period_end).

    Costs sum the *compared* calls only (both a provided and a computed cost); `abs_variance_usd` sums
    each call's |provided - computed| (errors in both directions do not cancel), `variance_usd` is the
    signed net, `variance_pct` = abs_variance / computed * 100. A call is over tolerance when
    |provided - computed| > absolute_tolerance_usd + relative_tolerance_pct / 100 * computed.
    `worst_calls` lists the top calls by |variance| (money as exact strings).
    """

    __tablename__ = "cost_accuracy_validations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    day: Mapped[date]
    calls: Mapped[int] = mapped_column(Integer)
    compared_calls: Mapped[int] = mapped_column(Integer)
    computed_only_calls: Mapped[int] = mapped_column(Integer)
    unpriced_calls: Mapped[int] = mapped_column(Integer)
    calls_over_tolerance: Mapped[int] = mapped_column(Integer)
    computed_cost_usd: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    provided_cost_usd: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    variance_usd: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    abs_variance_usd: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    variance_pct: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    absolute_tolerance_usd: Mapped[Decimal] = mapped_column(Numeric(20, 12))
    relative_tolerance_pct: Mapped[Decimal] = mapped_column(Numeric(9, 4))
    verdict: Mapped[str] = mapped_column(String(20))
    worst_calls: Mapped[list[Any]] = mapped_column(JSONB)
    validated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        # Named by hand: the convention's name (period_start_period_end_provider_model_day) passes 63 bytes.
        UniqueConstraint(
            "period_start",
            "period_end",
            "provider",
            "model",
            "day",
            name="uq_cost_accuracy_validations_period_day",
        ),
        CheckConstraint("period_end > period_start", name="period_ordered"),
        CheckConstraint(
            "calls >= 0 AND compared_calls >= 0 AND computed_only_calls >= 0 AND unpriced_calls >= 0"
            " AND calls_over_tolerance >= 0 AND compared_calls + computed_only_calls + unpriced_calls <= calls"
            " AND calls_over_tolerance <= compared_calls",
            name="counts_consistent",
        ),
        CheckConstraint(
            "absolute_tolerance_usd >= 0 AND relative_tolerance_pct >= 0", name="tolerance_non_negative"
        ),
        CheckConstraint(
            "verdict IN (" + ", ".join(f"'{v}'" for v in ACCURACY_VERDICTS) + ")", name="verdict_known"
        ),
        CheckConstraint("jsonb_typeof(worst_calls) = 'array'", name="worst_calls_is_list"),
    )


event.listen(Base.metadata, "after_create", DDL(COST_CALCULATIONS_VIEW))  # type: ignore[no-untyped-call]
event.listen(Base.metadata, "before_drop", DDL("DROP VIEW IF EXISTS cost_calculations"))  # type: ignore[no-untyped-call]
