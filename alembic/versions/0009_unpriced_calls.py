"""unpriced calls: a call with no price is stored (cost_usd NULL, cost_source 'unpriced'), never refused

The ledger records every call; a call whose provider/model has no price in force (and no cost given
by the caller) used to be refused. Now:

- `ai_calls.cost_usd` is nullable; `cost_source` may be 'unpriced', and a check ties the two
  (unpriced exactly when cost_usd is NULL, and then no computed cost and no price row either).
- A partial index on the unpriced calls (created_at, id): health counts them and `reprice` walks
  them without reading the priced ledger.
- The rollups and their deltas count `unpriced_calls` / `unpriced_tokens` (0 for what is there:
  exact, no call was unpriced before), so stats stay exact from the rollups.
- `reconciliation_reports` states how many calls and tokens of its period had no price.

The downgrade refuses while unpriced calls exist (the old schema cannot hold them; price them with
`persistence prices reprice` or delete them first), then drops what the upgrade added.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 12:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLLUPS = ("ai_call_usage_deltas", "ai_call_usage_hourly", "ai_call_model_hourly")
_UNPRICED = (
    "(cost_source = 'unpriced') = (cost_usd IS NULL) "
    "AND (cost_source <> 'unpriced' OR (computed_cost_usd IS NULL AND price_id IS NULL))"
)


def upgrade() -> None:
    op.execute("ALTER TABLE ai_calls ALTER COLUMN cost_usd DROP NOT NULL")
    op.execute("ALTER TABLE ai_calls DROP CONSTRAINT ck_ai_calls_cost_source_known")
    op.execute(
        "ALTER TABLE ai_calls ADD CONSTRAINT ck_ai_calls_cost_source_known "
        "CHECK (cost_source IN ('provided', 'computed', 'unpriced'))"
    )
    op.execute(f"ALTER TABLE ai_calls ADD CONSTRAINT ck_ai_calls_unpriced_has_no_cost CHECK ({_UNPRICED})")
    op.execute(
        "CREATE INDEX ix_ai_calls_created_at_id ON ai_calls (created_at, id) WHERE cost_source = 'unpriced'"
    )
    for table in _ROLLUPS:
        op.execute(f"ALTER TABLE {table} ADD COLUMN unpriced_calls bigint DEFAULT 0 NOT NULL")
        op.execute(f"ALTER TABLE {table} ADD COLUMN unpriced_tokens bigint DEFAULT 0 NOT NULL")
    op.execute("ALTER TABLE reconciliation_reports ADD COLUMN unpriced_calls integer DEFAULT 0 NOT NULL")
    op.execute("ALTER TABLE reconciliation_reports ADD COLUMN unpriced_tokens bigint DEFAULT 0 NOT NULL")


def downgrade() -> None:
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM ai_calls WHERE cost_source = 'unpriced') THEN "
        "RAISE EXCEPTION 'ai_calls holds unpriced calls, which revision 0008 cannot store' "
        "USING HINT = 'price them (persistence prices reprice --since ...) or delete them first'; "
        "END IF; END $$"
    )
    op.execute("ALTER TABLE reconciliation_reports DROP COLUMN unpriced_tokens")
    op.execute("ALTER TABLE reconciliation_reports DROP COLUMN unpriced_calls")
    for table in _ROLLUPS:
        op.execute(f"ALTER TABLE {table} DROP COLUMN unpriced_tokens")
        op.execute(f"ALTER TABLE {table} DROP COLUMN unpriced_calls")
    op.execute("DROP INDEX ix_ai_calls_created_at_id")
    op.execute("ALTER TABLE ai_calls DROP CONSTRAINT ck_ai_calls_unpriced_has_no_cost")
    op.execute("ALTER TABLE ai_calls DROP CONSTRAINT ck_ai_calls_cost_source_known")
    op.execute(
        "ALTER TABLE ai_calls ADD CONSTRAINT ck_ai_calls_cost_source_known "
        "CHECK (cost_source IN ('provided', 'computed'))"
    )
    op.execute("ALTER TABLE ai_calls ALTER COLUMN cost_usd SET NOT NULL")
