"""price tiers: context-length tiers in `vendor_prices` (`min_input_tokens`)

genai-prices prices some models by prompt length (claude-sonnet-4-5, gemini-2.5-pro: above 200k
input tokens the whole call is charged at higher rates); revision 0010 stored their base tier only,
so a long-context call was under-priced.

- `vendor_prices.min_input_tokens` BIGINT NOT NULL DEFAULT 0 (>= 0): the row prices calls whose
  input tokens (uncached + cache reads + cache writes, genai-prices' `input_tokens`) exceed it, the
  whole call at its rates; 0 is the base tier, so every existing row keeps its meaning.
- The unique index and the overlap trigger's key become (provider, model, tenant_id,
  min_input_tokens, effective_from): each tier is effective-dated on its own.
- `global_vendor_pricing` (revision 0012) is recreated showing base tiers only (one row per model,
  as seed 002 counts them).
- The upper tiers of the models whose global price is genai-prices' are imported by
  `persistence.ai_calls.price_sync` (as revision 0010 does; online only: after an offline `--sql`
  upgrade run `persistence prices sync`).

The downgrade refuses while a stored call was priced by an upper-tier row (`ai_calls.price_id`): its
price would be lost. Otherwise it deletes the upper-tier rows and restores 0012's index, trigger
function and view.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 13:50:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_INDEX = "ix_vendor_prices_provider_model_tenant_id_effective_from"
NEW_INDEX = "ix_vendor_prices_provider_model_tenant_id_tier_from"

# Frozen here on purpose (a revision must not change when the models do).
OVERLAP = r"""
CREATE OR REPLACE FUNCTION vendor_prices_no_overlap() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Serialise writers of the same key, so two concurrent inserts cannot both pass the check.
    PERFORM pg_advisory_xact_lock(hashtextextended(NEW.provider || '/' || NEW.model || '/' || NEW.tenant_id, 0));
    IF EXISTS (
        SELECT 1 FROM vendor_prices p
         WHERE p.provider = NEW.provider AND p.model = NEW.model AND p.tenant_id = NEW.tenant_id
           AND p.min_input_tokens = NEW.min_input_tokens
           AND p.id <> NEW.id
           AND tstzrange(p.effective_from, p.effective_to) && tstzrange(NEW.effective_from, NEW.effective_to)
    ) THEN
        RAISE EXCEPTION 'price period of % / % (tenant %, above % input tokens) overlaps an existing one',
            NEW.provider, NEW.model, NEW.tenant_id, NEW.min_input_tokens
            USING ERRCODE = '23P01', CONSTRAINT = 'vendor_prices_no_overlap', TABLE = 'vendor_prices';
    END IF;
    RETURN NEW;
END
$fn$
"""
# Revision 0002's function, restored by the downgrade.
OVERLAP_0002 = r"""
CREATE OR REPLACE FUNCTION vendor_prices_no_overlap() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Serialise writers of the same key, so two concurrent inserts cannot both pass the check.
    PERFORM pg_advisory_xact_lock(hashtextextended(NEW.provider || '/' || NEW.model || '/' || NEW.tenant_id, 0));
    IF EXISTS (
        SELECT 1 FROM vendor_prices p
         WHERE p.provider = NEW.provider AND p.model = NEW.model AND p.tenant_id = NEW.tenant_id
           AND p.id <> NEW.id
           AND tstzrange(p.effective_from, p.effective_to) && tstzrange(NEW.effective_from, NEW.effective_to)
    ) THEN
        RAISE EXCEPTION 'price period of % / % (tenant %) overlaps an existing one',
            NEW.provider, NEW.model, NEW.tenant_id
            USING ERRCODE = '23P01', CONSTRAINT = 'vendor_prices_no_overlap', TABLE = 'vendor_prices';
    END IF;
    RETURN NEW;
END
$fn$
"""

_VIEW_COLUMNS = """
CREATE VIEW global_vendor_pricing AS
SELECT p.id, p.provider AS vendor, p.model, CAST('tokens' AS varchar(50)) AS pricing_model,
       p.input_per_mtok * 0.000001 AS input_price, p.output_per_mtok * 0.000001 AS output_price,
       p.input_per_mtok * 0.001 AS input_price_per_1k_tokens,
       p.output_per_mtok * 0.001 AS output_price_per_1k_tokens,
       p.input_per_mtok AS input_price_per_1m_tokens, p.output_per_mtok AS output_price_per_1m_tokens,
       p.cache_read_per_mtok AS cache_read_price_per_1m_tokens,
       p.cache_write_per_mtok AS cache_write_price_per_1m_tokens,
       p.cache_write_1h_per_mtok AS cache_write_1h_price_per_1m_tokens,
       p.reasoning_per_mtok AS reasoning_price_per_1m_tokens,
       CAST('USD' AS varchar(3)) AS currency, p.effective_from AS effective_date,
       p.effective_to AS effective_until, true AS is_active, p.source, p.created_at
  FROM vendor_prices p
"""
VIEW = (
    _VIEW_COLUMNS
    + """ WHERE p.tenant_id = '' AND p.min_input_tokens = 0
   AND p.effective_from <= now() AND (p.effective_to IS NULL OR p.effective_to > now())
"""
)
VIEW_0012 = (
    _VIEW_COLUMNS
    + """ WHERE p.tenant_id = '' AND p.effective_from <= now() AND (p.effective_to IS NULL OR p.effective_to > now())
"""
)


def upgrade() -> None:
    op.execute("ALTER TABLE vendor_prices ADD COLUMN min_input_tokens bigint DEFAULT 0 NOT NULL")
    op.execute(
        "ALTER TABLE vendor_prices ADD CONSTRAINT ck_vendor_prices_min_input_tokens_non_negative "
        "CHECK (min_input_tokens >= 0)"
    )
    op.execute(f"DROP INDEX {OLD_INDEX}")
    op.execute(
        f"CREATE UNIQUE INDEX {NEW_INDEX} ON vendor_prices "
        "(provider, model, tenant_id, min_input_tokens, effective_from)"
    )
    op.execute(OVERLAP)
    op.execute("DROP VIEW global_vendor_pricing")
    op.execute(VIEW)
    if context.is_offline_mode():
        return
    from persistence.ai_calls.price_sync import sync_prices_on

    sync_prices_on(op.get_bind())


def downgrade() -> None:
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM ai_calls c JOIN vendor_prices p ON p.id = c.price_id "
        "WHERE p.min_input_tokens > 0) THEN "
        "RAISE EXCEPTION 'ai_calls holds calls priced by a context-length tier, which revision 0012 cannot store' "
        "USING ERRCODE = '2BP01', "
        "HINT = 'delete those calls, or keep this revision (their price_id names an upper-tier row)'; "
        "END IF; END $$"
    )
    op.execute("DELETE FROM vendor_prices WHERE min_input_tokens > 0")
    op.execute("DROP VIEW global_vendor_pricing")
    op.execute(VIEW_0012)
    op.execute(OVERLAP_0002)
    op.execute(f"DROP INDEX {NEW_INDEX}")
    op.execute(
        f"CREATE UNIQUE INDEX {OLD_INDEX} ON vendor_prices (provider, model, tenant_id, effective_from)"
    )
    op.execute("ALTER TABLE vendor_prices DROP CONSTRAINT ck_vendor_prices_min_input_tokens_non_negative")
    op.execute("ALTER TABLE vendor_prices DROP COLUMN min_input_tokens")
