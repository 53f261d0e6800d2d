"""ai_call_pending_batches: log_batch records id ranges; folds aggregate them into the rollups

`log_batch` used to aggregate every batch into `ai_call_usage_deltas` inside its own transaction,
which cost about half as much as writing the rows. It now records the id range it wrote (one short
row per batch); a fold aggregates those ledger rows into the rollups off the write path, and
`get_stats` adds the rows of unfolded batches, so it stays exact.

The downgrade folds nothing: it turns pending batches into deltas first, so no usage is lost.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 02:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The 0005 form of the statement in persistence.ai_calls.rollups (PENDING_TO_DELTAS): a migration
# keeps its own copy so later changes to the package cannot change what this downgrade does.
_PENDING_TO_DELTAS = """
WITH b AS (DELETE FROM ai_call_pending_batches RETURNING first_id, last_id)
INSERT INTO ai_call_usage_deltas (hour, provider, model, organization_id, customer_id, product_id, environment,
                                  calls, error_calls, input_tokens, output_tokens, cache_read_tokens,
                                  cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, computed_cost_usd,
                                  latency_ms_sum, latency_count)
SELECT date_trunc('hour', c.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', c.provider, c.model,
       c.organization_id, c.customer_id, c.product_id, c.environment, count(*),
       count(*) FILTER (WHERE c.status <> 'success'), sum(c.input_tokens), sum(c.output_tokens),
       sum(c.cache_read_tokens), sum(c.cache_write_tokens), sum(c.reasoning_tokens), sum(c.total_tokens),
       sum(c.cost_usd), sum(c.computed_cost_usd), coalesce(sum(c.latency_ms), 0), count(c.latency_ms)
  FROM b CROSS JOIN LATERAL (SELECT * FROM ai_calls WHERE id BETWEEN b.first_id AND b.last_id) c
 GROUP BY 1, 2, 3, 4, 5, 6, 7
"""


def upgrade() -> None:
    op.create_table(
        "ai_call_pending_batches",
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("last_id >= first_id", name=op.f("ck_ai_call_pending_batches_id_range")),
        sa.PrimaryKeyConstraint("first_id", name=op.f("pk_ai_call_pending_batches")),
    )


def downgrade() -> None:
    op.execute(_PENDING_TO_DELTAS)
    op.drop_table("ai_call_pending_batches")
