"""initial schema

Seed 003 tables (claims ... audit log) and the seed 000 AI-call ledger tables.

Reviewed by hand: every constraint is named by the metadata naming convention, so the
downgrade can drop exactly what this creates.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 16:19:23.327522+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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
    op.create_table(
        "audit_log",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("entity_type", sa.String(length=50), nullable=False),
        sa.Column("entity_id", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("changes", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(
        "ix_audit_log_created_at", "audit_log", [sa.literal_column("created_at DESC")], unique=False
    )
    op.create_index(
        "ix_audit_log_entity_type_entity_id", "audit_log", ["entity_type", "entity_id"], unique=False
    )
    op.create_index(
        "ix_audit_log_metadata",
        "audit_log",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_table(
        "claims",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("claim_type", sa.String(length=100), nullable=True),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claims")),
        sa.UniqueConstraint("external_id", name=op.f("uq_claims_external_id")),
    )
    op.create_index(op.f("ix_claims_claim_type"), "claims", ["claim_type"], unique=False)
    op.create_index("ix_claims_created_at", "claims", [sa.literal_column("created_at DESC")], unique=False)
    op.create_index(
        "ix_claims_metadata",
        "claims",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_table(
        "consensus_decisions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("claim_id", sa.String(length=255), nullable=False),
        sa.Column("consensus_result", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("participating_frameworks", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("consensus_type", sa.String(length=50), nullable=False),
        sa.Column("consensus_confidence", sa.Double(), nullable=False),
        sa.Column("decision_time_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "consensus_confidence >= 0 AND consensus_confidence <= 1",
            name=op.f("ck_consensus_decisions_consensus_confidence_range"),
        ),
        sa.CheckConstraint(
            "decision_time_ms >= 0", name=op.f("ck_consensus_decisions_decision_time_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consensus_decisions")),
        sa.UniqueConstraint("claim_id", name=op.f("uq_consensus_decisions_claim_id")),
    )
    op.create_index(
        "ix_consensus_decisions_created_at",
        "consensus_decisions",
        [sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_table(
        "model_checkpoints",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("framework", sa.String(length=50), nullable=True),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=False),
        sa.Column("metrics", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("training_config", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_checkpoints")),
        sa.UniqueConstraint("model_name", "version", name=op.f("uq_model_checkpoints_model_name_version")),
    )
    op.create_index(
        "ix_model_checkpoints_is_active_framework",
        "model_checkpoints",
        ["is_active", "framework"],
        unique=False,
    )
    op.create_index(
        "uq_model_checkpoints_one_active",
        "model_checkpoints",
        ["model_name", "framework"],
        unique=True,
        postgresql_where=sa.text("is_active"),
        postgresql_nulls_not_distinct=True,
    )
    op.create_table(
        "reconciliation_reports",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("report_date", sa.Date(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total_calls", sa.Integer(), nullable=False),
        sa.Column("total_cost_usd", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("provider_stats", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("revenium_calls", sa.Integer(), nullable=True),
        sa.Column("revenium_cost_usd", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.Column("variance_pct", sa.Numeric(precision=5, scale=2), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=True),
        sa.Column(
            "generated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint("status IN ('PASS', 'FAIL')", name=op.f("ck_reconciliation_reports_status_known")),
        sa.CheckConstraint(
            "period_end > period_start", name=op.f("ck_reconciliation_reports_period_ordered")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_reports")),
        sa.UniqueConstraint("report_date", name=op.f("uq_reconciliation_reports_report_date")),
    )
    op.create_table(
        "service_health",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("service_name", sa.String(length=50), nullable=False),
        sa.Column("instance_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('starting', 'healthy', 'degraded', 'unhealthy', 'stopping')",
            name=op.f("ck_service_health_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_health")),
        sa.UniqueConstraint(
            "service_name", "instance_id", name=op.f("uq_service_health_service_name_instance_id")
        ),
    )
    op.create_index(
        "ix_service_health_service_name_last_heartbeat",
        "service_health",
        ["service_name", sa.literal_column("last_heartbeat DESC")],
        unique=False,
    )
    op.create_table(
        "verification_results",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("claim_id", sa.String(length=255), nullable=False),
        sa.Column("framework", sa.String(length=50), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column("evidence", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("processing_time_ms", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.String(length=50), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "confidence >= 0 AND confidence <= 1", name=op.f("ck_verification_results_confidence_range")
        ),
        sa.CheckConstraint(
            "processing_time_ms >= 0", name=op.f("ck_verification_results_processing_time_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_results")),
    )
    op.create_index(
        "ix_verification_results_claim_id_framework",
        "verification_results",
        ["claim_id", "framework"],
        unique=False,
    )
    op.create_index(
        "ix_verification_results_created_at",
        "verification_results",
        [sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index(
        "ix_verification_results_result",
        "verification_results",
        ["result"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"result": "jsonb_path_ops"},
    )
    op.create_table(
        "training_data",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("framework", sa.String(length=50), nullable=False),
        sa.Column("claim_id", sa.UUID(), nullable=True),
        sa.Column("claim_text", sa.Text(), nullable=False),
        sa.Column("evidence", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("validity", sa.Boolean(), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("used_in_training", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("training_batch_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "confidence >= 0 AND confidence <= 1", name=op.f("ck_training_data_confidence_range")
        ),
        sa.ForeignKeyConstraint(
            ["claim_id"], ["claims.id"], name=op.f("fk_training_data_claim_id_claims"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_data")),
    )
    op.create_index("ix_training_data_claim_id", "training_data", ["claim_id"], unique=False)
    op.create_index(
        "ix_training_data_framework_training_batch_id",
        "training_data",
        ["framework", "training_batch_id"],
        unique=False,
    )
    op.create_index(
        "ix_training_data_unused",
        "training_data",
        ["framework", "created_at"],
        unique=False,
        postgresql_where=sa.text("NOT used_in_training"),
    )
    op.create_index(
        "ix_training_data_used_in_training_framework",
        "training_data",
        ["used_in_training", "framework"],
        unique=False,
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints; children before parents.
    for table in (
        "training_data",
        "verification_results",
        "service_health",
        "reconciliation_reports",
        "model_checkpoints",
        "consensus_decisions",
        "claims",
        "audit_log",
        "ai_calls",
    ):
        op.drop_table(table)
