"""Effective-dated vendor prices (seed 002's `global_vendor_pricing` intent), USD per million tokens.

One row is the price of one (provider, model) for one tenant (`tenant_id`, matched against the
call's `organization_id`; '' is the global price) from `effective_from` until `effective_to`
(NULL: open-ended), for calls whose input exceeds `min_input_tokens` (a context-length tier,
revision 0016; 0 the base tier). A tenant's row of a tier wins over the global one. Rows of the same
key (provider, model, tenant, tier) never overlap:
a trigger (revision 0002) rejects an overlap with SQLSTATE 23P01, mapped to `ConflictError`.
Prices per million tokens keep the figures exactly as vendors publish them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Identity,
    Index,
    Numeric,
    String,
    Table,
    event,
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
    # The tier (revision 0016): the row prices a whole call whose input tokens (cached included)
    # exceed this; 0 is the base tier.
    min_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            " AND ".join(f"{bucket}_per_mtok >= 0" for bucket in PRICE_BUCKETS), name="prices_non_negative"
        ),
        CheckConstraint("effective_to IS NULL OR effective_to > effective_from", name="period_ordered"),
        CheckConstraint("cache_write_1h_per_mtok >= 0", name="cache_write_1h_price_non_negative"),
        CheckConstraint("min_input_tokens >= 0", name="min_input_tokens_non_negative"),
    )


Index(
    "ix_vendor_prices_provider_model_tenant_id_tier_from",
    VendorPrice.provider,
    VendorPrice.model,
    VendorPrice.tenant_id,
    VendorPrice.min_input_tokens,
    VendorPrice.effective_from,
    unique=True,
)


# Seed 002's `global_vendor_pricing`, as a view: the global prices in force now, under the seed's
# names (`vendor`, `input_price`/`output_price` per token, `effective_date`, `is_active`) plus per-1K
# and per-1M figures and our cache/reasoning buckets. Products of exact decimals, never rounded.
# Base tiers only (one row per model, as the seed counts them; the context-length tiers are in
# `vendor_prices`). Revision 0016 creates this view (0012 had it without the tier filter); a later
# revision that alters a column it reads must drop and recreate it.
GLOBAL_VENDOR_PRICING_VIEW = """
CREATE VIEW global_vendor_pricing AS
SELECT p.id, p.provider AS vendor, p.model, CAST('tokens' AS varchar(50)) AS pricing_model,
       p.input_per_mtok * 0.000001 AS input_price, p.output_per_mtok * 0.000001 AS output_price,
       p.input_per_mtok * 0.001 AS input_price_per_1k_tokens,
       p.output_per_mtok * 0.001 AS output_price_per_1k_tokens,
       p.input_per_mtok AS input_price_per_1m_tokens, p.output_per_mtok AS output_price_per_1m_tokens,
       p.cache_read_per_mtok AS cache_read_price_per_1m_tokens,
       p.cache_write_per_mtok AS cache_write_price_per_1m_tokens,
       p.cache_write_1h_per_mtok AS cache_write_1h_price_per_1m_tokens,
       p.reasoning_per_mtok AS reasoning_price_per_1m_tokens,
       CAST('USD' AS varchar(3)) AS currency, p.effective_from AS effective_date,
       p.effective_to AS effective_until, true AS is_active, p.source, p.created_at
  FROM vendor_prices p
 WHERE p.tenant_id = '' AND p.min_input_tokens = 0
   AND p.effective_from <= now() AND (p.effective_to IS NULL OR p.effective_to > now())
"""


# So `Base.metadata.create_all` builds what the migrations build (the view lives and dies with its table).
def _create_view(target: object, connection: Connection, **kw: Any) -> None:
    connection.execute(text(GLOBAL_VENDOR_PRICING_VIEW))


def _drop_view(target: object, connection: Connection, **kw: Any) -> None:
    connection.execute(text("DROP VIEW IF EXISTS global_vendor_pricing"))


event.listen(VendorPrice.__table__, "after_create", _create_view)
event.listen(VendorPrice.__table__, "before_drop", _drop_view)


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
