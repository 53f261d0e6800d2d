"""distribution key: every tenant-owned table's tenant column NOT NULL and leading every key

So the schema can be distributed by tenant (Citus `create_distributed_table` on that column, or a
client-side shard map) without a redesign; `persistence.models.tenancy.TENANT_TABLES` lists the
tables and `tests/models/test_distribution_key.py` checks the catalog.

- The ledger: `organization_id` NOT NULL with '' for "no organization" (the ledger maps None <-> ''
  at its boundaries; records refuse ''), as `vendor_prices.tenant_id` does. `ai_calls` key
  (organization_id, created_at, id) (the partition column stays in it; it also serves a tenant's
  time range, so `ix_ai_calls_organization_id_created_at` goes) plus a plain index on `id` (pending
  batches, reprice and the request link find calls by id); `ai_call_keys` gains `organization_id`
  (backfilled from its call; '' when the call is gone) and its key becomes (organization_id,
  idempotency_key): a key is per tenant. `ai_call_usage_deltas` / `_hourly` keys lead with it (the
  hourly unique key keeps its name; `ix_ai_call_usage_hourly_organization_id_hour` is now its prefix).
- `analytics.*_hourly_deltas` and `company_quotas`: (tenant, id) keys.
- `api_keys`: the unique index on `key_id` alone becomes a plain one (authentication's one lookup;
  key ids are 95 random bits, and the stored HMAC tells two equal ids apart).

Rewrites NULL organization ids and rebuilds these keys under the revision's exclusive locks: a
pass over the ledger (seconds per few million rows). The downgrade restores revision 0024's keys:
'' becomes NULL again, and where one idempotency key was used by several organizations only the
oldest call keeps it (the calls stay; the old schema cannot hold the others' keys). It also fails
if two companies hold keys with the same key id (odds 2^-95 per pair).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 21:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | Sequence[str] | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose (a revision must not change when the models do).
_HOURLY_KEY = "hour, provider, model, customer_id, product_id, environment"

UPGRADE = (
    # ai_call_keys first, while ai_calls is still keyed (id, created_at): one lookup per key.
    "ALTER TABLE ai_call_keys ADD COLUMN organization_id VARCHAR(100)",
    """UPDATE ai_call_keys k SET organization_id = coalesce(c.organization_id, '')
         FROM ai_calls c WHERE c.id = k.call_id AND c.created_at = k.call_created_at""",
    "UPDATE ai_call_keys SET organization_id = '' WHERE organization_id IS NULL",  # calls already gone
    "ALTER TABLE ai_call_keys ALTER COLUMN organization_id SET NOT NULL",
    "ALTER TABLE ai_call_keys DROP CONSTRAINT pk_ai_call_keys",
    "ALTER TABLE ai_call_keys ADD CONSTRAINT pk_ai_call_keys PRIMARY KEY (organization_id, idempotency_key)",
    # ai_calls (partitioned: the statements reach every partition).
    "UPDATE ai_calls SET organization_id = '' WHERE organization_id IS NULL",
    "ALTER TABLE ai_calls ALTER COLUMN organization_id SET DEFAULT ''",
    "ALTER TABLE ai_calls ALTER COLUMN organization_id SET NOT NULL",
    "ALTER TABLE ai_calls DROP CONSTRAINT pk_ai_calls",
    "ALTER TABLE ai_calls ADD CONSTRAINT pk_ai_calls PRIMARY KEY (organization_id, created_at, id)",
    "DROP INDEX ix_ai_calls_organization_id_created_at",
    "CREATE INDEX ix_ai_calls_id ON ai_calls (id)",
    # The ledger's rollups.
    "UPDATE ai_call_usage_deltas SET organization_id = '' WHERE organization_id IS NULL",
    "ALTER TABLE ai_call_usage_deltas ALTER COLUMN organization_id SET DEFAULT ''",
    "ALTER TABLE ai_call_usage_deltas ALTER COLUMN organization_id SET NOT NULL",
    "ALTER TABLE ai_call_usage_deltas DROP CONSTRAINT pk_ai_call_usage_deltas",
    "ALTER TABLE ai_call_usage_deltas ADD CONSTRAINT pk_ai_call_usage_deltas PRIMARY KEY (organization_id, id)",
    "UPDATE ai_call_usage_hourly SET organization_id = '' WHERE organization_id IS NULL",
    "ALTER TABLE ai_call_usage_hourly ALTER COLUMN organization_id SET DEFAULT ''",
    "ALTER TABLE ai_call_usage_hourly ALTER COLUMN organization_id SET NOT NULL",
    "ALTER TABLE ai_call_usage_hourly DROP CONSTRAINT pk_ai_call_usage_hourly",
    "ALTER TABLE ai_call_usage_hourly ADD CONSTRAINT pk_ai_call_usage_hourly PRIMARY KEY (organization_id, id)",
    "ALTER TABLE ai_call_usage_hourly DROP CONSTRAINT uq_ai_call_usage_hourly_key",
    "ALTER TABLE ai_call_usage_hourly ADD CONSTRAINT uq_ai_call_usage_hourly_key "
    f"UNIQUE NULLS NOT DISTINCT (organization_id, {_HOURLY_KEY})",
    "DROP INDEX ix_ai_call_usage_hourly_organization_id_hour",
    # Seed 004's rollup deltas and seed 002's quotas.
    "ALTER TABLE analytics.tenant_cost_hourly_deltas DROP CONSTRAINT pk_tenant_cost_hourly_deltas",
    "ALTER TABLE analytics.tenant_cost_hourly_deltas ADD CONSTRAINT pk_tenant_cost_hourly_deltas "
    "PRIMARY KEY (tenant_id, id)",
    "ALTER TABLE analytics.agent_execution_hourly_deltas DROP CONSTRAINT pk_agent_execution_hourly_deltas",
    "ALTER TABLE analytics.agent_execution_hourly_deltas ADD CONSTRAINT pk_agent_execution_hourly_deltas "
    "PRIMARY KEY (tenant_id, id)",
    "ALTER TABLE company_quotas DROP CONSTRAINT pk_company_quotas",
    "ALTER TABLE company_quotas ADD CONSTRAINT pk_company_quotas PRIMARY KEY (company_id, id)",
    # Authentication's lookup by key id: one index, no longer unique across tenants.
    "DROP INDEX uq_api_keys_key_id",
    "CREATE INDEX ix_api_keys_key_id ON api_keys (key_id)",
)

DOWNGRADE = (
    "DROP INDEX ix_api_keys_key_id",
    "CREATE UNIQUE INDEX uq_api_keys_key_id ON api_keys (key_id)",
    "ALTER TABLE company_quotas DROP CONSTRAINT pk_company_quotas",
    "ALTER TABLE company_quotas ADD CONSTRAINT pk_company_quotas PRIMARY KEY (id)",
    "ALTER TABLE analytics.agent_execution_hourly_deltas DROP CONSTRAINT pk_agent_execution_hourly_deltas",
    "ALTER TABLE analytics.agent_execution_hourly_deltas ADD CONSTRAINT pk_agent_execution_hourly_deltas "
    "PRIMARY KEY (id)",
    "ALTER TABLE analytics.tenant_cost_hourly_deltas DROP CONSTRAINT pk_tenant_cost_hourly_deltas",
    "ALTER TABLE analytics.tenant_cost_hourly_deltas ADD CONSTRAINT pk_tenant_cost_hourly_deltas "
    "PRIMARY KEY (id)",
    # The rollups: the key first (its columns are NOT NULL while it exists), then NULL for ''.
    "CREATE INDEX ix_ai_call_usage_hourly_organization_id_hour ON ai_call_usage_hourly (organization_id, hour)",
    "ALTER TABLE ai_call_usage_hourly DROP CONSTRAINT uq_ai_call_usage_hourly_key",
    "ALTER TABLE ai_call_usage_hourly DROP CONSTRAINT pk_ai_call_usage_hourly",
    "ALTER TABLE ai_call_usage_hourly ADD CONSTRAINT pk_ai_call_usage_hourly PRIMARY KEY (id)",
    "ALTER TABLE ai_call_usage_hourly ALTER COLUMN organization_id DROP NOT NULL",
    "ALTER TABLE ai_call_usage_hourly ALTER COLUMN organization_id DROP DEFAULT",
    "UPDATE ai_call_usage_hourly SET organization_id = NULL WHERE organization_id = ''",
    "ALTER TABLE ai_call_usage_hourly ADD CONSTRAINT uq_ai_call_usage_hourly_key "
    "UNIQUE NULLS NOT DISTINCT (hour, provider, model, organization_id, customer_id, product_id, environment)",
    "ALTER TABLE ai_call_usage_deltas DROP CONSTRAINT pk_ai_call_usage_deltas",
    "ALTER TABLE ai_call_usage_deltas ADD CONSTRAINT pk_ai_call_usage_deltas PRIMARY KEY (id)",
    "ALTER TABLE ai_call_usage_deltas ALTER COLUMN organization_id DROP NOT NULL",
    "ALTER TABLE ai_call_usage_deltas ALTER COLUMN organization_id DROP DEFAULT",
    "UPDATE ai_call_usage_deltas SET organization_id = NULL WHERE organization_id = ''",
    # The ledger.
    "DROP INDEX ix_ai_calls_id",
    "CREATE INDEX ix_ai_calls_organization_id_created_at ON ai_calls (organization_id, created_at)",
    "ALTER TABLE ai_calls DROP CONSTRAINT pk_ai_calls",
    "ALTER TABLE ai_calls ADD CONSTRAINT pk_ai_calls PRIMARY KEY (id, created_at)",
    "ALTER TABLE ai_calls ALTER COLUMN organization_id DROP NOT NULL",
    "ALTER TABLE ai_calls ALTER COLUMN organization_id DROP DEFAULT",
    "UPDATE ai_calls SET organization_id = NULL WHERE organization_id = ''",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
    # One row per idempotency key again: the oldest call keeps a key several organizations used.
    op.execute(
        """DELETE FROM ai_call_keys k
            WHERE EXISTS (SELECT 1 FROM ai_call_keys o
                           WHERE o.idempotency_key = k.idempotency_key
                             AND (o.call_created_at, o.call_id) < (k.call_created_at, k.call_id))"""
    )
    op.execute("ALTER TABLE ai_call_keys DROP CONSTRAINT pk_ai_call_keys")
    op.execute("ALTER TABLE ai_call_keys ADD CONSTRAINT pk_ai_call_keys PRIMARY KEY (idempotency_key)")
    op.drop_column("ai_call_keys", "organization_id")
