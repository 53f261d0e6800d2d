"""Revision 0026 as the catalog records it: RLS on every tenant-owned table, the roles, the grants."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models.tenancy import REFERENCE_TABLES, TENANT_TABLES

# Policies of a table: name, command, the roles they apply to, USING and WITH CHECK.
POLICIES = """
SELECT c.relrowsecurity, c.relforcerowsecurity, p.polname::text, p.polcmd::text,
       (SELECT coalesce(string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ','), '')
          FROM unnest(p.polroles) AS r),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
  FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid
 WHERE c.oid = to_regclass(:name)
"""
HAS_COLUMN = """
SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(:name) AND attname = :column
                                          AND NOT attisdropped)
"""
Policy = tuple[str, str, str | None, str | None]  # command, roles, USING, WITH CHECK


async def _policies(engine: AsyncEngine, table: str) -> dict[str, Policy]:
    """The table's policies by name; asserts RLS is enabled and not forced on its owner."""
    async with engine.connect() as conn:
        rows = (await conn.execute(text(POLICIES), {"name": table})).all()
    for row in rows:
        assert row[0] and not row[1], table  # the owner (migrations, maintenance) is not bound
    return {row[2]: (row[3], row[4], row[5], row[6]) for row in rows}


def _keyed(expression: str | None, column: str) -> bool:
    return expression is not None and column in expression and "persistence.tenant_id" in expression


async def test_every_tenant_table_has_rls_and_a_policy_on_its_tenant_column(engine: AsyncEngine) -> None:
    without_column = []
    for table, column in TENANT_TABLES.items():
        async with engine.connect() as conn:
            if not (await conn.execute(text(HAS_COLUMN), {"name": table, "column": column})).scalar_one():
                without_column.append(table)
                continue
        policies = await _policies(engine, table)
        assert set(policies) == {"tenant_isolation", "cross_tenant_read"}, table
        command, roles, using, check = policies["tenant_isolation"]
        assert (command, roles) == ("*", "public") and _keyed(using, column) and _keyed(check, column), table
        assert policies["cross_tenant_read"] == ("r", "persistence_reader", "true", None), table
    assert without_column == []  # every tenant table has its column (ai_call_keys since revision 0025)


async def test_reference_tables_show_global_rows_and_take_only_the_tenants_own(engine: AsyncEngine) -> None:
    for table, column in REFERENCE_TABLES.items():
        policies = await _policies(engine, table)
        assert set(policies) == {
            "tenant_read",
            "tenant_insert",
            "tenant_update",
            "tenant_delete",
            "cross_tenant_read",
        }
        # Reads: the global rows OR the tenant's; writes: the tenant's alone.
        assert policies["tenant_read"][0] == "r" and " OR " in (policies["tenant_read"][2] or "")
        assert _keyed(policies["tenant_read"][2], column)
        assert _keyed(policies["tenant_insert"][3], column) and " OR " not in (
            policies["tenant_insert"][3] or ""
        )
        assert _keyed(policies["tenant_update"][2], column) and _keyed(policies["tenant_update"][3], column)
        assert _keyed(policies["tenant_delete"][2], column)


async def test_roles_grants_and_views(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        roles: dict[str, bool] = dict(
            (
                await conn.execute(
                    text(
                        "SELECT rolname, rolbypassrls FROM pg_roles "
                        "WHERE rolname LIKE 'persistence\\_%' AND NOT rolcanlogin"
                    )
                )
            ).all()
        )
        assert roles == {
            "persistence_service": False,
            "persistence_operator": True,
            "persistence_reader": False,
        }
        # The service role owns nothing, may not TRUNCATE (which ignores RLS), and no partition is granted.
        owned = await conn.execute(
            text("SELECT count(*) FROM pg_class WHERE relowner = 'persistence_service'::regrole")
        )
        assert owned.scalar_one() == 0
        parents = [t for t in TENANT_TABLES if "." not in t]
        for table in parents:
            granted = await conn.execute(
                text(
                    "SELECT has_table_privilege('persistence_service', CAST(:t AS regclass), 'SELECT, INSERT, "
                    "UPDATE, DELETE'), has_table_privilege('persistence_service', CAST(:t AS regclass), 'TRUNCATE')"
                ),
                {"t": table},
            )
            assert tuple(granted.one()) == (True, False), table
        partitions = await conn.execute(
            text(
                "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relispartition AND n.nspname IN ('public', 'analytics') "
                "AND has_table_privilege('persistence_service', c.oid, 'SELECT')"
            )
        )
        assert partitions.all() == []
        # Per-model totals across tenants are platform data.
        model_totals = await conn.execute(
            text("SELECT has_table_privilege('persistence_service', 'ai_call_model_hourly', 'SELECT')")
        )
        assert model_totals.scalar_one() is False
        # Views run with the caller's policies.
        views = await conn.execute(
            text(
                "SELECT c.relname, coalesce('security_invoker=true' = ANY(c.reloptions), false) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'v' AND n.nspname IN ('public', 'analytics')"
            )
        )
        rows: dict[str, bool] = dict(views.all())
        assert rows and all(rows.values()), rows
