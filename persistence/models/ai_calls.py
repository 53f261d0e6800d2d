"""The AI-call ledger (seed 000): one row per provider call, with tokens, cost and attribution.

Money is NUMERIC / `Decimal` end to end. Revision 0002 extends the seed's table with disjoint token
buckets, raw usage, status, the price used, monthly partitions, and the idempotency-key table.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    PrimaryKeyConstraint,
    String,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import JSON, Base

# Call outcomes. Failed calls are logged too: the vendor may bill them, and reconciliation must see them.
CALL_STATUSES = ("success", "error", "timeout", "rate_limited", "cancelled")
# How `cost_usd` was obtained: given by the caller, or computed from `vendor_prices`; 'unpriced': neither
# (no price in force and no cost given), so `cost_usd` is NULL until `reprice` finds a price (revision 0009).
COST_SOURCES = ("provided", "computed", "unpriced")


class AICall(Base):
    """One provider call. Partitioned by month on `created_at`, so the key is (id, created_at).

    Token buckets are disjoint (field notes 4): `input_tokens` is uncached input only, cache reads,
    5-minute and 1-hour cache writes and reasoning tokens have their own columns, and `total_tokens`
    adds all six. The
    provider's raw usage object is kept in `usage`. `cost_usd` is what the ledger counts (the
    caller's figure when given, else ours); `computed_cost_usd` is always ours, at full precision,
    from the price row `price_id`, so the two can be compared. A call with neither is stored
    unpriced (`cost_source` 'unpriced', no cost at all, never an invented one) and priced later by
    `reprice_calls`.
    """

    __tablename__ = "ai_calls"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))

    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cache_read_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    cache_write_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    reasoning_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Anthropic's 1-hour cache writes (revision 0007); `cache_write_tokens` holds the 5-minute ones.
    cache_write_1h_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    total_tokens: Mapped[int] = mapped_column(
        BigInteger,
        Computed(
            "input_tokens + output_tokens + cache_read_tokens + cache_write_tokens + reasoning_tokens"
            " + cache_write_1h_tokens",
            persisted=True,
        ),
    )
    usage: Mapped[JSON | None]

    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(10, 6))  # NULL: unpriced
    computed_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(20, 12))
    cost_source: Mapped[str] = mapped_column(String(10), server_default=text("'provided'"))
    price_id: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), server_default=text("'success'"))
    error_class: Mapped[str | None] = mapped_column(String(100))

    customer_id: Mapped[str | None] = mapped_column(String(100))
    # The tenant and distribution key (revision 0025): '' is "no organization" (the ledger reads
    # it back as None; records refuse '').
    organization_id: Mapped[str] = mapped_column(String(100), server_default=text("''"))
    product_id: Mapped[str | None] = mapped_column(String(100))
    environment: Mapped[str | None] = mapped_column(String(20))

    request_id: Mapped[str | None] = mapped_column(String(200))
    trace_id: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        # The tenant leads (revision 0025: the schema can be distributed by it) and a partitioned
        # table's keys must include the partition column; the ORM still identifies a row by `id`
        # alone (it is unique: one identity sequence feeds every partition).
        PrimaryKeyConstraint("organization_id", "created_at", "id"),
        CheckConstraint("input_tokens >= 0", name="input_tokens_non_negative"),
        CheckConstraint("output_tokens >= 0", name="output_tokens_non_negative"),
        CheckConstraint(
            "cache_read_tokens >= 0 AND cache_write_tokens >= 0 AND reasoning_tokens >= 0",
            name="token_buckets_non_negative",
        ),
        CheckConstraint("cache_write_1h_tokens >= 0", name="cache_write_1h_tokens_non_negative"),
        CheckConstraint("cost_usd >= 0", name="cost_non_negative"),
        CheckConstraint("computed_cost_usd >= 0", name="computed_cost_non_negative"),
        CheckConstraint(
            "cost_source IN (" + ", ".join(f"'{s}'" for s in COST_SOURCES) + ")", name="cost_source_known"
        ),
        CheckConstraint(
            "(cost_source = 'unpriced') = (cost_usd IS NULL) "
            "AND (cost_source <> 'unpriced' OR (computed_cost_usd IS NULL AND price_id IS NULL))",
            name="unpriced_has_no_cost",
        ),
        CheckConstraint("latency_ms >= 0", name="latency_non_negative"),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in CALL_STATUSES) + ")", name="status_known"
        ),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )
    __mapper_args__ = {"primary_key": [id]}


# Append-only and queried by time range: one BRIN index replaces the seed's btrees on created_at and
# (created_at, provider); measured here, it is ~1000x smaller at equal speed for range scans.
Index("ix_ai_calls_created_at_brin", AICall.created_at, postgresql_using="brin")
Index("ix_ai_calls_provider", AICall.provider)
Index("ix_ai_calls_customer_id_created_at", AICall.customer_id, AICall.created_at)
# Pending batches' id ranges, reprice and the requests' link find calls by id (the key leads with
# the tenant); a tenant's time range is the key's prefix.
Index("ix_ai_calls_id", AICall.id)
# The unpriced calls only (a handful): health counts them and `reprice_calls` walks them (revision 0009).
Index(
    "ix_ai_calls_created_at_id",
    AICall.created_at,
    AICall.id,
    postgresql_where=text("cost_source = 'unpriced'"),
)


class AICallKey(Base):
    """The idempotency key of every logged call: `provider:request_id`, or a generated event id,
    per organization (the call's `organization_id`, '' for none; revision 0025).

    A separate, unpartitioned table, because a unique constraint on the partitioned ledger would
    have to include `created_at`, and a retry may carry another time. `payload_hash` (SHA-256 of
    the call's content) tells an honest retry from a different call reusing the key.
    """

    __tablename__ = "ai_call_keys"

    organization_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(300), primary_key=True)
    call_id: Mapped[int] = mapped_column(BigInteger)
    call_created_at: Mapped[datetime]
    payload_hash: Mapped[bytes] = mapped_column(LargeBinary)


Index("ix_ai_call_keys_call_created_at_brin", AICallKey.call_created_at, postgresql_using="brin")
