"""The schema is ready to be distributed by tenant (issue 19): every tenant-owned table's tenant
column is NOT NULL and leads its primary key and every unique constraint or unique index, as the
catalog says (not the models), and every table is classified once in `models/tenancy.py`."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.models import Base
from persistence.models.tenancy import PLATFORM_TABLES, REFERENCE_TABLES, TENANT_TABLES

# Every unique index of a table (primary keys and unique constraints are backed by one), with its
# leading column's name; and the tenant column's NOT NULL flag. Partitions are checked through
# their parents (a partitioned parent's unique index is inherited by every partition).
KEYS = """
SELECT format('%s', i.indexrelid::regclass) AS index_name, i.indisprimary,
       (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = i.indkey[0]) AS leading
  FROM pg_index i
 WHERE i.indrelid = to_regclass(:name) AND i.indisunique
"""
NOT_NULL = """
SELECT a.attnotnull FROM pg_attribute a
 WHERE a.attrelid = to_regclass(:name) AND a.attname = :column AND NOT a.attisdropped
"""
CONSTRAINTS = """
SELECT c.conname, (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.conrelid AND a.attnum = c.conkey[1])
  FROM pg_constraint c
 WHERE c.conrelid = to_regclass(:name) AND c.contype IN ('p', 'u', 'x')
"""


async def test_every_tenant_key_leads_with_the_tenant_column(connection: AsyncConnection) -> None:
    """A table without a primary key (the append-only `request_transitions` audit) passes: a
    distributed table needs none, only that any key it has includes the distribution column."""
    problems: list[str] = []
    for table, column in sorted(TENANT_TABLES.items()):
        not_null = (await connection.execute(text(NOT_NULL), {"name": table, "column": column})).scalar()
        if not_null is not True:
            problems.append(f"{table}.{column}: {'missing' if not_null is None else 'nullable'}")
        rows = (await connection.execute(text(KEYS), {"name": table})).all()
        problems += [
            f"{table}: {'primary key' if primary else 'unique index'} {index} leads with {leading}"
            for index, primary, leading in rows
            if leading != column
        ]
        constraints = (await connection.execute(text(CONSTRAINTS), {"name": table})).all()
        problems += [
            f"{table}: constraint {name} leads with {lead}" for name, lead in constraints if lead != column
        ]
    assert problems == [], "\n".join(problems)


async def test_reference_tables_carry_their_scope_column_not_null(connection: AsyncConnection) -> None:
    """Reference tables are replicated whole, so their keys need not lead with a tenant; their
    scope column is still NOT NULL ('' = global rows)."""
    for table, column in REFERENCE_TABLES.items():
        assert (await connection.execute(text(NOT_NULL), {"name": table, "column": column})).scalar() is True


def test_every_table_is_classified_exactly_once() -> None:
    maps = (TENANT_TABLES, REFERENCE_TABLES, PLATFORM_TABLES)
    classified = [name for names in maps for name in names]
    assert sorted(classified) == sorted(set(classified))  # no table in two maps
    assert set(classified) == set(Base.metadata.tables)
