"""requests: seed 001's inference requests (in-flight table, monthly history, daily rollup, views)

- `request_inflight`: queued and processing requests with their lease (fencing token, deadline,
  worker); rows leave it when they finish. Storage parameters tuned for churn (autovacuum after a
  fixed number of dead rows, fillfactor 70).
- `request_history`: finished requests, partitioned by month of `created_at`; the partitions of
  this month and the next plus a default partition; `request_history_ensure_partition(date)`
  creates a month's partition (moving that month's rows out of the default partition first).
- `request_stats_daily`: per company, UTC day, user and model; kept current by the finishing
  statements.
- Views under seed 001's names: `requests` (both tables; also `model` and `error`, the seed's
  second spelling) and `request_stats` (from the rollup).

The downgrade drops the views, the tables (with their partitions) and the function.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 15:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_TZ = sa.DateTime(timezone=True)

# Frozen here on purpose (a revision must not change when the models do); the models declare the same.
_INFLIGHT_STORAGE = {
    "fillfactor": 70,
    "autovacuum_vacuum_scale_factor": 0,
    "autovacuum_vacuum_threshold": 500,
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_vacuum_insert_threshold": 1000,
    "autovacuum_analyze_scale_factor": 0,
    "autovacuum_analyze_threshold": 500,
    "autovacuum_vacuum_cost_delay": 0,
}

ENSURE_PARTITION = r"""
CREATE FUNCTION request_history_ensure_partition(month date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    lo timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    part text := 'request_history_p' || to_char(month, 'YYYY_MM');
    stranded boolean := false;
BEGIN
    IF to_regclass(quote_ident(part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Rows of this month that went to the default partition move into the new one; otherwise
    -- CREATE ... PARTITION OF would fail on them.
    IF to_regclass('request_history_default') IS NOT NULL THEN
        SELECT EXISTS (SELECT 1 FROM request_history_default WHERE created_at >= lo AND created_at < hi)
          INTO stranded;
    END IF;
    IF stranded THEN
        CREATE TEMP TABLE request_history_moving ON COMMIT DROP AS
            SELECT * FROM request_history_default WHERE created_at >= lo AND created_at < hi;
        DELETE FROM request_history_default WHERE created_at >= lo AND created_at < hi;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF request_history FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    IF stranded THEN
        INSERT INTO request_history SELECT * FROM request_history_moving;
        DROP TABLE request_history_moving;
    END IF;
    RETURN true;
END
$fn$
"""

REQUESTS_VIEW = """
CREATE VIEW requests AS
SELECT company_id, request_id, user_id, prompt, model_id, status, created_at, updated_at,
       queued_at, processing_at, NULL::timestamptz AS completed_at, NULL::timestamptz AS failed_at,
       NULL::timestamptz AS cancelled_at, NULL::timestamptz AS expired_at, cancel_requested_at,
       NULL::integer AS processing_time_ms, estimated_tokens, NULL::integer AS prompt_tokens,
       NULL::integer AS completion_tokens, NULL::integer AS total_tokens, NULL::text AS error_message,
       NULL::bytea AS result_sha256, attempts, worker_id, reservation_id,
       model_id AS model, NULL::text AS error
  FROM request_inflight
UNION ALL
SELECT company_id, request_id, user_id, prompt, model_id, status, created_at, updated_at,
       queued_at, processing_at, completed_at, failed_at, cancelled_at, expired_at, cancel_requested_at,
       processing_time_ms, estimated_tokens, prompt_tokens, completion_tokens, total_tokens, error_message,
       result_sha256, attempts, worker_id, reservation_id,
       model_id AS model, error_message AS error
  FROM request_history
"""

REQUEST_STATS_VIEW = """
CREATE VIEW request_stats AS
SELECT company_id, day, user_id, model_id, request_count,
       round(processing_time_ms_sum::numeric / NULLIF(processing_time_count, 0), 3) AS avg_processing_time,
       failure_count, completed_count, cancelled_count, expired_count, total_tokens
  FROM request_stats_daily
"""


def upgrade() -> None:
    op.create_table(
        "request_inflight",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("model_id", sa.String(length=100), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), server_default=sa.text("'queued'"), nullable=False),
        sa.Column("created_at", _TZ, server_default=_NOW, nullable=False),
        sa.Column("updated_at", _TZ, server_default=_NOW, nullable=False),
        sa.Column("queued_at", _TZ, server_default=_NOW, nullable=False),
        sa.Column("processing_at", _TZ, nullable=True),
        sa.Column("cancel_requested_at", _TZ, nullable=True),
        sa.Column("estimated_tokens", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default=sa.text("3"), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("reservation_id", sa.Uuid(), nullable=True),
        sa.Column("lease_id", sa.Uuid(), nullable=True),
        sa.Column("lease_until", _TZ, nullable=True),
        sa.Column("heartbeat_at", _TZ, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'processing')", name=op.f("ck_request_inflight_status_known")
        ),
        sa.CheckConstraint(
            "(status = 'processing') = (lease_id IS NOT NULL AND lease_until IS NOT NULL "
            "AND worker_id IS NOT NULL AND processing_at IS NOT NULL)",
            name=op.f("ck_request_inflight_lease_iff_processing"),
        ),
        sa.CheckConstraint(
            "attempts >= 0 AND max_attempts >= 1", name=op.f("ck_request_inflight_attempts_valid")
        ),
        sa.CheckConstraint(
            "estimated_tokens >= 0", name=op.f("ck_request_inflight_estimated_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "company_id <> '' AND user_id <> '' AND model_id <> ''",
            name=op.f("ck_request_inflight_subject_given"),
        ),
        sa.PrimaryKeyConstraint("company_id", "request_id", name=op.f("pk_request_inflight")),
        postgresql_with=_INFLIGHT_STORAGE,
    )
    op.create_index(
        "ix_request_inflight_queued_at",
        "request_inflight",
        ["queued_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_request_inflight_lease_until",
        "request_inflight",
        ["lease_until"],
        postgresql_where=sa.text("status = 'processing'"),
    )
    op.create_index(
        "ix_request_inflight_company_id_user_id_created_at",
        "request_inflight",
        ["company_id", "user_id", "created_at"],
    )

    op.create_table(
        "request_history",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("model_id", sa.String(length=100), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.Column("queued_at", _TZ, nullable=False),
        sa.Column("processing_at", _TZ, nullable=True),
        sa.Column("completed_at", _TZ, nullable=True),
        sa.Column("failed_at", _TZ, nullable=True),
        sa.Column("cancelled_at", _TZ, nullable=True),
        sa.Column("expired_at", _TZ, nullable=True),
        sa.Column("cancel_requested_at", _TZ, nullable=True),
        sa.Column("processing_time_ms", sa.Integer(), nullable=True),
        sa.Column("estimated_tokens", sa.Integer(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("result_sha256", sa.LargeBinary(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("reservation_id", sa.Uuid(), nullable=True),
        sa.CheckConstraint(
            "status IN ('completed', 'failed', 'cancelled', 'expired')",
            name=op.f("ck_request_history_status_known"),
        ),
        sa.CheckConstraint(
            "(status = 'completed') = (completed_at IS NOT NULL) AND (status = 'failed') = (failed_at IS NOT NULL)"
            " AND (status = 'cancelled') = (cancelled_at IS NOT NULL)"
            " AND (status = 'expired') = (expired_at IS NOT NULL)",
            name=op.f("ck_request_history_one_timestamp_per_state"),
        ),
        sa.CheckConstraint(
            "result_sha256 IS NULL OR octet_length(result_sha256) = 32",
            name=op.f("ck_request_history_sha256_length"),
        ),
        sa.CheckConstraint(
            "prompt_tokens >= 0 AND completion_tokens >= 0 AND total_tokens >= 0 AND estimated_tokens >= 0",
            name=op.f("ck_request_history_tokens_non_negative"),
        ),
        sa.CheckConstraint(
            "processing_time_ms >= 0", name=op.f("ck_request_history_processing_time_non_negative")
        ),
        sa.PrimaryKeyConstraint("company_id", "request_id", "created_at", name=op.f("pk_request_history")),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_request_history_company_id_user_id_created_at_request_id",
        "request_history",
        ["company_id", "user_id", "created_at", "request_id"],
    )
    op.create_index(
        "ix_request_history_company_id_status_created_at",
        "request_history",
        ["company_id", "status", "created_at"],
    )
    op.execute(ENSURE_PARTITION)
    op.execute(
        "SELECT request_history_ensure_partition(m::date) FROM generate_series("
        " date_trunc('month', now() AT TIME ZONE 'UTC'),"
        " date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month', interval '1 month') AS m"
    )
    op.execute("CREATE TABLE request_history_default PARTITION OF request_history DEFAULT")

    op.create_table(
        "request_stats_daily",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("model_id", sa.String(length=100), nullable=False),
        sa.Column("request_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("completed_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("failure_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cancelled_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("expired_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("processing_time_ms_sum", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("processing_time_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint(
            "company_id", "day", "user_id", "model_id", name=op.f("pk_request_stats_daily")
        ),
    )
    op.execute(REQUESTS_VIEW)
    op.execute(REQUEST_STATS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS request_stats")
    op.execute("DROP VIEW IF EXISTS requests")
    op.drop_table("request_stats_daily")
    op.drop_table("request_history")  # its partitions go with it
    op.execute("DROP FUNCTION IF EXISTS request_history_ensure_partition(date)")
    op.drop_table("request_inflight")
