"""request_stats_deltas: finishing statements append to the request rollup instead of updating it

- `request_stats_deltas`: one row per finishing statement and (company, day, user, model), never
  updated; `Requests.fold_stats` (called by the sweeper) moves them into `request_stats_daily`.
- `request_stats` is recreated over the rollup plus the unfolded deltas, so it stays current.

The downgrade folds what is left into `request_stats_daily` first (no count is lost), then restores
revision 0018's view and drops the table.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 18:40:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0024"
down_revision: str | Sequence[str] | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose (a revision must not change when the models do).
_MEASURES = (
    "request_count, completed_count, failure_count, cancelled_count, expired_count, "
    "processing_time_ms_sum, processing_time_count, total_tokens"
)
_STORAGE = {
    "autovacuum_vacuum_scale_factor": 0,
    "autovacuum_vacuum_threshold": 1000,
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_vacuum_insert_threshold": 1000,
    "autovacuum_vacuum_cost_delay": 0,
}

STATS_VIEW = f"""
CREATE VIEW request_stats AS
SELECT company_id, day, user_id, model_id, sum(request_count)::bigint AS request_count,
       round(sum(processing_time_ms_sum) / NULLIF(sum(processing_time_count), 0), 3) AS avg_processing_time,
       sum(failure_count)::bigint AS failure_count, sum(completed_count)::bigint AS completed_count,
       sum(cancelled_count)::bigint AS cancelled_count, sum(expired_count)::bigint AS expired_count,
       sum(total_tokens)::bigint AS total_tokens
  FROM (SELECT company_id, day, user_id, model_id, {_MEASURES} FROM request_stats_daily
        UNION ALL
        SELECT company_id, day, user_id, model_id, {_MEASURES} FROM request_stats_deltas) s
 GROUP BY company_id, day, user_id, model_id
"""  # noqa: S608 (constant SQL only)

# Revision 0018's view.
OLD_STATS_VIEW = """
CREATE VIEW request_stats AS
SELECT company_id, day, user_id, model_id, request_count,
       round(processing_time_ms_sum::numeric / NULLIF(processing_time_count, 0), 3) AS avg_processing_time,
       failure_count, completed_count, cancelled_count, expired_count, total_tokens
  FROM request_stats_daily
"""

FOLD_ALL = f"""
WITH d AS (DELETE FROM request_stats_deltas RETURNING company_id, day, user_id, model_id, {_MEASURES})
INSERT INTO request_stats_daily AS s (company_id, day, user_id, model_id, {_MEASURES})
SELECT company_id, day, user_id, model_id, sum(request_count), sum(completed_count), sum(failure_count),
       sum(cancelled_count), sum(expired_count), sum(processing_time_ms_sum), sum(processing_time_count),
       sum(total_tokens)
  FROM d GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (company_id, day, user_id, model_id) DO UPDATE SET
       request_count = s.request_count + EXCLUDED.request_count,
       completed_count = s.completed_count + EXCLUDED.completed_count,
       failure_count = s.failure_count + EXCLUDED.failure_count,
       cancelled_count = s.cancelled_count + EXCLUDED.cancelled_count,
       expired_count = s.expired_count + EXCLUDED.expired_count,
       processing_time_ms_sum = s.processing_time_ms_sum + EXCLUDED.processing_time_ms_sum,
       processing_time_count = s.processing_time_count + EXCLUDED.processing_time_count,
       total_tokens = s.total_tokens + EXCLUDED.total_tokens
"""  # noqa: S608 (constant SQL only)


def upgrade() -> None:
    op.create_table(
        "request_stats_deltas",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("model_id", sa.String(length=100), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)
            for name in _MEASURES.split(", ")
        ),
        sa.PrimaryKeyConstraint("company_id", "id", name=op.f("pk_request_stats_deltas")),
        postgresql_with=_STORAGE,
    )
    op.execute("DROP VIEW request_stats")
    op.execute(STATS_VIEW)


def downgrade() -> None:
    op.execute(FOLD_ALL)
    op.execute("DROP VIEW request_stats")
    op.execute(OLD_STATS_VIEW)
    op.drop_table("request_stats_deltas")
