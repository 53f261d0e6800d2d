"""cost accuracy and billing validation: the `cost_calculations` view, `cost_accuracy_validations`, billing tables

Seed 002's `cost_calculations` is a view over the ledger (`ai_calls` + the price row each call used):
the ledger already stores the provided and the computed cost per call. `cost_accuracy_validations`
keeps one row per provider/model/UTC day of a validation run. `billing_periods` (open -> grace ->
closed), `billing_data` (seed 002: what a vendor billed, with late rows of a closed period kept as
adjustments) and `billing_validations` (one per period, final once closed). The downgrade drops the
view and the four tables.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 12:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of `persistence.models.cost_accuracy.COST_CALCULATIONS_VIEW` as of this revision.
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


def upgrade() -> None:
    op.create_table(
        "billing_periods",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("grace_ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=10), server_default=sa.text("'open'"), nullable=False),
        sa.Column("grace_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(state = 'open' AND grace_at IS NULL AND closed_at IS NULL) OR (state = 'grace' AND grace_at IS NOT NULL AND closed_at IS NULL) OR (state = 'closed' AND grace_at IS NOT NULL AND closed_at IS NOT NULL)",
            name=op.f("ck_billing_periods_state_timestamps"),
        ),
        sa.CheckConstraint(
            "state IN ('open', 'grace', 'closed')", name=op.f("ck_billing_periods_state_known")
        ),
        sa.CheckConstraint("grace_ends_at >= period_end", name=op.f("ck_billing_periods_grace_after_period")),
        sa.CheckConstraint("period_end > period_start", name=op.f("ck_billing_periods_period_ordered")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_periods")),
        sa.UniqueConstraint(
            "provider", "period_start", name=op.f("uq_billing_periods_provider_period_start")
        ),
    )
    op.create_table(
        "cost_accuracy_validations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("compared_calls", sa.Integer(), nullable=False),
        sa.Column("computed_only_calls", sa.Integer(), nullable=False),
        sa.Column("unpriced_calls", sa.Integer(), nullable=False),
        sa.Column("calls_over_tolerance", sa.Integer(), nullable=False),
        sa.Column("computed_cost_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("provided_cost_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("variance_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("abs_variance_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("variance_pct", sa.Numeric(precision=12, scale=4), nullable=True),
        sa.Column("absolute_tolerance_usd", sa.Numeric(precision=20, scale=12), nullable=False),
        sa.Column("relative_tolerance_pct", sa.Numeric(precision=9, scale=4), nullable=False),
        sa.Column("verdict", sa.String(length=20), nullable=False),
        sa.Column("worst_calls", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "validated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "jsonb_typeof(worst_calls) = 'array'",
            name=op.f("ck_cost_accuracy_validations_worst_calls_is_list"),
        ),
        sa.CheckConstraint(
            "verdict IN ('ok', 'over_tolerance', 'no_provided_cost', 'unpriced')",
            name=op.f("ck_cost_accuracy_validations_verdict_known"),
        ),
        sa.CheckConstraint(
            "absolute_tolerance_usd >= 0 AND relative_tolerance_pct >= 0",
            name=op.f("ck_cost_accuracy_validations_tolerance_non_negative"),
        ),
        sa.CheckConstraint(
            "calls >= 0 AND compared_calls >= 0 AND computed_only_calls >= 0 AND unpriced_calls >= 0 AND calls_over_tolerance >= 0 AND compared_calls + computed_only_calls + unpriced_calls <= calls AND calls_over_tolerance <= compared_calls",
            name=op.f("ck_cost_accuracy_validations_counts_consistent"),
        ),
        sa.CheckConstraint(
            "period_end > period_start", name=op.f("ck_cost_accuracy_validations_period_ordered")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_accuracy_validations")),
        sa.UniqueConstraint(
            "period_start",
            "period_end",
            "provider",
            "model",
            "day",
            name="uq_cost_accuracy_validations_period_day",
        ),
    )
    op.create_table(
        "billing_data",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("period_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("amount_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("external_id", sa.String(length=300), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('usage', 'adjustment')", name=op.f("ck_billing_data_kind_known")),
        sa.CheckConstraint("calls >= 0 AND tokens >= 0", name=op.f("ck_billing_data_counts_non_negative")),
        sa.ForeignKeyConstraint(
            ["period_id"],
            ["billing_periods.id"],
            name=op.f("fk_billing_data_period_id_billing_periods"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_data")),
        sa.UniqueConstraint("source", "external_id", name=op.f("uq_billing_data_source_external_id")),
    )
    op.create_index("ix_billing_data_period_id_kind", "billing_data", ["period_id", "kind"], unique=False)
    op.create_table(
        "billing_validations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("period_id", sa.BigInteger(), nullable=False),
        sa.Column("period_state", sa.String(length=10), nullable=False),
        sa.Column("billed_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("ledger_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("ledger_calls", sa.Integer(), nullable=False),
        sa.Column("variance_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("absolute_tolerance_usd", sa.Numeric(precision=20, scale=12), nullable=False),
        sa.Column("relative_tolerance_pct", sa.Numeric(precision=9, scale=4), nullable=False),
        sa.Column("verdict", sa.String(length=10), nullable=False),
        sa.Column("lines", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "validated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "jsonb_typeof(lines) = 'array'", name=op.f("ck_billing_validations_lines_is_list")
        ),
        sa.CheckConstraint(
            "period_state IN ('open', 'grace', 'closed')",
            name=op.f("ck_billing_validations_period_state_known"),
        ),
        sa.CheckConstraint(
            "verdict IN ('ok', 'mismatch')", name=op.f("ck_billing_validations_verdict_known")
        ),
        sa.CheckConstraint(
            "absolute_tolerance_usd >= 0 AND relative_tolerance_pct >= 0",
            name=op.f("ck_billing_validations_tolerance_non_negative"),
        ),
        sa.CheckConstraint(
            "ledger_calls >= 0", name=op.f("ck_billing_validations_ledger_calls_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["period_id"],
            ["billing_periods.id"],
            name=op.f("fk_billing_validations_period_id_billing_periods"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_validations")),
        sa.UniqueConstraint("period_id", name=op.f("uq_billing_validations_period_id")),
    )

    op.execute(COST_CALCULATIONS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW cost_calculations")
    op.drop_table("billing_validations")
    op.drop_index("ix_billing_data_period_id_kind", table_name="billing_data")
    op.drop_table("billing_data")
    op.drop_table("cost_accuracy_validations")
    op.drop_table("billing_periods")
