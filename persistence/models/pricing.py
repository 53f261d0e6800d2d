"""Effective-dated vendor prices (seed 002's `global_vendor_pricing` intent), USD per million tokens.

One row is the price of one (provider, model) for one tenant (`tenant_id`, matched against the
call's `organization_id`; '' is the global price) from `effective_from` until `effective_to`
(NULL: open-ended). A tenant's row wins over the global one. Rows of the same key never overlap:
a trigger (revision 0002) rejects an overlap with SQLSTATE 23P01, mapped to `ConflictError`.
Prices per million tokens keep the figures exactly as vendors publish them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Identity,
    Index,
    Numeric,
    String,
    Table,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base

PRICE_BUCKETS = ("input", "output", "cache_read", "cache_write", "reasoning")


class VendorPrice(Base):
    __tablename__ = "vendor_prices"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[str] = mapped_column(String(100), server_default=text("''"))
    input_per_mtok: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    output_per_mtok: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    cache_read_per_mtok: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    cache_write_per_mtok: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    reasoning_per_mtok: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    # Anthropic's 1-hour cache writes (revision 0007). NULL: this row prices none, so a call with
    # some is unpriced by it rather than priced at the 5-minute rate.
    cache_write_1h_per_mtok: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    effective_from: Mapped[datetime]
    effective_to: Mapped[datetime | None]
    source: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            " AND ".join(f"{bucket}_per_mtok >= 0" for bucket in PRICE_BUCKETS), name="prices_non_negative"
        ),
        CheckConstraint("effective_to IS NULL OR effective_to > effective_from", name="period_ordered"),
        CheckConstraint("cache_write_1h_per_mtok >= 0", name="cache_write_1h_price_non_negative"),
    )


Index(
    "ix_vendor_prices_provider_model_tenant_id_effective_from",
    VendorPrice.provider,
    VendorPrice.model,
    VendorPrice.tenant_id,
    VendorPrice.effective_from,
    unique=True,
)


# One row counting changes to `vendor_prices`: a statement-level trigger (revision 0010) bumps it on
# every insert, update, delete or truncate, so a logger learns in the round trip it makes anyway
# whether its in-memory prices are current. A table, not a mapped class: nothing but the trigger
# writes it.
vendor_prices_version = Table(
    "vendor_prices_version",
    Base.metadata,
    Column("id", Boolean, primary_key=True, server_default=text("true")),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("id", name="one_row"),
)
