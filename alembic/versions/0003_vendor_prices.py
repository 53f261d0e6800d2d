"""default vendor prices

Data only: list prices (USD per million tokens) for OpenAI, Anthropic, Google and Cohere models,
global (tenant_id ''), in force from 2024-01-01 with no end. Figures were copied from each vendor's
public pricing page as published in mid-2025 (openai.com/api/pricing, anthropic.com/pricing,
ai.google.dev/gemini-api/docs/pricing, cohere.com/pricing); re-check them before billing on them.

Per bucket: `cache_read` is the vendor's cached-input price; `cache_write` is Anthropic's 5-minute
cache-write price and the plain input price where the vendor does not bill cache writes apart;
`reasoning` is the output price (every vendor here bills thinking tokens as output). Tiered
prices (Gemini above 128k/200k prompt tokens) and batch discounts are not modelled: add tenant or
dated rows for them. Rows are marked `source = 'migration 0003'` so the downgrade removes exactly
them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SOURCE = "migration 0003"
FROM = datetime(2024, 1, 1, tzinfo=UTC)

# provider, model, input, output, cache_read, cache_write, reasoning (USD per 1M tokens)
PRICES: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ("openai", "gpt-4o", "2.50", "10.00", "1.25", "2.50", "10.00"),
    ("openai", "gpt-4o-mini", "0.15", "0.60", "0.075", "0.15", "0.60"),
    ("openai", "gpt-4.1", "2.00", "8.00", "0.50", "2.00", "8.00"),
    ("openai", "gpt-4.1-mini", "0.40", "1.60", "0.10", "0.40", "1.60"),
    ("openai", "gpt-4.1-nano", "0.10", "0.40", "0.025", "0.10", "0.40"),
    ("openai", "o3", "2.00", "8.00", "0.50", "2.00", "8.00"),
    ("openai", "o4-mini", "1.10", "4.40", "0.275", "1.10", "4.40"),
    ("anthropic", "claude-opus-4-20250514", "15.00", "75.00", "1.50", "18.75", "75.00"),
    ("anthropic", "claude-sonnet-4-20250514", "3.00", "15.00", "0.30", "3.75", "15.00"),
    ("anthropic", "claude-3-7-sonnet-20250219", "3.00", "15.00", "0.30", "3.75", "15.00"),
    ("anthropic", "claude-3-5-sonnet-20241022", "3.00", "15.00", "0.30", "3.75", "15.00"),
    ("anthropic", "claude-3-5-haiku-20241022", "0.80", "4.00", "0.08", "1.00", "4.00"),
    ("google", "gemini-2.5-pro", "1.25", "10.00", "0.31", "1.25", "10.00"),
    ("google", "gemini-2.5-flash", "0.30", "2.50", "0.075", "0.30", "2.50"),
    ("google", "gemini-2.0-flash", "0.10", "0.40", "0.025", "0.10", "0.40"),
    ("google", "gemini-1.5-pro", "1.25", "5.00", "0.3125", "1.25", "5.00"),
    ("google", "gemini-1.5-flash", "0.075", "0.30", "0.01875", "0.075", "0.30"),
    ("cohere", "command-a-03-2025", "2.50", "10.00", "2.50", "2.50", "10.00"),
    ("cohere", "command-r-plus", "2.50", "10.00", "2.50", "2.50", "10.00"),
    ("cohere", "command-r", "0.15", "0.60", "0.15", "0.15", "0.60"),
    ("cohere", "command-r7b-12-2024", "0.0375", "0.15", "0.0375", "0.0375", "0.15"),
)

_prices = sa.table(
    "vendor_prices",
    sa.column("provider", sa.String()),
    sa.column("model", sa.String()),
    sa.column("tenant_id", sa.String()),
    sa.column("input_per_mtok", sa.Numeric()),
    sa.column("output_per_mtok", sa.Numeric()),
    sa.column("cache_read_per_mtok", sa.Numeric()),
    sa.column("cache_write_per_mtok", sa.Numeric()),
    sa.column("reasoning_per_mtok", sa.Numeric()),
    sa.column("effective_from", sa.DateTime(timezone=True)),
    sa.column("source", sa.String()),
)


def upgrade() -> None:
    # Idempotent: a row is inserted only where no price of that (provider, model, global tenant) is in
    # force from FROM on already (a rerun, or prices loaded by hand), so a rerun inserts nothing and
    # never trips the overlap trigger; ON CONFLICT covers a concurrent writer of the same key.
    buckets = [
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "reasoning_per_mtok",
    ]
    rows = sa.values(
        sa.column("provider", sa.String()),
        sa.column("model", sa.String()),
        *(sa.column(b, sa.Numeric()) for b in buckets),
        name="v",
        literal_binds=True,
    ).data([(p, m, *(Decimal(x) for x in prices)) for p, m, *prices in PRICES])
    tz = sa.DateTime(timezone=True)
    effective_from = sa.cast(sa.literal(FROM, tz), tz)
    tenant = sa.cast(sa.literal(""), sa.String())
    existing = sa.table(
        "vendor_prices",
        sa.column("provider", sa.String()),
        sa.column("model", sa.String()),
        sa.column("tenant_id", sa.String()),
        sa.column("effective_to", tz),
    ).alias("p")
    in_force = sa.exists().where(
        existing.c.provider == rows.c.provider,
        existing.c.model == rows.c.model,
        existing.c.tenant_id == tenant,
        sa.or_(existing.c.effective_to.is_(None), existing.c.effective_to > effective_from),
    )
    chosen = sa.select(
        rows.c.provider,
        rows.c.model,
        tenant,
        *(rows.c[b] for b in buckets),
        effective_from,
        sa.cast(sa.literal(SOURCE), sa.String()),
    ).where(~in_force)
    op.execute(
        postgresql.insert(_prices)
        .from_select(["provider", "model", "tenant_id", *buckets, "effective_from", "source"], chosen)
        .on_conflict_do_nothing(index_elements=["provider", "model", "tenant_id", "effective_from"])
    )


def downgrade() -> None:
    op.execute(_prices.delete().where(_prices.c.source == SOURCE))
