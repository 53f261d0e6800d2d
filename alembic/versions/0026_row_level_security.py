"""Row-level security: tenant-owned tables show a role only the rows of the transaction's tenant

- Every tenant-owned table (`models/tenancy.py`'s `TENANT_TABLES`, frozen below) gets RLS enabled
  and one policy `tenant_isolation`: rows whose tenant column equals the transaction-local setting
  `persistence.tenant_id` (set by `persistence.tenancy.tenant`), for reads and writes alike (USING and
  WITH CHECK). Without the setting (NULL, or '' once a transaction-local value has ended) nothing
  is visible and nothing can be written. `ai_call_keys` gets its tenant column from revision 0025:
  its RLS and policy are created only when the column exists (otherwise it is left as it was).
- The reference tables (`rate_limit_configs`, `vendor_prices`) show the global rows ('') and the
  tenant's own; writes only the tenant's own.
- RLS is not FORCEd: the tables' owner (migrations, maintenance, the test suite) is not subject to it.
- Roles (cluster-wide, NOLOGIN, created only if missing): `persistence_service`, the role services
  log in as members of: no BYPASSRLS, the DML it needs on the tables and views of `public` and
  `analytics` (not TRUNCATE, which ignores RLS; not ownership), their sequences and functions; and
  `persistence_operator` (BYPASSRLS, a member of `persistence_service` for the privileges), which
  `persistence.tenancy.across_tenants` switches to with `SET LOCAL ROLE` for audited cross-tenant
  work. Creating a BYPASSRLS role needs a superuser: run this revision as one, or create
  `persistence_operator` (NOLOGIN BYPASSRLS) beforehand. A third, `persistence_reader` (NOLOGIN,
  no privileges of its own), is admitted to every row for SELECT by a policy `cross_tenant_read`:
  `grant_reader` makes the reconciliation reader (a cross-tenant reporting login) a member, so it
  keeps reading every tenant's calls with the SELECT privileges it is granted there.
- Partitions: the policies of a partitioned parent apply to statements through the parent only; a
  partition is a table of its own with RLS off. The service role is granted the parents and never
  a partition (partitions are created later by the owner's maintenance, with no privileges for
  anyone else), so a direct partition read or write is refused (42501) instead of bypassing RLS.
- Views run with their owner's rights and so would bypass RLS: on PostgreSQL 15+ every view gets
  `security_invoker = true` (the caller's policies apply); on older servers the service role is
  not granted the views at all.
- A later revision that adds a table grants it to `persistence_service` itself (no default
  privileges here, so that partitions stay ungranted), and a view it (re)creates sets
  `security_invoker`.

The downgrade drops the policies, disables RLS, resets the views and revokes every privilege of
the two roles in this database. It leaves the roles: they are cluster-wide, other databases
(templates, clones) may still grant them, and service login roles may be members of them.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 21:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0026"
down_revision: str | Sequence[str] | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of `persistence.models.tenancy` (a revision must not change when the models do).
TENANT_TABLES: dict[str, str] = {
    "ai_calls": "organization_id",
    "ai_call_keys": "organization_id",
    "ai_call_usage_hourly": "organization_id",
    "ai_call_usage_deltas": "organization_id",
    "companies": "company_id",
    "users": "company_id",
    "api_keys": "company_id",
    "quotas": "company_id",
    "quota_counters": "company_id",
    "quota_holds": "company_id",
    "quota_reservations": "company_id",
    "company_quotas": "company_id",
    "rate_limit_resets": "company_id",
    "rate_limit_slots": "company_id",
    "rate_limit_state": "company_id",
    "usage": "company_id",
    "request_inflight": "company_id",
    "request_history": "company_id",
    "request_transitions": "company_id",
    "request_stats_daily": "company_id",
    "request_stats_deltas": "company_id",
    "results": "company_id",
    "result_chunks": "company_id",
    "result_cache": "company_id",
    "analytics.platform_events": "tenant_id",
    "analytics.tenant_cost_events": "tenant_id",
    "analytics.agent_executions": "tenant_id",
    "analytics.tenant_cost_hourly": "tenant_id",
    "analytics.tenant_cost_hourly_deltas": "tenant_id",
    "analytics.agent_execution_hourly": "tenant_id",
    "analytics.agent_execution_hourly_deltas": "tenant_id",
}
REFERENCE_TABLES: dict[str, str] = {"rate_limit_configs": "company_id", "vendor_prices": "tenant_id"}
VIEWS = ("requests", "request_stats", "binary_results", "cost_calculations", "global_vendor_pricing")
SCHEMAS = ("public", "analytics")

# '' is what a transaction-local setting leaves behind after its transaction: never a tenant.
TENANT = "nullif(current_setting('persistence.tenant_id', true), '')"

ROLES = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'persistence_service') THEN
        CREATE ROLE persistence_service NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'persistence_operator') THEN
        IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            RAISE EXCEPTION 'creating role persistence_operator (BYPASSRLS) needs a superuser: create it '
                'first (CREATE ROLE persistence_operator NOLOGIN BYPASSRLS) or run this revision as one';
        END IF;
        CREATE ROLE persistence_operator NOLOGIN BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'persistence_reader') THEN
        CREATE ROLE persistence_reader NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT pg_has_role('persistence_operator', 'persistence_service', 'MEMBER') THEN
        GRANT persistence_service TO persistence_operator;
    END IF;
END
$$
"""

# Privileges on the relations that exist now, partitions excepted (see the docstring).
GRANTS = """
DO $$
DECLARE
    rel record;
    invoker boolean := current_setting('server_version_num')::int >= 150000;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass AS name, c.relkind, c.relname
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname IN ('public', 'analytics') AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND NOT c.relispartition
    LOOP
        IF rel.relkind = 'S' THEN
            EXECUTE format('GRANT USAGE, SELECT, UPDATE ON SEQUENCE %s TO persistence_service', rel.name);
        ELSIF rel.relname = 'alembic_version' OR rel.relkind = 'm' THEN
            EXECUTE format('GRANT SELECT ON %s TO persistence_service', rel.name);
        ELSIF rel.relkind = 'v' THEN
            IF invoker THEN
                EXECUTE format('GRANT SELECT ON %s TO persistence_service', rel.name);
            END IF;
        ELSE
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO persistence_service', rel.name);
        END IF;
    END LOOP;
END
$$
"""

INVOKER_VIEWS = """
DO $$
DECLARE
    view_name text;
BEGIN
    IF current_setting('server_version_num')::int < 150000 THEN
        RETURN;
    END IF;
    FOREACH view_name IN ARRAY %(views)s LOOP
        IF to_regclass(view_name) IS NOT NULL THEN
            EXECUTE format('ALTER VIEW %%s SET (security_invoker = %(value)s)', to_regclass(view_name));
        END IF;
    END LOOP;
END
$$
"""

# The ledger's key table gets its tenant column from revision 0025: only then is it protected here
# (checked by the server, so that offline SQL renders too).
PROTECT = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM information_schema.columns
                WHERE table_schema = '{schema}' AND table_name = '{name}' AND column_name = '{column}') THEN
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON {table}
            USING ({column} = {tenant}) WITH CHECK ({column} = {tenant});
        CREATE POLICY cross_tenant_read ON {table} FOR SELECT TO persistence_reader USING (true);
    END IF;
END
$$
"""


def _array(names: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join(f"'{name}'" for name in names) + "]"


def upgrade() -> None:
    op.execute(ROLES)
    for schema in SCHEMAS:
        op.execute(f"GRANT USAGE ON SCHEMA {schema} TO persistence_service")
        op.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO persistence_service")
    op.execute(GRANTS)
    # Per-model totals across every tenant: platform data, not for services (folds write it as the owner).
    op.execute("REVOKE ALL ON ai_call_model_hourly FROM persistence_service")
    for table, column in TENANT_TABLES.items():
        schema, _, name = table.rpartition(".")
        op.execute(
            PROTECT.format(schema=schema or "public", name=name, table=table, column=column, tenant=TENANT)
        )
    for table, column in REFERENCE_TABLES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_read ON {table} FOR SELECT USING ({column} = '' OR {column} = {TENANT})"
        )
        op.execute(f"CREATE POLICY tenant_insert ON {table} FOR INSERT WITH CHECK ({column} = {TENANT})")
        op.execute(
            f"CREATE POLICY tenant_update ON {table} FOR UPDATE USING ({column} = {TENANT}) "
            f"WITH CHECK ({column} = {TENANT})"
        )
        op.execute(f"CREATE POLICY tenant_delete ON {table} FOR DELETE USING ({column} = {TENANT})")
        op.execute(
            f"CREATE POLICY cross_tenant_read ON {table} FOR SELECT TO persistence_reader USING (true)"
        )
    op.execute(INVOKER_VIEWS % {"views": _array(VIEWS), "value": "true"})


def downgrade() -> None:
    op.execute(INVOKER_VIEWS % {"views": _array(VIEWS), "value": "false"})
    for table in REFERENCE_TABLES:
        for policy in ("tenant_read", "tenant_insert", "tenant_update", "tenant_delete", "cross_tenant_read"):
            op.execute(f"DROP POLICY IF EXISTS {policy} ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"DROP POLICY IF EXISTS cross_tenant_read ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for schema in SCHEMAS:
        for role in ("persistence_service", "persistence_operator"):
            op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}")
            op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}")
            op.execute(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema} FROM {role}")
            op.execute(f"REVOKE ALL ON SCHEMA {schema} FROM {role}")
