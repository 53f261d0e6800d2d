"""Hourly UTC usage rollups of the AI-call ledger, kept exact without write contention.

Writers never update a shared counter (field notes 4: deadlocks on `spend = spend + x`). In the
same transaction as its ledger rows, `log_call` appends one aggregate row to `ai_call_usage_deltas`,
and `log_batch` appends only the id ranges it wrote to `ai_call_pending_batches` (one short row per
batch, so bulk ingest pays almost nothing for the rollups). A fold (one statement, under an
advisory lock) aggregates the pending batches' ledger rows together with the deltas into the two
rollup tables. Readers add rollups, unfolded deltas and the ledger rows of pending batches, so they are
exact at every moment.

- `ai_call_usage_hourly`: every attribution dimension (per customer, org, product, environment).
- `ai_call_model_hourly`: provider and model only; a few rows per hour, so `get_stats` over a month
  reads a few thousand rows instead of the ledger.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Identity,
    Index,
    Numeric,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base

DIMENSIONS = ("provider", "model", "organization_id", "customer_id", "product_id", "environment")
MEASURES = (
    "calls",
    "error_calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "computed_cost_usd",
    "latency_ms_sum",
    "latency_count",
    "unpriced_calls",
    "unpriced_tokens",
)


class _Measures:
    calls: Mapped[int] = mapped_column(BigInteger)
    error_calls: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))  # revision 0007
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    # Sum over the calls that had a price; NULL when none had.
    computed_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(24, 12))
    latency_ms_sum: Mapped[int] = mapped_column(BigInteger)
    latency_count: Mapped[int] = mapped_column(BigInteger)
    # Calls stored without a price (cost_usd NULL, counted as 0 in `cost_usd`) and their tokens
    # (revision 0009); a reprice adds a delta of -1 call and its cost.
    unpriced_calls: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    unpriced_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class _Dimensions:
    hour: Mapped[datetime]
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    # The tenant ('' for calls without an organization), leading the keys (revision 0025).
    organization_id: Mapped[str] = mapped_column(String(100), server_default=text("''"))
    customer_id: Mapped[str | None] = mapped_column(String(100))
    product_id: Mapped[str | None] = mapped_column(String(100))
    environment: Mapped[str | None] = mapped_column(String(20))


class AICallUsageDelta(_Dimensions, _Measures, Base):
    """Append-only aggregates written with the ledger rows; folded away into the rollups."""

    __tablename__ = "ai_call_usage_deltas"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))

    __table_args__ = (PrimaryKeyConstraint("organization_id", "id"),)
    __mapper_args__ = {"primary_key": [id]}


Index("ix_ai_call_usage_deltas_hour", AICallUsageDelta.hour)


class AICallPendingBatch(Base):
    """Ids `first_id..last_id` of ledger rows written by one `log_batch`, not yet in the rollups."""

    __tablename__ = "ai_call_pending_batches"

    first_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    written_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint("last_id >= first_id", name="id_range"),)


class AICallUsageHourly(_Dimensions, _Measures, Base):
    """One row per UTC hour and attribution; NULL attribution values group together."""

    __tablename__ = "ai_call_usage_hourly"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))

    __table_args__ = (
        PrimaryKeyConstraint("organization_id", "id"),
        # The tenant first (revision 0025): its prefix (organization_id, hour) serves a tenant's day.
        UniqueConstraint(
            "organization_id",
            "hour",
            *(d for d in DIMENSIONS if d != "organization_id"),
            name="uq_ai_call_usage_hourly_key",
            postgresql_nulls_not_distinct=True,
        ),
    )
    __mapper_args__ = {"primary_key": [id]}


# Per-scope reads (cost alerts on a customer or product) are an index range each instead of a scan
# of every attribution of every hour (revision 0012; an organization's is the unique key's prefix).
for _column in ("customer_id", "product_id"):
    Index(
        f"ix_ai_call_usage_hourly_{_column}_hour",
        AICallUsageHourly.__table__.c[_column],
        AICallUsageHourly.__table__.c.hour,
    )


class AICallModelHourly(_Measures, Base):
    """One row per UTC hour, provider and model: what `get_stats` reads for whole hours."""

    __tablename__ = "ai_call_model_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(50), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
