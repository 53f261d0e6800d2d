"""seed 002's names: `global_vendor_pricing` (a view), `rate_limit_configs`, `company_quotas`; rollup scope indexes

So that seed 002's post-migration verification queries run as written and find its tables and
their default data:

- `global_vendor_pricing` is a VIEW over `vendor_prices` (which stays the authority): the global
  rows (tenant_id '') in force now, with the seed's column names (`vendor`, `input_price` and
  `output_price` per token, `effective_date`, `is_active`) and per-1K/per-1M/cache figures.
  Its default rows are the prices revision 0003 (or `persistence prices sync`) loaded.
- `rate_limit_configs` and `company_quotas` (see `persistence.models.limits`), keyed by company
  first. Default data as seed 002's migration inserts it, idempotently (`ON CONFLICT DO NOTHING`):
  its default rate limits (tier `basic`: 50 requests a minute, burst 100; 1,000 an hour; 10,000 a
  day) as the global rows. Seed 002 inserts quotas (USD 1,000 a month, 50 a day, 10 an hour) only
  for existing companies, and there is no company table yet: `company_quotas` starts empty.
- Indexes on (organization_id | customer_id | product_id, hour) of `ai_call_usage_hourly`, for
  per-tenant reads (`get_tenant_daily_cost`) and per-scope cost alerts.

The downgrade drops the view, the two tables and the indexes; it leaves `vendor_prices` untouched.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 12:40:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose (a revision must not change when the models do); the models declare the same.
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
 WHERE p.tenant_id = '' AND p.effective_from <= now() AND (p.effective_to IS NULL OR p.effective_to > now())
"""

# Seed 002's default rate limits (its `basic` tier): metric, period, limit, burst.
DEFAULT_RATE_LIMITS: tuple[tuple[str, str, int, int | None], ...] = (
    ("requests", "minute", 50, 100),
    ("requests", "hour", 1000, None),
    ("requests", "day", 10000, None),
)

_SCOPE_INDEXES = ("organization_id", "customer_id", "product_id")


def upgrade() -> None:
    op.execute(GLOBAL_VENDOR_PRICING_VIEW)
    op.create_table(
        "rate_limit_configs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("company_id", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("scope_id", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("period", sa.String(length=10), nullable=True),
        sa.Column("limit_value", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("burst", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "scope IN ('global', 'tier', 'company', 'user', 'key')", name=op.f("ck_rate_limit_configs_scope_known")
        ),
        sa.CheckConstraint(
            "metric IN ('requests', 'tokens', 'cost_usd', 'concurrency')",
            name=op.f("ck_rate_limit_configs_metric_known"),
        ),
        sa.CheckConstraint(
            "(metric = 'concurrency') = (period IS NULL) AND (period IS NULL OR "
            "period IN ('second', 'minute', 'hour', 'day'))",
            name=op.f("ck_rate_limit_configs_period_known"),
        ),
        sa.CheckConstraint(
            "(scope IN ('global', 'tier')) = (company_id = '')", name=op.f("ck_rate_limit_configs_company_given")
        ),
        sa.CheckConstraint(
            "(scope IN ('global', 'company')) = (scope_id = '')", name=op.f("ck_rate_limit_configs_scope_id_given")
        ),
        sa.CheckConstraint(
            "limit_value >= 0 AND burst >= limit_value AND (metric = 'cost_usd' OR "
            "(limit_value = trunc(limit_value) AND burst = trunc(burst)))",
            name=op.f("ck_rate_limit_configs_limits_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_limit_configs")),
        sa.UniqueConstraint(
            "company_id", "scope", "scope_id", "metric", "period",
            name=op.f("uq_rate_limit_configs_company_id_scope_scope_id_metric_period"),
            postgresql_nulls_not_distinct=True,
        ),
    )  # fmt: skip
    op.create_table(
        "company_quotas",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("time_zone", sa.String(length=64), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column("limit_value", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("company_id <> ''", name=op.f("ck_company_quotas_company_given")),
        sa.CheckConstraint(
            "metric IN ('requests', 'tokens', 'cost_usd')", name=op.f("ck_company_quotas_metric_known")
        ),
        sa.CheckConstraint(
            "period IN ('hourly', 'daily', 'weekly', 'monthly')", name=op.f("ck_company_quotas_period_known")
        ),
        sa.CheckConstraint("time_zone <> ''", name=op.f("ck_company_quotas_time_zone_given")),
        sa.CheckConstraint(
            "limit_value >= 0 AND (metric = 'cost_usd' OR limit_value = trunc(limit_value))",
            name=op.f("ck_company_quotas_limit_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_company_quotas")),
        sa.UniqueConstraint(
            "company_id", "metric", "period", name=op.f("uq_company_quotas_company_id_metric_period")
        ),
    )
    for column in _SCOPE_INDEXES:
        op.create_index(f"ix_ai_call_usage_hourly_{column}_hour", "ai_call_usage_hourly", [column, "hour"])
    _insert_default_rate_limits()


def _insert_default_rate_limits() -> None:
    # Idempotent: a rerun (or rows entered by hand under the same key) inserts nothing.
    configs = sa.table(
        "rate_limit_configs",
        sa.column("company_id", sa.String()),
        sa.column("scope", sa.String()),
        sa.column("scope_id", sa.String()),
        sa.column("metric", sa.String()),
        sa.column("period", sa.String()),
        sa.column("limit_value", sa.Numeric()),
        sa.column("burst", sa.Numeric()),
    )
    rows = [
        {
            "company_id": "",
            "scope": "global",
            "scope_id": "",
            "metric": metric,
            "period": period,
            "limit_value": Decimal(limit),
            "burst": None if burst is None else Decimal(burst),
        }
        for metric, period, limit, burst in DEFAULT_RATE_LIMITS
    ]
    op.execute(
        postgresql.insert(configs)
        .values(rows)
        .on_conflict_do_nothing(constraint="uq_rate_limit_configs_company_id_scope_scope_id_metric_period")
    )


def downgrade() -> None:
    # Names written out, so `rollback`'s confirmation can list them (migration_drops.py).
    op.drop_index("ix_ai_call_usage_hourly_product_id_hour", table_name="ai_call_usage_hourly")
    op.drop_index("ix_ai_call_usage_hourly_customer_id_hour", table_name="ai_call_usage_hourly")
    op.drop_index("ix_ai_call_usage_hourly_organization_id_hour", table_name="ai_call_usage_hourly")
    op.drop_table("company_quotas")
    op.drop_table("rate_limit_configs")
    op.execute("DROP VIEW global_vendor_pricing")
