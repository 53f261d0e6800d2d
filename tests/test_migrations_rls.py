"""Revision 0026 as the catalog records it: RLS on every tenant-owned table, the roles, the grants."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models.tenancy import REFERENCE_TABLES, TENANT_TABLES

# Policies of a table: the columns they compare with the tenant setting, per command.
POLICIES = """
SELECT c.relrowsecurity, c.relforcerowsecurity, p.polcmd::text,
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
  FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
 WHERE c.oid = to_regclass(:name)
"""
HAS_COLUMN = """
SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(:name) AND attname = :column
                                          AND NOT attisdropped)
"""


async def _policies(
    engine: AsyncEngine, table: str
) -> list[tuple[bool, bool, str | None, str | None, str | None]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text(POLICIES), {"name": table})).all()
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


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
        assert policies, table
        for enabled, forced, command, using, check in policies:
            assert enabled and not forced, table  # the owner (migrations, maintenance) is not bound
            assert command == "*" and _keyed(using, column) and _keyed(check, column), (table, using, check)
    # ai_call_keys gets its tenant column from revision 0025 (and then its policy here).
    assert set(without_column) <= {"ai_call_keys"}


async def test_reference_tables_show_global_rows_and_take_only_the_tenants_own(engine: AsyncEngine) -> None:
    for table, column in REFERENCE_TABLES.items():
        policies = await _policies(engine, table)
        by_command = {command: (using, check) for _, _, command, using, check in policies}
        assert all(enabled for enabled, *_ in policies), table
        assert set(by_command) == {"r", "a", "w", "d"}, table
        # Reads: the global rows OR the tenant's; writes: the tenant's alone.
        assert " OR " in (by_command["r"][0] or "") and _keyed(by_command["r"][0], column)
        assert _keyed(by_command["a"][1], column) and " OR " not in (by_command["a"][1] or "")
        assert _keyed(by_command["w"][0], column) and _keyed(by_command["w"][1], column)
        assert _keyed(by_command["d"][0], column)


async def test_roles_grants_and_views(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        roles: dict[str, bool] = dict(
            (
                await conn.execute(
                    text(
                        "SELECT rolname, rolbypassrls FROM pg_roles "
                        "WHERE rolname IN ('persistence_service', 'persistence_operator') AND NOT rolcanlogin"
                    )
                )
            ).all()
        )
        assert roles == {"persistence_service": False, "persistence_operator": True}
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
