"""The SQL of the writes: one statement per write shape, built once per model and shape.

`persistence.repository.writes` describes what each statement does (the data-modifying CTEs of the
audit, `unnest` arrays for bulk writes, `ON CONFLICT` upserts); this module builds them. Plans are
cached per (model info, field names, ...), so a repeated write reuses one statement object and hits
SQLAlchemy's compiled cache cheaply.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CTE, Column, ColumnElement, and_, bindparam, func, literal_column, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import aliased, raiseload
from sqlalchemy.sql import sqltypes
from sqlalchemy.types import TypeDecorator, TypeEngine

from persistence.audit import audit_cte
from persistence.errors import InvalidRequestError
from persistence.repository.filters import column
from persistence.repository.meta import ModelInfo, Target


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    statement: Any
    names: tuple[str, ...]  # the bound parameter of each given field, in field order
    audited: bool
    defaults: tuple[tuple[str, Callable[[], Any]], ...] = ()  # Python-side defaults: (parameter, make)
    counts: bool = False  # the statement returns count(*) (else: use the rowcount)
    target: Target | None = None
    key_fields: tuple[str, ...] = ()


def bind_type(col: Column[Any]) -> TypeEngine[Any]:
    """The column's type for binding a value: JSON binds None as SQL NULL, not JSON `null`."""
    type_ = col.type
    if isinstance(type_, sqltypes.JSON) and not type_.none_as_null:
        return type_.adapt(type(type_), none_as_null=True)
    return type_


def _unsized(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    """The type without length/precision: a cast to `varchar(n)` would silently truncate. The value
    is checked (and too long raises) when it is assigned to the column."""
    if isinstance(type_, sqltypes.String) and not isinstance(type_, sqltypes.Enum) and type_.length:
        return type_.adapt(type(type_), length=None)
    if isinstance(type_, sqltypes.Numeric) and not isinstance(type_, sqltypes.Float) and type_.precision:
        return type_.adapt(type(type_), precision=None, scale=None)
    return type_


def _array_param(name: str, col: Column[Any]) -> ColumnElement[Any]:
    """`CAST(:name AS type[])`: one parameter carrying the column's values of every row."""
    bound = bind_type(col)
    item = _unsized(bound.impl_instance if isinstance(bound, TypeDecorator) else bound)
    return sql_cast(bindparam(name, type_=ARRAY(_unsized(bound), dimensions=1)), ARRAY(item, dimensions=1))


def _returning_models(info: ModelInfo, new: CTE) -> Any:
    # Relationships of a written row are not loaded: touching one raises (as on reads without `load=`).
    return select(aliased(info.model, new)).options(raiseload("*")).execution_options(populate_existing=True)


def _insert_values(info: ModelInfo, keys: tuple[str, ...]) -> tuple[dict[Column[Any], Any], Defaults]:
    """VALUES of one row: a parameter per given field, then the defaults of the other columns."""
    values: dict[Column[Any], Any] = {
        col: bindparam(f"p{i}", type_=bind_type(col)) for i, col in enumerate(writable(info, keys))
    }
    defaults: Defaults = []
    for key, default in info.insert_defaults.items():
        if key not in keys:
            col = info.columns[key]
            if default.server:
                # Also keeps SQLAlchemy from computing a Python default it cannot bind inside a CTE.
                values[col] = literal_column("DEFAULT")
            elif default.sql is not None:
                values[col] = default.sql
            else:
                assert default.make is not None
                values[col] = bindparam(f"d{len(defaults)}", type_=bind_type(col))
                defaults.append((f"d{len(defaults)}", default.make))
    return values, defaults


def onupdate_sets(info: ModelInfo, given: Iterable[str], defaults: Defaults) -> dict[Column[Any], Any]:
    """SET items of the `onupdate` columns that the caller did not set (e.g. `updated_at = now()`)."""
    sets: dict[Column[Any], Any] = {}
    given = set(given)
    for key, default in info.update_defaults.items():
        if key not in given:
            col = info.columns[key]
            if default.sql is not None:
                sets[col] = default.sql
            else:
                assert default.make is not None
                sets[col] = bindparam(f"u{len(defaults)}", type_=bind_type(col))
                defaults.append((f"u{len(defaults)}", default.make))
    return sets


Defaults = builtins.list[tuple[str, Callable[[], Any]]]


@dataclass(frozen=True, slots=True, eq=False)
class _Source:
    """Many rows as `unnest(:p0::type[], :p1::type[], ...)`, and how they map onto the table."""

    rows: Any  # the table-valued unnest (columns c0, c1, ... [, ord])
    columns: builtins.list[Column[Any]]  # table columns filled from rows.c0, rows.c1, ...
    sql_columns: builtins.list[Column[Any]]  # table columns filled by SQL defaults
    sql_values: builtins.list[ColumnElement[Any]]
    defaults: Defaults


def _unnest_source(info: ModelInfo, keys: tuple[str, ...], *, ordinality: bool) -> _Source:
    columns = writable(info, keys)
    arrays = [_array_param(f"p{i}", col) for i, col in enumerate(columns)]
    sql_columns: builtins.list[Column[Any]] = []
    sql_values: builtins.list[ColumnElement[Any]] = []
    defaults: Defaults = []
    for key, default in info.insert_defaults.items():
        if key in keys or default.server:  # an omitted column gets its server default
            continue
        col = info.columns[key]
        if default.sql is not None:
            sql_columns.append(col)
            sql_values.append(default.sql)
        else:
            assert default.make is not None
            name = f"d{len(defaults)}"
            defaults.append((name, default.make))
            columns.append(col)
            arrays.append(_array_param(name, col))
    rows = (
        func.unnest(*arrays)
        .table_valued(*[f"c{i}" for i in range(len(arrays))], with_ordinality="ord" if ordinality else None)
        .render_derived("_w_rows")
    )
    return _Source(rows, columns, sql_columns, sql_values, defaults)


def _names(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"p{i}" for i in range(len(keys)))


@functools.lru_cache(maxsize=1024)
def insert_plan(info: ModelInfo, keys: tuple[str, ...]) -> Plan:
    values, defaults = _insert_values(info, keys)
    new = info.table.insert().values(values).returning(*info.table.c).cte("_w_new")
    stmt = _returning_models(info, new)
    if info.audited:
        stmt = stmt.add_cte(audit_cte(info.model, new=new))
    return Plan(stmt, _names(keys), info.audited, tuple(defaults))


@functools.lru_cache(maxsize=1024)
def bulk_insert_plan(info: ModelInfo, keys: tuple[str, ...], returning: bool) -> Plan:
    source = _unnest_source(info, keys, ordinality=False)
    insert = info.table.insert().from_select(
        [*source.columns, *source.sql_columns],
        select(*source.rows.c, *source.sql_values),
        include_defaults=False,
    )
    if not (info.audited or returning):
        return Plan(insert, _names(keys), False, tuple(source.defaults))
    new = insert.returning(*info.table.c).cte("_w_new")
    stmt: Any = _returning_models(info, new) if returning else select(func.count()).select_from(new)
    if info.audited:
        stmt = stmt.add_cte(audit_cte(info.model, new=new))
    return Plan(stmt, _names(keys), info.audited, tuple(source.defaults), counts=not returning)


@functools.lru_cache(maxsize=1024)
def update_plan(info: ModelInfo, keys: tuple[str, ...]) -> Plan:
    sets: dict[Column[Any], Any] = {
        col: bindparam(f"p{i}", type_=bind_type(col))
        for i, col in enumerate(writable(info, keys, update=True))
    }
    defaults: Defaults = []
    sets.update(onupdate_sets(info, keys, defaults))
    table, pk = info.table, info.pk
    key = bindparam("_id", type_=pk.type)
    if info.audited:
        old = select(*table.c).where(pk == key).with_for_update().cte("_w_old")
        new = table.update().where(pk == old.c[pk.key]).values(sets).returning(*table.c).cte("_w_new")
        stmt = _returning_models(info, new).add_cte(audit_cte(info.model, new=new, old=old))
    else:
        new = table.update().where(pk == key).values(sets).returning(*table.c).cte("_w_new")
        stmt = _returning_models(info, new)
    return Plan(stmt, _names(keys), info.audited, tuple(defaults))


@functools.lru_cache(maxsize=256)
def delete_plan(info: ModelInfo) -> Plan:
    table, pk = info.table, info.pk
    key = bindparam("_id", type_=pk.type)
    if info.audited:
        old = table.delete().where(pk == key).returning(*table.c).cte("_w_old")
        stmt: Any = select(old.c[pk.key]).add_cte(audit_cte(info.model, old=old))
    else:
        stmt = table.delete().where(pk == key).returning(pk)
    return Plan(stmt, (), info.audited)


@functools.lru_cache(maxsize=1024)
def upsert_plan(
    info: ModelInfo, keys: tuple[str, ...], on: str, update: tuple[str, ...] | None, bulk: bool
) -> Plan:
    target = info.targets.get(on) if isinstance(on, str) else None
    if target is None:
        known = ", ".join(sorted(info.targets)) or "none"
        raise InvalidRequestError(
            f"{info.name} has no unique constraint or unique index named {on!r}; known: {known}"
        )
    writable(info, keys)
    key_fields = tuple(info.key_of[col] for col in target.columns)
    missing = [key for key in key_fields if key not in keys]
    if missing:
        raise InvalidRequestError(f"upsert on {on!r} needs values for {', '.join(missing)}")
    if update is None:
        update_fields = tuple(key for key in keys if key not in key_fields and key != info.pk_key)
    else:
        writable(info, update, update=True)
        not_given = [key for key in update if key not in keys]
        if not_given:
            raise InvalidRequestError(
                f"upsert: the fields to update must be among the given values; not given: {', '.join(not_given)}"
            )
        update_fields = update
    table, pk = info.table, info.pk
    # `=` (hash- and merge-joinable) unless a NULL key can really occur and must match a NULL: NULL keys
    # are refused up front for an ordinary target, and NOT NULL columns never hold one. `IS NOT DISTINCT
    # FROM` only joins by nested loop, which made matching 1000 upserted rows back cost 1000 x 1000 tests.
    nulls_equal = target.nulls_not_distinct and any(col.nullable for col in target.columns)

    def same(col: ColumnElement[Any], value: ColumnElement[Any]) -> ColumnElement[bool]:
        return col.is_not_distinct_from(value) if nulls_equal else col == value

    source_cte: CTE | None = None
    if bulk:
        source = _unnest_source(info, keys, ordinality=True)
        source_cte = select(*source.rows.c).cte("_w_src")
        given = [source_cte.c[f"c{i}"] for i in range(len(source.columns))]
        statement = pg_insert(table).from_select(
            [*source.columns, *source.sql_columns], select(*given, *source.sql_values), include_defaults=False
        )
        defaults = source.defaults
        key_values = [source_cte.c[f"c{keys.index(key)}"] for key in key_fields]
    else:
        values, defaults = _insert_values(info, keys)
        statement = pg_insert(table).values(values)
        key_values = [values[col] for col in target.columns]
    key_match = [same(col, value) for col, value in zip(target.columns, key_values, strict=True)]

    sets: dict[Any, Any] = {
        info.columns[key]: statement.excluded[info.columns[key].key] for key in update_fields
    }
    if sets:
        sets.update(onupdate_sets(info, update_fields, defaults))
    else:  # nothing to change: a no-op SET still locks and returns the existing row
        sets = {target.columns[0]: target.columns[0]}

    old: CTE | None = None
    where: ColumnElement[bool] | None = None
    if info.audited:
        old_rows = select(*table.c)
        old_rows = (
            old_rows.join(source_cte, and_(*key_match))
            if source_cte is not None
            else old_rows.where(*key_match)
        )
        if target.where is not None:
            old_rows = old_rows.where(target.where)
        old = old_rows.with_for_update(of=table).cte("_w_old")
        # Only rows this statement saw (and locked) before are updated; a row inserted concurrently
        # after its snapshot is only locked, and the statement runs again for it.
        where = pk.in_(select(old.c[pk.key]))
    if target.constraint is not None:
        statement = statement.on_conflict_do_update(constraint=target.constraint, set_=sets, where=where)
    else:
        statement = statement.on_conflict_do_update(
            index_elements=builtins.list(target.columns), index_where=target.where, set_=sets, where=where
        )
    new = statement.returning(*table.c).cte("_w_new")
    if source_cte is not None:
        entity = aliased(info.model, new)
        match = [same(new.c[col.key], value) for col, value in zip(target.columns, key_values, strict=True)]
        stmt: Any = (
            select(entity, source_cte.c.ord)
            .join_from(entity, source_cte, and_(*match))
            .options(raiseload("*"))
            .execution_options(populate_existing=True)
        )
    else:
        stmt = _returning_models(info, new)
    if old is not None:
        stmt = stmt.add_cte(audit_cte(info.model, new=new, old=old, upsert=True))
    return Plan(stmt, _names(keys), info.audited, tuple(defaults), target=target, key_fields=key_fields)


def writable(info: ModelInfo, keys: Iterable[str], *, update: bool = False) -> builtins.list[Column[Any]]:
    """The columns of these field names, or `InvalidRequestError` (unknown names via `filters.column`)."""
    columns = []
    for key in keys:
        col = info.columns.get(key) if isinstance(key, str) else None
        if col is None:
            column(info.model, key)  # raises the standard "no field" error
            raise InvalidRequestError(f"{info.name}.{key} is not a column of {info.table.name}")
        if key in info.computed:
            raise InvalidRequestError(f"{info.name}.{key} is computed by the database and cannot be written")
        if update and col is info.pk:
            raise InvalidRequestError(f"the primary key {info.name}.{key} cannot be updated")
        columns.append(col)
    return columns


def check_key_values(plan: Plan, rows: Sequence[Mapping[str, Any]]) -> None:
    """Refuse NULL keys that can never conflict, and a key repeated within one call."""
    target = plan.target
    assert target is not None
    keys = plan.key_fields
    if not target.nulls_not_distinct:
        for row in rows:
            for key in keys:
                if row[key] is None:
                    raise InvalidRequestError(
                        f"upsert on {target.name!r} needs a value for {key!r}: a NULL key never conflicts"
                    )
    if len(rows) > 1:
        try:
            distinct = {tuple(row[key] for key in keys) for row in rows}
        except TypeError:  # unhashable key values: PostgreSQL refuses duplicates itself
            return
        if len(distinct) != len(rows):
            raise InvalidRequestError(f"upsert_many: a key of {target.name!r} appears more than once in rows")


# -- execution helpers ------------------------------------------------------------------------------------


def fill_defaults(plan: Plan, params: dict[str, Any], rows: int | None = None) -> None:
    for name, make in plan.defaults:
        params[name] = make() if rows is None else [make() for _ in range(rows)]


def column_arrays(plan: Plan, keys: tuple[str, ...], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {
        name: [row[key] for row in rows] for name, key in zip(plan.names, keys, strict=True)
    }
    fill_defaults(plan, params, len(rows))
    return params
