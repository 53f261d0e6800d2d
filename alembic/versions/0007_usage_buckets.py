"""usage buckets: Anthropic's 1-hour cache writes counted and priced apart

Anthropic bills a 1-hour cache write at 2x the base input price and a 5-minute one at 1.25x; the
ledger had one `cache_write_tokens` bucket, so a 1-hour write was priced at the 5-minute rate.

- `ai_calls.cache_write_1h_tokens` (disjoint from `cache_write_tokens`, which keeps the 5-minute
  writes) and `total_tokens` recomputed to include it: the generated column is dropped and added
  again (PostgreSQL 15 cannot change a generation expression), which rewrites the ledger once.
- The same measure in the rollups and their deltas (0 for what is already there: exact, since no
  call had 1-hour writes counted apart before).
- `vendor_prices.cache_write_1h_per_mtok`, NULL where a row prices no 1-hour writes (a call with
  some is then unpriced by it, never priced at the 5-minute rate). Anthropic's rows get 2x their
  input price, the vendor's published rule for every Claude model
  (platform.claude.com/docs/en/build-with-claude/prompt-caching#pricing).

The downgrade folds 1-hour writes back into `cache_write_tokens` (totals unchanged) and drops the
columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 06:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLLUPS = ("ai_call_usage_deltas", "ai_call_usage_hourly", "ai_call_model_hourly")
_TOTAL = "input_tokens + output_tokens + cache_read_tokens + cache_write_tokens + reasoning_tokens"


def _total(expression: str) -> str:
    return f"ALTER TABLE ai_calls ADD COLUMN total_tokens bigint GENERATED ALWAYS AS ({expression}) STORED NOT NULL"


def upgrade() -> None:
    op.execute("ALTER TABLE ai_calls ADD COLUMN cache_write_1h_tokens integer DEFAULT 0 NOT NULL")
    op.execute(
        "ALTER TABLE ai_calls ADD CONSTRAINT ck_ai_calls_cache_write_1h_tokens_non_negative "
        "CHECK (cache_write_1h_tokens >= 0)"
    )
    op.execute("ALTER TABLE ai_calls DROP COLUMN total_tokens")
    op.execute(_total(f"{_TOTAL} + cache_write_1h_tokens"))
    for table in _ROLLUPS:
        op.execute(f"ALTER TABLE {table} ADD COLUMN cache_write_1h_tokens bigint DEFAULT 0 NOT NULL")
    op.execute("ALTER TABLE vendor_prices ADD COLUMN cache_write_1h_per_mtok numeric(14, 6)")
    op.execute(
        "ALTER TABLE vendor_prices ADD CONSTRAINT ck_vendor_prices_cache_write_1h_price_non_negative "
        "CHECK (cache_write_1h_per_mtok >= 0)"
    )
    op.execute(
        "UPDATE vendor_prices SET cache_write_1h_per_mtok = 2 * input_per_mtok "
        "WHERE provider = 'anthropic' AND cache_write_1h_per_mtok IS NULL"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE vendor_prices DROP COLUMN cache_write_1h_per_mtok")
    for table in _ROLLUPS:
        op.execute(
            f"UPDATE {table} SET cache_write_tokens = cache_write_tokens + cache_write_1h_tokens "  # noqa: S608
            "WHERE cache_write_1h_tokens <> 0"
        )
        op.execute(f"ALTER TABLE {table} DROP COLUMN cache_write_1h_tokens")
    op.execute(
        "UPDATE ai_calls SET cache_write_tokens = cache_write_tokens + cache_write_1h_tokens "
        "WHERE cache_write_1h_tokens <> 0"
    )
    op.execute("ALTER TABLE ai_calls DROP COLUMN total_tokens")
    op.execute("ALTER TABLE ai_calls DROP COLUMN cache_write_1h_tokens")
    op.execute(_total(_TOTAL))
