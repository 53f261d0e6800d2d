"""quotas: seed 001's `quotas`, per-period usage counters, reservations and holds, seed 002's `rate_limit_resets`

Exact quotas without a reset job (see `persistence.models.quotas` and `persistence.quotas`):

- `quotas`: seed 001's per-user limits (`request_limit`, `token_limit`, `tier`, `reset_frequency`)
  plus `cost_limit_usd` and a time zone, keyed by company first.
- `quota_counters`: usage per (company, scope, subject, metric, period, period_start); a new period
  is a new row. `held` is the sum of the counter's `quota_holds`.
- `quota_reservations` and `quota_holds`: admitted requests and what each holds on each counter
  until its lease expires.
- `rate_limit_resets`: the append-only audit trail of manual resets and overrides.

`company_quotas` (revision 0012) gains `window_seconds` and the period 'rolling' (a rolling window,
counted in 60 buckets). The downgrade drops the five tables, deletes rolling company quotas and
restores `company_quotas` as 0012 made it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 13:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
# Frozen here on purpose (a revision must not change when the models do); the models declare the same.
_WINDOW = (
    "(period = 'rolling') = (window_seconds IS NOT NULL) AND window_seconds % 60 = 0 "
    "AND window_seconds BETWEEN 60 AND 2678400"
)


def upgrade() -> None:
    op.add_column("company_quotas", sa.Column("window_seconds", sa.Integer(), nullable=True))
    op.drop_constraint("ck_company_quotas_period_known", "company_quotas", type_="check")
    op.create_check_constraint(
        "ck_company_quotas_period_known",
        "company_quotas",
        "period IN ('hourly', 'daily', 'weekly', 'monthly', 'rolling')",
    )
    op.create_check_constraint("ck_company_quotas_window_valid", "company_quotas", _WINDOW)
    op.create_table(
        "quotas",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("quota_id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("tier", sa.String(length=20), server_default=sa.text("'basic'"), nullable=False),
        sa.Column("request_limit", sa.BigInteger(), nullable=True),
        sa.Column("token_limit", sa.BigInteger(), nullable=True),
        sa.Column("cost_limit_usd", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column(
            "reset_frequency", sa.String(length=10), server_default=sa.text("'monthly'"), nullable=False
        ),
        sa.Column("time_zone", sa.String(length=64), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.CheckConstraint("tier IN ('basic', 'standard', 'premium')", name=op.f("ck_quotas_tier_known")),
        sa.CheckConstraint(
            _WINDOW.replace("period =", "reset_frequency ="), name=op.f("ck_quotas_window_valid")
        ),
        sa.CheckConstraint(
            "reset_frequency IN ('hourly', 'daily', 'weekly', 'monthly', 'rolling')",
            name=op.f("ck_quotas_reset_frequency_known"),
        ),
        sa.CheckConstraint("company_id <> '' AND user_id <> ''", name=op.f("ck_quotas_subject_given")),
        sa.CheckConstraint("time_zone <> ''", name=op.f("ck_quotas_time_zone_given")),
        sa.CheckConstraint(
            "request_limit >= 0 AND token_limit >= 0 AND cost_limit_usd >= 0",
            name=op.f("ck_quotas_limits_valid"),
        ),
        sa.PrimaryKeyConstraint("company_id", "quota_id", name=op.f("pk_quotas")),
        sa.UniqueConstraint(
            "company_id",
            "user_id",
            "reset_frequency",
            name=op.f("uq_quotas_company_id_user_id_reset_frequency"),
        ),
    )
    op.create_table(
        "quota_counters",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("subject_id", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.Numeric(precision=20, scale=6), server_default=sa.text("0"), nullable=False),
        sa.Column("held", sa.Numeric(precision=20, scale=6), server_default=sa.text("0"), nullable=False),
        sa.Column("limit_override", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("scope IN ('user', 'company')", name=op.f("ck_quota_counters_scope_known")),
        sa.CheckConstraint(
            "metric IN ('requests', 'tokens', 'cost_usd')", name=op.f("ck_quota_counters_metric_known")
        ),
        sa.CheckConstraint(
            "period IN ('hourly', 'daily', 'weekly', 'monthly', 'rolling')",
            name=op.f("ck_quota_counters_period_known"),
        ),
        sa.CheckConstraint(
            "(scope = 'company') = (subject_id = '')", name=op.f("ck_quota_counters_subject_given")
        ),
        sa.CheckConstraint("period_end > period_start", name=op.f("ck_quota_counters_period_valid")),
        sa.CheckConstraint(
            "used >= 0 AND held >= 0 AND limit_override >= 0", name=op.f("ck_quota_counters_amounts_valid")
        ),
        sa.PrimaryKeyConstraint("company_id", "id", name=op.f("pk_quota_counters")),
        sa.UniqueConstraint(
            "company_id",
            "scope",
            "subject_id",
            "metric",
            "period",
            "period_start",
            name=op.f("uq_quota_counters_company_id_scope_subject_id_metric_period_period_start"),
        ),
    )
    op.create_table(
        "quota_reservations",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=10), server_default=sa.text("'held'"), nullable=False),
        sa.Column("counter_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("requests", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("tokens", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("actual_requests", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("actual_tokens", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("actual_cost_usd", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('held', 'settled', 'released')", name=op.f("ck_quota_reservations_state_known")
        ),
        sa.CheckConstraint(
            "(state = 'held') = (finished_at IS NULL)", name=op.f("ck_quota_reservations_finished_given")
        ),
        sa.PrimaryKeyConstraint("company_id", "id", name=op.f("pk_quota_reservations")),
    )
    op.create_table(
        "quota_holds",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("reservation_id", sa.Uuid(), nullable=False),
        sa.Column("counter_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_quota_holds_amount_positive")),
        sa.PrimaryKeyConstraint("company_id", "reservation_id", "counter_id", name=op.f("pk_quota_holds")),
    )
    op.create_index(
        op.f("ix_quota_holds_company_id_counter_id_expires_at"),
        "quota_holds",
        ["company_id", "counter_id", "expires_at"],
    )
    op.create_table(
        "rate_limit_resets",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("subject_id", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("new_limit", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("expected_version", sa.Integer(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("previous_used", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.CheckConstraint("action IN ('reset', 'override')", name=op.f("ck_rate_limit_resets_action_known")),
        sa.CheckConstraint(
            "(action = 'override') = (new_limit IS NOT NULL)",
            name=op.f("ck_rate_limit_resets_new_limit_given"),
        ),
        sa.CheckConstraint(
            "requested_by <> '' AND reason <> ''", name=op.f("ck_rate_limit_resets_who_and_why_given")
        ),
        sa.PrimaryKeyConstraint("company_id", "id", name=op.f("pk_rate_limit_resets")),
    )
    op.create_index(
        op.f("ix_rate_limit_resets_company_id_created_at"), "rate_limit_resets", ["company_id", "created_at"]
    )


def downgrade() -> None:
    # Names written out, so `rollback`'s confirmation can list them (migration_drops.py).
    op.drop_index("ix_rate_limit_resets_company_id_created_at", table_name="rate_limit_resets")
    op.drop_table("rate_limit_resets")
    op.drop_index("ix_quota_holds_company_id_counter_id_expires_at", table_name="quota_holds")
    op.drop_table("quota_holds")
    op.drop_table("quota_reservations")
    op.drop_table("quota_counters")
    op.drop_table("quotas")
    op.execute("DELETE FROM company_quotas WHERE period = 'rolling'")
    op.drop_constraint("ck_company_quotas_window_valid", "company_quotas", type_="check")
    op.drop_constraint("ck_company_quotas_period_known", "company_quotas", type_="check")
    op.create_check_constraint(
        "ck_company_quotas_period_known",
        "company_quotas",
        "period IN ('hourly', 'daily', 'weekly', 'monthly')",
    )
    op.drop_column("company_quotas", "window_seconds")
