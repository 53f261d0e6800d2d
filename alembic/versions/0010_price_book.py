"""price book: genai-prices' default prices, and a version counter for `vendor_prices`

- `vendor_prices_version`: one row, bumped by a statement-level trigger on every change to
  `vendor_prices`; the logger reads it in the statement it runs anyway and reloads its prices when it
  moved, so a new price is used by the next call (no restart, no TTL wait).
- Default prices from the installed `genai-prices` (source 'genai-prices <version>'), imported by
  `persistence.ai_calls.price_sync` (the code `persistence prices sync` runs) on this connection,
  from the package's bundled data (no network). Revision 0003's hand-typed rows: on a database that
  has logged no AI call they priced nothing, so they are replaced outright; otherwise genai-prices
  supersedes them from now on and the calls they priced keep their price. Rows entered by hand and
  tenant overrides are never touched. Offline (`--sql`), genai-prices' rows are written for the
  models that have no global price yet.

This revision's data depend on the genai-prices version installed when it runs (by design: it is
the maintained price book); `persistence prices sync` brings a database up to a newer version. The
downgrade removes genai-prices' rows and restores revision 0003's.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 12:40:00+00:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import context, op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY_SOURCE = "migration 0003"

BUMP = """
CREATE FUNCTION vendor_prices_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE vendor_prices_version SET version = version + 1;
    RETURN NULL;
END
$fn$
"""
TRIGGER = """
CREATE TRIGGER vendor_prices_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON vendor_prices
    FOR EACH STATEMENT EXECUTE FUNCTION vendor_prices_bump_version()
"""


def upgrade() -> None:
    op.create_table(
        "vendor_prices_version",
        sa.Column("id", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("id", name=op.f("ck_vendor_prices_version_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vendor_prices_version")),
    )
    op.execute("INSERT INTO vendor_prices_version (id, version) VALUES (true, 0)")
    op.execute(BUMP)
    op.execute(TRIGGER)
    from persistence.ai_calls.price_catalog import genai_rows
    from persistence.ai_calls.price_sync import sync_prices_on

    if context.is_offline_mode():
        _offline_insert(genai_rows()[0])
        return
    bind = op.get_bind()
    if not bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM ai_calls)")).scalar():
        bind.execute(
            sa.text("DELETE FROM vendor_prices WHERE source = :s AND tenant_id = ''"), {"s": LEGACY_SOURCE}
        )
    sync_prices_on(bind)


def _offline_insert(rows: Sequence[object]) -> None:
    """`--sql`: the rows of models without a global price yet (what a sync does for them)."""
    from persistence.ai_calls.price_catalog import PriceRow

    columns = (
        "provider",
        "model",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "reasoning_per_mtok",
        "cache_write_1h_per_mtok",
        "effective_from",
        "effective_to",
        "source",
    )
    types: dict[str, sa.types.TypeEngine[Any]] = {c: sa.Numeric() for c in columns[2:8]}
    types.update(
        provider=sa.String(),
        model=sa.String(),
        source=sa.String(),
        effective_from=sa.DateTime(timezone=True),
        effective_to=sa.DateTime(timezone=True),
    )
    data = [tuple(getattr(r, c) for c in columns) for r in rows if isinstance(r, PriceRow)]
    if not data:
        return
    values = sa.values(*(sa.column(c, types[c]) for c in columns), name="v", literal_binds=True).data(data)
    prices = sa.table("vendor_prices", *(sa.column(c) for c in (*columns, "tenant_id")))
    existing = prices.alias("p")
    taken = sa.exists().where(
        existing.c.provider == values.c.provider,
        existing.c.model == values.c.model,
        existing.c.tenant_id == "",
    )
    op.execute(
        postgresql.insert(prices)
        .from_select(
            list(columns), sa.select(*(sa.cast(values.c[c], types[c]) for c in columns)).where(~taken)
        )
        .on_conflict_do_nothing(index_elements=["provider", "model", "tenant_id", "effective_from"])
    )


def downgrade() -> None:
    op.execute("DELETE FROM vendor_prices WHERE source = 'genai-prices' OR source LIKE 'genai-prices %'")
    # Reopen the last 0003 row of each key the sync had closed, then reload 0003's rows it deleted.
    op.execute(
        sa.text(
            "UPDATE vendor_prices p SET effective_to = NULL WHERE p.source = :s AND p.effective_to IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM vendor_prices q WHERE q.provider = p.provider AND q.model = p.model "
            "AND q.tenant_id = p.tenant_id AND q.effective_from > p.effective_from)"
        ).bindparams(s=LEGACY_SOURCE)
    )
    spec = importlib.util.spec_from_file_location(
        "_revision_0003", Path(__file__).with_name("0003_vendor_prices.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.upgrade()
    op.execute("DROP TRIGGER vendor_prices_version ON vendor_prices")
    op.execute("DROP FUNCTION vendor_prices_bump_version()")
    op.drop_table("vendor_prices_version")
