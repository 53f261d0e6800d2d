"""AI-call ledger: partitioned ai_calls, idempotency keys, vendor prices, hourly rollups

- `ai_calls` becomes range-partitioned by month on `created_at` (key (id, created_at)), gains
  disjoint token buckets, raw usage, status / error class, computed cost and the price used.
  Existing rows are copied over (ids kept); partitions cover them, the current and the next month,
  plus a default partition so no insert ever fails for want of one.
- `ai_call_keys`: one idempotency key per logged call (unpartitioned: unique on the key alone).
- `vendor_prices`: effective-dated per-bucket prices; a trigger rejects overlapping periods of one
  (provider, model, tenant) with SQLSTATE 23P01 (no btree_gist needed).
- Hourly rollups + append-only deltas, rebuilt here from the copied rows.
- `ai_calls_ensure_partition(date)`: creates a month's partition, moving that month's rows out of
  the default partition first; used here and by `persistence partitions`.

The seed's ReconciliationReport table is untouched.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEED_COLUMNS = (
    "id, created_at, provider, model, input_tokens, output_tokens, cost_usd, latency_ms, customer_id, "
    "organization_id, product_id, environment, request_id, trace_id"
)

ENSURE_PARTITION = r"""
CREATE FUNCTION ai_calls_ensure_partition(month date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    lo timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    part text := 'ai_calls_p' || to_char(month, 'YYYY_MM');
    cols text;
    stranded boolean := false;
BEGIN
    IF to_regclass(quote_ident(part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Rows of this month that went to the default partition move into the new one; otherwise
    -- CREATE ... PARTITION OF would fail on them.
    IF to_regclass('ai_calls_default') IS NOT NULL THEN
        SELECT EXISTS (SELECT 1 FROM ai_calls_default WHERE created_at >= lo AND created_at < hi)
          INTO stranded;
    END IF;
    IF stranded THEN
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
          FROM pg_attribute
         WHERE attrelid = 'ai_calls'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
        CREATE TEMP TABLE ai_calls_moving ON COMMIT DROP AS
            SELECT * FROM ai_calls_default WHERE created_at >= lo AND created_at < hi;
        DELETE FROM ai_calls_default WHERE created_at >= lo AND created_at < hi;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF ai_calls FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    IF stranded THEN
        EXECUTE format('INSERT INTO ai_calls (%s) SELECT %s FROM ai_calls_moving', cols, cols);
        DROP TABLE ai_calls_moving;
    END IF;
    RETURN true;
END
$fn$
"""

PRICE_OVERLAP = r"""
CREATE FUNCTION vendor_prices_no_overlap() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Serialise writers of the same key, so two concurrent inserts cannot both pass the check.
    PERFORM pg_advisory_xact_lock(hashtextextended(NEW.provider || '/' || NEW.model || '/' || NEW.tenant_id, 0));
    IF EXISTS (
        SELECT 1 FROM vendor_prices p
         WHERE p.provider = NEW.provider AND p.model = NEW.model AND p.tenant_id = NEW.tenant_id
           AND p.id <> NEW.id
           AND tstzrange(p.effective_from, p.effective_to) && tstzrange(NEW.effective_from, NEW.effective_to)
    ) THEN
        RAISE EXCEPTION 'price period of % / % (tenant %) overlaps an existing one',
            NEW.provider, NEW.model, NEW.tenant_id
            USING ERRCODE = '23P01', CONSTRAINT = 'vendor_prices_no_overlap', TABLE = 'vendor_prices';
    END IF;
    RETURN NEW;
END
$fn$
"""
PRICE_TRIGGER = """
CREATE TRIGGER vendor_prices_no_overlap BEFORE INSERT OR UPDATE ON vendor_prices
    FOR EACH ROW EXECUTE FUNCTION vendor_prices_no_overlap()
"""


def _measures() -> list[sa.Column[object]]:
    big = ("calls", "error_calls", "input_tokens", "output_tokens", "cache_read_tokens",
           "cache_write_tokens", "reasoning_tokens", "total_tokens")  # fmt: skip
    cols: list[sa.Column[object]] = [sa.Column(name, sa.BigInteger(), nullable=False) for name in big]
    cols += [
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("computed_cost_usd", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("latency_ms_sum", sa.BigInteger(), nullable=False),
        sa.Column("latency_count", sa.BigInteger(), nullable=False),
    ]
    return cols


def _dimensions() -> list[sa.Column[object]]:
    return [
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("organization_id", sa.String(length=100), nullable=True),
        sa.Column("customer_id", sa.String(length=100), nullable=True),
        sa.Column("product_id", sa.String(length=100), nullable=True),
        sa.Column("environment", sa.String(length=20), nullable=True),
    ]


_ROLLUP_SELECT = """
SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, {dims},
       count(*), count(*) FILTER (WHERE status <> 'success'), sum(input_tokens), sum(output_tokens),
       sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(total_tokens),
       sum(cost_usd), sum(computed_cost_usd), coalesce(sum(latency_ms), 0), count(latency_ms)
  FROM ai_calls GROUP BY 1, {dims}
"""
_MEASURE_NAMES = (
    "calls, error_calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    "reasoning_tokens, total_tokens, cost_usd, computed_cost_usd, latency_ms_sum, latency_count"
)


def _set_aside(name: str) -> None:
    """Rename `ai_calls` (with its key and sequence) to `name` and drop its indexes, so a new
    `ai_calls` can take every name; the caller copies the rows over and drops the old table."""
    op.execute(f"ALTER TABLE ai_calls RENAME TO {name}")
    op.execute(f"ALTER INDEX pk_ai_calls RENAME TO pk_{name}")
    op.execute(f"ALTER SEQUENCE ai_calls_id_seq RENAME TO {name}_id_seq")
    for index in ("ix_ai_calls_created_at_brin", "ix_ai_calls_customer_id_created_at",
                  "ix_ai_calls_organization_id_created_at", "ix_ai_calls_provider"):  # fmt: skip
        op.drop_index(index, table_name=name)


def upgrade() -> None:
    # 1. The seed's plain table steps aside (its names are freed for the partitioned one).
    _set_aside("ai_calls_seed")

    # 2. The partitioned ledger.
    op.create_table(
        "ai_calls",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_read_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("cache_write_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "total_tokens",
            sa.BigInteger(),
            sa.Computed(
                "input_tokens + output_tokens + cache_read_tokens + cache_write_tokens + reasoning_tokens",
                persisted=True,
            ),
            nullable=False,
        ),
        sa.Column("usage", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("cost_usd", sa.Numeric(precision=10, scale=6), nullable=False),
        sa.Column("computed_cost_usd", sa.Numeric(precision=20, scale=12), nullable=True),
        sa.Column("cost_source", sa.String(length=10), server_default=sa.text("'provided'"), nullable=False),
        sa.Column("price_id", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=20), server_default=sa.text("'success'"), nullable=False),
        sa.Column("error_class", sa.String(length=100), nullable=True),
        sa.Column("customer_id", sa.String(length=100), nullable=True),
        sa.Column("organization_id", sa.String(length=100), nullable=True),
        sa.Column("product_id", sa.String(length=100), nullable=True),
        sa.Column("environment", sa.String(length=20), nullable=True),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("trace_id", sa.String(length=200), nullable=True),
        sa.CheckConstraint("computed_cost_usd >= 0", name=op.f("ck_ai_calls_computed_cost_non_negative")),
        sa.CheckConstraint(
            "cost_source IN ('provided', 'computed')", name=op.f("ck_ai_calls_cost_source_known")
        ),
        sa.CheckConstraint("cost_usd >= 0", name=op.f("ck_ai_calls_cost_non_negative")),
        sa.CheckConstraint("input_tokens >= 0", name=op.f("ck_ai_calls_input_tokens_non_negative")),
        sa.CheckConstraint("latency_ms >= 0", name=op.f("ck_ai_calls_latency_non_negative")),
        sa.CheckConstraint("output_tokens >= 0", name=op.f("ck_ai_calls_output_tokens_non_negative")),
        sa.CheckConstraint(
            "status IN ('success', 'error', 'timeout', 'rate_limited', 'cancelled')",
            name=op.f("ck_ai_calls_status_known"),
        ),
        sa.CheckConstraint(
            "cache_read_tokens >= 0 AND cache_write_tokens >= 0 AND reasoning_tokens >= 0",
            name=op.f("ck_ai_calls_token_buckets_non_negative"),
        ),
        sa.PrimaryKeyConstraint("id", "created_at", name=op.f("pk_ai_calls")),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_ai_calls_created_at_brin", "ai_calls", ["created_at"], unique=False, postgresql_using="brin"
    )
    op.create_index(
        "ix_ai_calls_customer_id_created_at", "ai_calls", ["customer_id", "created_at"], unique=False
    )
    op.create_index(
        "ix_ai_calls_organization_id_created_at", "ai_calls", ["organization_id", "created_at"], unique=False
    )
    op.create_index("ix_ai_calls_provider", "ai_calls", ["provider"], unique=False)

    # 3. Partitions: every month the old rows span, this month and the next, then the default.
    op.execute(ENSURE_PARTITION)
    op.execute(
        "SELECT ai_calls_ensure_partition(m::date) FROM generate_series("
        " date_trunc('month', least((SELECT min(created_at) FROM ai_calls_seed), now()) AT TIME ZONE 'UTC'),"
        " date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month', interval '1 month') AS m"
    )
    op.execute("CREATE TABLE ai_calls_default PARTITION OF ai_calls DEFAULT")

    # 4. Existing rows keep their ids; the new identity continues after them.
    op.execute(f"INSERT INTO ai_calls ({_SEED_COLUMNS}) SELECT {_SEED_COLUMNS} FROM ai_calls_seed")  # noqa: S608
    op.execute(
        "SELECT setval(pg_get_serial_sequence('ai_calls', 'id'), max(id)) FROM ai_calls HAVING count(*) > 0"
    )
    op.drop_table("ai_calls_seed")

    # 5. Idempotency keys.
    op.create_table(
        "ai_call_keys",
        sa.Column("idempotency_key", sa.String(length=300), nullable=False),
        sa.Column("call_id", sa.BigInteger(), nullable=False),
        sa.Column("call_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload_hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_ai_call_keys")),
    )
    op.create_index(
        "ix_ai_call_keys_call_created_at_brin",
        "ai_call_keys",
        ["call_created_at"],
        unique=False,
        postgresql_using="brin",
    )

    # 6. Prices.
    op.create_table(
        "vendor_prices",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("tenant_id", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("input_per_mtok", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column("output_per_mtok", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column("cache_read_per_mtok", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column("cache_write_per_mtok", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column("reasoning_per_mtok", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("effective_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "effective_to IS NULL OR effective_to > effective_from",
            name=op.f("ck_vendor_prices_period_ordered"),
        ),
        sa.CheckConstraint(
            "input_per_mtok >= 0 AND output_per_mtok >= 0 AND cache_read_per_mtok >= 0 AND "
            "cache_write_per_mtok >= 0 AND reasoning_per_mtok >= 0",
            name=op.f("ck_vendor_prices_prices_non_negative"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vendor_prices")),
    )
    op.create_index(
        "ix_vendor_prices_provider_model_tenant_id_effective_from",
        "vendor_prices",
        ["provider", "model", "tenant_id", "effective_from"],
        unique=True,
    )
    op.execute(PRICE_OVERLAP)
    op.execute(PRICE_TRIGGER)

    # 7. Rollups and their deltas, rebuilt from the copied rows.
    op.create_table(
        "ai_call_usage_deltas",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        *_dimensions(),
        *_measures(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_call_usage_deltas")),
    )
    op.create_index("ix_ai_call_usage_deltas_hour", "ai_call_usage_deltas", ["hour"], unique=False)
    op.create_table(
        "ai_call_usage_hourly",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        *_dimensions(),
        *_measures(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_call_usage_hourly")),
        sa.UniqueConstraint(
            "hour",
            "provider",
            "model",
            "organization_id",
            "customer_id",
            "product_id",
            "environment",
            name="uq_ai_call_usage_hourly_key",
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_table(
        "ai_call_model_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        *_measures(),
        sa.PrimaryKeyConstraint("hour", "provider", "model", name=op.f("pk_ai_call_model_hourly")),
    )
    full = "provider, model, organization_id, customer_id, product_id, environment"
    op.execute(
        f"INSERT INTO ai_call_usage_hourly (hour, {full}, {_MEASURE_NAMES}) "
        + _ROLLUP_SELECT.format(dims=full)
    )
    op.execute(
        f"INSERT INTO ai_call_model_hourly (hour, provider, model, {_MEASURE_NAMES}) "
        + _ROLLUP_SELECT.format(dims="provider, model")
    )


def downgrade() -> None:
    op.drop_table("ai_call_model_hourly")
    op.drop_table("ai_call_usage_hourly")
    op.drop_table("ai_call_usage_deltas")
    op.execute("DROP TRIGGER vendor_prices_no_overlap ON vendor_prices")
    op.execute("DROP FUNCTION vendor_prices_no_overlap()")
    op.drop_table("vendor_prices")
    op.drop_table("ai_call_keys")

    # The seed's plain table again, with the seed's columns of every row (the buckets are lost:
    # cache and reasoning tokens are folded into input/output so totals still add up).
    _set_aside("ai_calls_ledger")
    op.create_table(
        "ai_calls",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column(
            "total_tokens",
            sa.Integer(),
            sa.Computed("input_tokens + output_tokens", persisted=True),
            nullable=False,
        ),
        sa.Column("cost_usd", sa.Numeric(precision=10, scale=6), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("customer_id", sa.String(length=100), nullable=True),
        sa.Column("organization_id", sa.String(length=100), nullable=True),
        sa.Column("product_id", sa.String(length=100), nullable=True),
        sa.Column("environment", sa.String(length=20), nullable=True),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("trace_id", sa.String(length=200), nullable=True),
        sa.CheckConstraint("cost_usd >= 0", name=op.f("ck_ai_calls_cost_non_negative")),
        sa.CheckConstraint("input_tokens >= 0", name=op.f("ck_ai_calls_input_tokens_non_negative")),
        sa.CheckConstraint("latency_ms >= 0", name=op.f("ck_ai_calls_latency_non_negative")),
        sa.CheckConstraint("output_tokens >= 0", name=op.f("ck_ai_calls_output_tokens_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_calls")),
    )
    op.execute(
        f"INSERT INTO ai_calls ({_SEED_COLUMNS}) SELECT id, created_at, provider, model, "  # noqa: S608
        "input_tokens + cache_read_tokens + cache_write_tokens, output_tokens + reasoning_tokens, cost_usd, "
        "latency_ms, customer_id, organization_id, product_id, environment, request_id, trace_id "
        "FROM ai_calls_ledger"
    )
    op.execute(
        "SELECT setval(pg_get_serial_sequence('ai_calls', 'id'), max(id)) FROM ai_calls HAVING count(*) > 0"
    )
    op.execute("DROP TABLE ai_calls_ledger")  # and every partition with it
    op.execute("DROP FUNCTION ai_calls_ensure_partition(date)")
    op.create_index(
        "ix_ai_calls_created_at_brin", "ai_calls", ["created_at"], unique=False, postgresql_using="brin"
    )
    op.create_index(
        "ix_ai_calls_customer_id_created_at", "ai_calls", ["customer_id", "created_at"], unique=False
    )
    op.create_index(
        "ix_ai_calls_organization_id_created_at", "ai_calls", ["organization_id", "created_at"], unique=False
    )
    op.create_index("ix_ai_calls_provider", "ai_calls", ["provider"], unique=False)
