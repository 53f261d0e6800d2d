"""cost alerts: rules (`cost_alerts`), firings, and the outbox with its delivery attempts (`cost_alerts_log`)

Seed 002's alert tables. A firing is a row of `cost_alert_firings`, unique per (alert, window start,
threshold), so an alert fires once per window and threshold whatever the number of writers and
processes; its notification is written into `cost_alerts_log` by the same statement (an outbox),
and the dispatcher appends one row per delivery attempt. The downgrade drops the three tables.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 06:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cost_alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scope", sa.String(length=20), nullable=False),
        sa.Column("scope_value", sa.String(length=100), nullable=True),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("time_zone", sa.String(length=64), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column("threshold_kind", sa.String(length=10), server_default=sa.text("'amount'"), nullable=False),
        sa.Column("thresholds", postgresql.ARRAY(sa.Numeric(precision=20, scale=6)), nullable=False),
        sa.Column("budget_usd", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column(
            "channels",
            postgresql.ARRAY(sa.String(length=100)),
            server_default=sa.text("'{default}'"),
            nullable=False,
        ),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "scope IN ('all', 'organization', 'customer', 'product', 'provider', 'model')",
            name=op.f("ck_cost_alerts_scope_known"),
        ),
        sa.CheckConstraint(
            "(scope = 'all') = (scope_value IS NULL)", name=op.f("ck_cost_alerts_scope_value_given")
        ),
        sa.CheckConstraint(
            "period IN ('daily', 'weekly', 'monthly')", name=op.f("ck_cost_alerts_period_known")
        ),
        sa.CheckConstraint(
            "threshold_kind IN ('amount', 'percent')", name=op.f("ck_cost_alerts_threshold_kind_known")
        ),
        sa.CheckConstraint(
            "cardinality(thresholds) >= 1 AND 0 < ALL (thresholds) AND array_position(thresholds, NULL) IS NULL",
            name=op.f("ck_cost_alerts_thresholds_positive"),
        ),
        sa.CheckConstraint("budget_usd > 0", name=op.f("ck_cost_alerts_budget_positive")),
        sa.CheckConstraint(
            "threshold_kind <> 'percent' OR budget_usd IS NOT NULL",
            name=op.f("ck_cost_alerts_percent_has_budget"),
        ),
        sa.CheckConstraint("cardinality(channels) >= 1", name=op.f("ck_cost_alerts_channels_given")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_alerts")),
        sa.UniqueConstraint("name", name=op.f("uq_cost_alerts_name")),
    )
    op.create_table(
        "cost_alert_firings",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("alert_id", sa.BigInteger(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("threshold", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("threshold_usd", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("spend_usd", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("window_end > window_start", name=op.f("ck_cost_alert_firings_window_ordered")),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["cost_alerts.id"], name=op.f("fk_cost_alert_firings_alert_id_cost_alerts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_alert_firings")),
        sa.UniqueConstraint(
            "alert_id", "window_start", "threshold",
            name=op.f("uq_cost_alert_firings_alert_id_window_start_threshold"),
        ),
    )  # fmt: skip
    op.create_table(
        "cost_alerts_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("firing_id", sa.BigInteger(), nullable=False),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("idempotency_key", sa.UUID(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('outbox', 'attempt')", name=op.f("ck_cost_alerts_log_kind_known")),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name=op.f("ck_cost_alerts_log_status_known")
        ),
        sa.CheckConstraint(
            "(kind = 'outbox') = (parent_id IS NULL)", name=op.f("ck_cost_alerts_log_attempt_has_parent")
        ),
        sa.CheckConstraint(
            "kind = 'attempt' OR (idempotency_key IS NOT NULL AND payload IS NOT NULL "
            "AND next_attempt_at IS NOT NULL)",
            name=op.f("ck_cost_alerts_log_outbox_complete"),
        ),
        sa.CheckConstraint(
            "kind = 'outbox' OR (status <> 'pending' AND attempt >= 1)",
            name=op.f("ck_cost_alerts_log_attempt_finished"),
        ),
        sa.ForeignKeyConstraint(
            ["firing_id"], ["cost_alert_firings.id"], name=op.f("fk_cost_alerts_log_firing_id_cost_alert_firings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["cost_alerts_log.id"], name=op.f("fk_cost_alerts_log_parent_id_cost_alerts_log"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_alerts_log")),
    )  # fmt: skip
    op.create_index(
        "ix_cost_alerts_log_firing_id_channel", "cost_alerts_log", ["firing_id", "channel"], unique=True,
        postgresql_where=sa.text("kind = 'outbox'"),
    )  # fmt: skip
    op.create_index(
        "ix_cost_alerts_log_parent_id_attempt", "cost_alerts_log", ["parent_id", "attempt"], unique=True,
        postgresql_where=sa.text("kind = 'attempt'"),
    )  # fmt: skip
    op.create_index(
        "ix_cost_alerts_log_next_attempt_at", "cost_alerts_log", ["next_attempt_at"],
        postgresql_where=sa.text("kind = 'outbox' AND status = 'pending'"),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("cost_alerts_log")
    op.drop_table("cost_alert_firings")
    op.drop_table("cost_alerts")
