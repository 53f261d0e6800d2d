"""request ties: the AI-call ledger link and the audit of status changes (issue 17, "Ties to the rest")

- `request_history.ai_call_id BIGINT NULL`: the ledger row (`ai_calls.id`) of the model call whose
  outcome the finishing statement recorded; partial index (company_id, ai_call_id) for the way back
  from a call to its request(s). The `requests` view is recreated to show it (NULL while in flight).
- `request_transitions`: one append-only row per status change (and per cancellation request),
  written by the transition's own statement; partitioned by month of the request's `created_at`,
  like `request_history`, so a month is archived with its history. `at` is the server's clock.
  `request_transitions_ensure_partition(date)` creates a month (moving its rows out of the default
  partition first); partitions are made here for every month `request_history` has, and a default.

The downgrade drops `request_transitions` (its rows go with it), the function, the index and the
column, and restores revision 0018's `requests` view.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 18:15:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)

# Frozen here on purpose (a revision must not change when the models do); the models declare the same.
_STATUSES = "'queued', 'processing', 'completed', 'failed', 'cancelled', 'expired'"
_ACTIONS = (
    "'create', 'claim', 'start', 'release', 'complete', 'fail', 'acknowledge_cancel', 'cancel', "
    "'request_cancel', 'sweep', 'expire'"
)

ENSURE_PARTITION = r"""
CREATE FUNCTION request_transitions_ensure_partition(month date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    lo timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    part text := 'request_transitions_p' || to_char(month, 'YYYY_MM');
    stranded boolean := false;
BEGIN
    IF to_regclass(quote_ident(part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF to_regclass('request_transitions_default') IS NOT NULL THEN
        SELECT EXISTS (SELECT 1 FROM request_transitions_default WHERE created_at >= lo AND created_at < hi)
          INTO stranded;
    END IF;
    IF stranded THEN
        CREATE TEMP TABLE request_transitions_moving ON COMMIT DROP AS
            SELECT * FROM request_transitions_default WHERE created_at >= lo AND created_at < hi;
        DELETE FROM request_transitions_default WHERE created_at >= lo AND created_at < hi;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF request_transitions FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    IF stranded THEN
        INSERT INTO request_transitions SELECT * FROM request_transitions_moving;
        DROP TABLE request_transitions_moving;
    END IF;
    RETURN true;
END
$fn$
"""

# Every month request_history has a partition for, and this month and the next.
_MONTHS = r"""
SELECT request_transitions_ensure_partition(m) FROM (
    SELECT to_date(substring(c.relname FROM 'request_history_p(\d{4}_\d{2})$'), 'YYYY_MM') AS m
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'request_history'::regclass AND c.relname ~ '^request_history_p\d{4}_\d{2}$'
    UNION
    SELECT g::date FROM generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'),
                                        date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month',
                                        interval '1 month') AS g
) months ORDER BY m
"""

_VIEW_HEAD = """
CREATE VIEW requests AS
SELECT company_id, request_id, user_id, prompt, model_id, status, created_at, updated_at,
       queued_at, processing_at, NULL::timestamptz AS completed_at, NULL::timestamptz AS failed_at,
       NULL::timestamptz AS cancelled_at, NULL::timestamptz AS expired_at, cancel_requested_at,
       NULL::integer AS processing_time_ms, estimated_tokens, NULL::integer AS prompt_tokens,
       NULL::integer AS completion_tokens, NULL::integer AS total_tokens, NULL::text AS error_message,
       NULL::bytea AS result_sha256, attempts, worker_id, reservation_id,{inflight_call}
       model_id AS model, NULL::text AS error
  FROM request_inflight
UNION ALL
SELECT company_id, request_id, user_id, prompt, model_id, status, created_at, updated_at,
       queued_at, processing_at, completed_at, failed_at, cancelled_at, expired_at, cancel_requested_at,
       processing_time_ms, estimated_tokens, prompt_tokens, completion_tokens, total_tokens, error_message,
       result_sha256, attempts, worker_id, reservation_id,{history_call}
       model_id AS model, error_message AS error
  FROM request_history
"""
REQUESTS_VIEW = _VIEW_HEAD.format(inflight_call=" NULL::bigint AS ai_call_id,", history_call=" ai_call_id,")
REQUESTS_VIEW_0018 = _VIEW_HEAD.format(inflight_call="", history_call="")


def upgrade() -> None:
    op.add_column("request_history", sa.Column("ai_call_id", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_request_history_company_id_ai_call_id",
        "request_history",
        ["company_id", "ai_call_id"],
        postgresql_where=sa.text("ai_call_id IS NOT NULL"),
    )
    op.execute("DROP VIEW requests")
    op.execute(REQUESTS_VIEW)

    op.create_table(
        "request_transitions",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("at", _TZ, server_default=sa.text("clock_timestamp()"), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("from_status", sa.String(length=20), nullable=True),
        sa.Column("to_status", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("lease_id", sa.Uuid(), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=True),
        sa.CheckConstraint(f"action IN ({_ACTIONS})", name=op.f("ck_request_transitions_action_known")),
        sa.CheckConstraint(
            f"from_status IN ({_STATUSES})", name=op.f("ck_request_transitions_from_status_known")
        ),
        sa.CheckConstraint(
            f"to_status IN ({_STATUSES})", name=op.f("ck_request_transitions_to_status_known")
        ),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_request_transitions_company_id_request_id_at",
        "request_transitions",
        ["company_id", "request_id", "at"],
    )
    op.execute(ENSURE_PARTITION)
    op.execute(_MONTHS)
    op.execute("CREATE TABLE request_transitions_default PARTITION OF request_transitions DEFAULT")


def downgrade() -> None:
    op.drop_table("request_transitions")  # its partitions go with it
    op.execute("DROP FUNCTION IF EXISTS request_transitions_ensure_partition(date)")
    op.execute("DROP VIEW IF EXISTS requests")
    op.execute(REQUESTS_VIEW_0018)
    op.drop_index("ix_request_history_company_id_ai_call_id", table_name="request_history")
    op.drop_column("request_history", "ai_call_id")
