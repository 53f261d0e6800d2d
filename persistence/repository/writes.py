"""The write side of a repository: add, add_many, update, update_many, delete, delete_many, upsert(_many).

Every write is ONE SQL statement (bulk writes: one per `chunk_rows` rows), audit included. For an audited
model (`persistence.audit`) the audit rows are written by a data-modifying CTE of the same statement, so
they commit and roll back with the change and cost no extra round trip:

    add           WITH _w_new AS (INSERT INTO t (...) VALUES (...) RETURNING t.*),
                       _w_audit AS (INSERT INTO audit_log (...) SELECT ... FROM _w_new AS n)
                  SELECT _w_new.* FROM _w_new
    add_many      the same, inserting `SELECT * FROM unnest(:col1::type[], :col2::type[], ...)`:
                  one array parameter per column, whatever the number of rows; returns count(*)
    update        WITH _w_old AS (SELECT t.* FROM t WHERE id = :id FOR UPDATE),
                       _w_new AS (UPDATE t SET ... FROM _w_old WHERE t.id = _w_old.id RETURNING t.*),
                       _w_audit AS (INSERT ... SELECT ... FROM _w_new n JOIN _w_old o ON o.id = n.id)
                  SELECT _w_new.* FROM _w_new
    update_many   the same with the caller's filters in `_w_old`; returns count(*)
    delete(_many) WITH _w_old AS (DELETE FROM t WHERE ... RETURNING t.*), _w_audit AS (...) SELECT ...
    upsert(_many) WITH _w_old AS (SELECT t.* FROM t WHERE <key> = :key FOR UPDATE),
                       _w_new AS (INSERT INTO t ... ON CONFLICT ON CONSTRAINT <name> DO UPDATE SET ...
                                  WHERE t.id IN (SELECT id FROM _w_old) RETURNING t.*),
                       _w_audit AS (INSERT ... SELECT ... FROM _w_new n LEFT JOIN _w_old o ...)
                  SELECT _w_new.* FROM _w_new

Models that are not audited get the same statements without the audit CTE (and without `_w_old`).

Semantics:

- Field names are checked against the model before any SQL is built (`InvalidRequestError`, nothing is
  written); a column's database name works too (`metadata` for `metadata_`). Values are checked
  against the column's type first (`persistence.repository.coerce`: what is stored is exactly what
  was given, or a `ValidationError` naming the field and reason) and always bound parameters. The primary key cannot be updated and
  database-computed columns cannot be written.
- `None` stores SQL NULL, also in JSONB columns (not the JSON value `null`).
- Results are ORM instances of the model, loaded fresh (`populate_existing`).
- Database errors leave as `persistence.errors` types (`ConflictError` naming the constraint,
  `IntegrityViolation`, `ValidationError`, ...), and nothing of the failed statement is written.
- Upserts are one atomic `INSERT ... ON CONFLICT ... DO UPDATE`, never a read then a write, so
  concurrent upserts of one key end with one row and no error. For an audited model the row's previous
  values are locked and read in the same statement; if a concurrent transaction inserted the row after
  the statement's snapshot was taken (so its old values cannot be seen), the row is only locked, and the
  statement runs once more (a new snapshot sees it); this is the only case of a second round trip.
- Append-only models (`AuditLog`, or a repository with `append_only = True`) refuse updates, deletes
  and upserts with `InvalidRequestError`.
"""

from __future__ import annotations

import builtins
import functools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast, overload

from sqlalchemy import (
    CTE,
    Column,
    ColumnElement,
    CursorResult,
    Executable,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    inspect,
    literal,
    literal_column,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import aliased
from sqlalchemy.sql import sqltypes
from sqlalchemy.sql.schema import ColumnDefault
from sqlalchemy.types import TypeDecorator, TypeEngine

from persistence.audit import audit_cte, audit_entity, audit_params, is_append_only
from persistence.errors import InvalidRequestError, NotFoundError, TransientError
from persistence.repository.base import ModelT, RepositoryBase
from persistence.repository.coerce import check_columns, check_value, describe, integer_bound, refuse
from persistence.repository.filters import Filter, aliases, column, where_clauses

CHUNK_ROWS = 10_000
"""Bulk writes send at most this many rows per statement (all statements of a call share one transaction)."""

_UPSERT_ATTEMPTS = 3


class Writes(RepositoryBase[ModelT]):
    """Typed, audited writes of `model`. Outside a `transaction()` block each call is one short
    transaction; inside one, every call joins it (and a rollback undoes the rows and their audit)."""

    append_only: ClassVar[bool | None] = None
    """True refuses update/delete/upsert. None (the default) means: True for append-only models
    (`AuditLog`), False otherwise."""

    chunk_rows: ClassVar[int] = CHUNK_ROWS

    # -- insert -------------------------------------------------------------------------------------

    async def add(self, obj: ModelT | None = None, /, **values: Any) -> ModelT:
        """Insert one row and return it as stored (defaults filled): `await repo.add(claim_id="c", ...)`.

        Takes field values, a new (transient) model instance, or both (the keyword values win). The
        instance is not modified or added to a session; the returned object is a new instance.
        """
        info = _info(self.model)
        fields = _fields(info, values)
        if obj is not None:
            fields = {**_instance_values(info, obj), **fields}
        plan = _insert_plan(info, tuple(fields))
        params = dict(zip(plan.names, _checked(info, fields), strict=True))
        _fill_defaults(plan, params)
        if plan.audited:
            params.update(audit_params())
        async with self.session() as session:
            result = await session.execute(plan.statement, params)
            return cast(ModelT, result.scalar_one())

    @overload
    async def add_many(self, rows: Iterable[Mapping[str, Any]]) -> int: ...

    @overload
    async def add_many(
        self, rows: Iterable[Mapping[str, Any]], *, returning: Literal[True]
    ) -> builtins.list[ModelT]: ...

    @overload
    async def add_many(
        self, rows: Iterable[Mapping[str, Any]], *, returning: bool
    ) -> int | builtins.list[ModelT]: ...

    async def add_many(
        self, rows: Iterable[Mapping[str, Any]], *, returning: bool = False
    ) -> int | builtins.list[ModelT]:
        """Insert many rows (every row with the same fields) in one statement per `chunk_rows` rows.

        Returns the number of rows inserted, or with `returning=True` the inserted rows (in no
        guaranteed order). All chunks share one transaction: a failing row inserts nothing.
        """
        if not isinstance(returning, bool):
            raise refuse("returning", f"expects a bool, got {type(returning).__name__}")
        info = _info(self.model)
        batch, given = _rows(rows)
        if not batch:
            return [] if returning else 0
        keys = _field_keys(info, given)
        plan = _bulk_insert_plan(info, keys, returning)
        arrays = check_columns(info.name, _columns_of(info, keys), batch, given)
        chunks = []
        for start in range(0, len(batch), self.chunk_rows):
            end = min(start + self.chunk_rows, len(batch))
            params = {name: array[start:end] for name, array in zip(plan.names, arrays, strict=True)}
            _fill_defaults(plan, params, end - start)
            chunks.append(params)
        if plan.audited:
            audit = audit_params()
            for params in chunks:
                params.update(audit)
        if returning:
            instances: builtins.list[ModelT] = []
            async with self.session() as session:
                for params in chunks:
                    result = await session.execute(plan.statement, params)
                    instances.extend(cast("builtins.list[ModelT]", result.scalars().all()))
            return instances
        inserted = 0
        async with self.connection() as conn:
            for params in chunks:
                result = await conn.execute(plan.statement, params)
                inserted += int(result.scalar_one()) if plan.counts else _rowcount(result)
        return inserted

    # -- update -------------------------------------------------------------------------------------

    async def update(self, id: Any, /, **values: Any) -> ModelT:
        """Set some fields of one row and return the row as stored: one `UPDATE ... RETURNING`.

        `NotFoundError` when no row has this key. At least one field is required.
        """
        info = _info(self.model)
        self._check_mutable(info, "update")
        if not values:
            raise InvalidRequestError(f"update() of {info.name} needs at least one field to set")
        key = info.coerce_key(id)
        fields = _fields(info, values)
        plan = _update_plan(info, tuple(fields))
        params = dict(zip(plan.names, _checked(info, fields), strict=True))
        params["_id"] = key
        _fill_defaults(plan, params)
        if plan.audited:
            params.update(audit_params())
        async with self.session() as session:
            found = (await session.execute(plan.statement, params)).scalar_one_or_none()
        if found is None:
            raise NotFoundError(info.name, key)
        return cast(ModelT, found)

    async def update_many(self, *filters: Filter, values: Mapping[str, Any], **lookups: Any) -> int:
        """Set `values` on every row matching the filters; returns how many rows matched.

        At least one filter or lookup is required (pass `sqlalchemy.true()` to update every row).
        """
        info = _info(self.model)
        self._check_mutable(info, "update_many")
        fields = _fields(info, _mapping(values, "values"))
        if not fields:
            raise InvalidRequestError(f"update_many() of {info.name} needs at least one field to set")
        clauses = _required_filters(info, "update_many", filters, lookups)
        columns = _writable(info, fields, update=True)
        sets: dict[Column[Any], Any] = {
            col: literal(value, _bind_type(col))
            for col, value in zip(columns, _checked(info, fields), strict=True)
        }
        defaults: _Defaults = []
        sets.update(_onupdate_sets(info, fields, defaults))
        params: dict[str, Any] = {name: make() for name, make in defaults}
        table = info.table
        stmt: Executable
        if info.audited:
            old = select(*table.c).where(*clauses).with_for_update(of=table).cte("_w_old")
            new = (
                table.update()
                .where(table.c[info.pk.key] == old.c[info.pk.key])
                .values(sets)
                .returning(*table.c)
                .cte("_w_new")
            )
            stmt = select(func.count()).select_from(new).add_cte(audit_cte(info.model, new=new, old=old))
            params.update(audit_params())
        else:
            stmt = table.update().where(*clauses).values(sets)
        async with self.connection() as conn:
            result = await conn.execute(stmt, params)
            return int(result.scalar_one()) if info.audited else _rowcount(result)

    # -- delete -------------------------------------------------------------------------------------

    async def delete(self, id: Any) -> None:
        """Delete one row; `NotFoundError` when no row has this key."""
        info = _info(self.model)
        self._check_mutable(info, "delete")
        key = info.coerce_key(id)
        plan = _delete_plan(info)
        params: dict[str, Any] = {"_id": key}
        if plan.audited:
            params.update(audit_params())
        async with self.connection() as conn:
            deleted = (await conn.execute(plan.statement, params)).first()
        if deleted is None:
            raise NotFoundError(info.name, key)

    async def delete_many(self, *filters: Filter, **lookups: Any) -> int:
        """Delete every row matching the filters; returns how many were deleted.

        At least one filter or lookup is required (pass `sqlalchemy.true()` to delete every row).
        """
        info = _info(self.model)
        self._check_mutable(info, "delete_many")
        clauses = _required_filters(info, "delete_many", filters, lookups)
        table = info.table
        params: dict[str, Any] = {}
        stmt: Executable
        if info.audited:
            old = table.delete().where(*clauses).returning(*table.c).cte("_w_old")
            stmt = select(func.count()).select_from(old).add_cte(audit_cte(info.model, old=old))
            params = audit_params()
        else:
            stmt = table.delete().where(*clauses)
        async with self.connection() as conn:
            result = await conn.execute(stmt, params)
            return int(result.scalar_one()) if info.audited else _rowcount(result)

    # -- upsert -------------------------------------------------------------------------------------

    async def upsert(
        self, values: Mapping[str, Any], *, on: str, update: Sequence[str] | None = None
    ) -> ModelT:
        """Insert the row, or update the row it conflicts with on the unique constraint or unique
        index named `on`; returns the row as stored. One atomic `INSERT ... ON CONFLICT DO UPDATE`.

        `update` lists the fields to overwrite on conflict; None means every given field but the
        conflict key; `[]` changes nothing and returns the existing row.
        """
        info = _info(self.model)
        self._check_mutable(info, "upsert")
        fields = _fields(info, _mapping(values, "values"))
        keys = tuple(fields)
        plan = _upsert_plan(info, keys, _target_name(on), _update_fields(info, update), False)
        fields = dict(zip(keys, _checked(info, fields), strict=True))
        _check_key_values(plan, [fields])
        params = dict(zip(plan.names, fields.values(), strict=True))
        _fill_defaults(plan, params)
        if plan.audited:
            params.update(audit_params())
        async with self.session() as session:
            for _ in range(_UPSERT_ATTEMPTS):
                found = (await session.execute(plan.statement, params)).scalar_one_or_none()
                if found is not None:
                    return cast(ModelT, found)
        raise TransientError(f"upsert of {info.name} on {on!r} kept racing with concurrent inserts")

    async def upsert_many(
        self, rows: Iterable[Mapping[str, Any]], *, on: str, update: Sequence[str] | None = None
    ) -> builtins.list[ModelT]:
        """`upsert` for many rows (same fields in every row, each conflict key at most once), one
        statement per `chunk_rows` rows; returns the stored rows in the order of `rows`."""
        info = _info(self.model)
        self._check_mutable(info, "upsert_many")
        given_rows, given = _rows(rows)
        if not given_rows:
            return []
        keys = _field_keys(info, given)
        plan = _upsert_plan(info, keys, _target_name(on), _update_fields(info, update), True)
        arrays = check_columns(info.name, _columns_of(info, keys), given_rows, given)
        batch: builtins.list[Mapping[str, Any]] = [
            dict(zip(keys, row, strict=True)) for row in zip(*arrays, strict=True)
        ]
        _check_key_values(plan, batch)
        stored: builtins.list[ModelT | None] = [None] * len(batch)
        async with self.session() as session:
            for start in range(0, len(batch), self.chunk_rows):
                todo = builtins.list(range(start, min(start + self.chunk_rows, len(batch))))
                for _ in range(_UPSERT_ATTEMPTS):
                    params = _column_arrays(plan, keys, [batch[i] for i in todo])
                    if plan.audited:
                        params.update(audit_params())
                    result = await session.execute(plan.statement, params)
                    for instance, ordinal in result.all():
                        stored[todo[ordinal - 1]] = instance
                    todo = [i for i in todo if stored[i] is None]
                    if not todo:
                        break
                else:
                    raise TransientError(
                        f"upsert_many of {info.name} on {on!r} kept racing with concurrent inserts"
                    )
        return cast("builtins.list[ModelT]", stored)

    # -- helpers ------------------------------------------------------------------------------------

    def _check_mutable(self, info: _Info, operation: str) -> None:
        append_only = self.append_only if self.append_only is not None else info.append_only
        if append_only:
            raise InvalidRequestError(f"{info.name} is append-only: {operation}() is not allowed")


# -- per-model facts (built once) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Default:
    """How a column gets its value when a write does not give one."""

    server: bool = False  # the server's own default (`DEFAULT`)
    sql: ColumnElement[Any] | None = None  # an expression rendered into the statement (now(), ...)
    make: Callable[[], Any] | None = None  # a Python value, computed per row


@dataclass(frozen=True, slots=True, eq=False)
class _Target:
    """A conflict target of an upsert: a unique constraint (by name) or a unique index (columns + WHERE)."""

    name: str
    constraint: str | None
    columns: tuple[Column[Any], ...]
    where: ColumnElement[bool] | None
    nulls_not_distinct: bool


@dataclass(eq=False)
class _Info:
    model: type[Any]
    name: str
    table: Table
    pk: Column[Any]
    pk_key: str
    columns: dict[str, Column[Any]]  # attribute key -> column
    key_of: dict[Column[Any], str]
    computed: frozenset[str]
    relationships: frozenset[str]
    insert_defaults: dict[str, _Default]  # columns with a Python-side default
    update_defaults: dict[str, _Default]  # columns with `onupdate`
    targets: dict[str, _Target]
    audited: bool
    append_only: bool
    coerce_key: Callable[[Any], Any]
    aliases: dict[str, str]  # database column name -> attribute key, where they differ


_INFOS: dict[type[Any], _Info] = {}


def _info(model: type[Any]) -> _Info:
    info = _INFOS.get(model)
    if info is None:
        info = _INFOS[model] = _build_info(model)
    return info


def _build_info(model: type[Any]) -> _Info:
    mapper = inspect(model)
    table = cast(Table, mapper.local_table)
    [pk] = mapper.primary_key
    columns: dict[str, Column[Any]] = {}
    for prop in mapper.column_attrs:
        col = prop.columns[0]
        if isinstance(col, Column) and col.table is table:
            columns[prop.key] = col
    key_of = {col: key for key, col in columns.items()}
    insert_defaults: dict[str, _Default] = {}
    update_defaults: dict[str, _Default] = {}
    for key, col in columns.items():
        if col.default is not None:
            insert_defaults[key] = (
                _Default(server=True)
                if col.server_default is not None
                else _default_of(cast(ColumnDefault, col.default))
            )
        if col.onupdate is not None:
            update_defaults[key] = _default_of(cast(ColumnDefault, col.onupdate))
    targets: dict[str, _Target] = {}
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint) and constraint.name:
            targets[str(constraint.name)] = _Target(
                name=str(constraint.name),
                constraint=str(constraint.name),
                columns=tuple(constraint.columns),
                where=None,
                nulls_not_distinct=bool(constraint.dialect_options["postgresql"].get("nulls_not_distinct")),
            )
    for index in table.indexes:
        if index.unique and index.name and all(isinstance(e, Column) for e in index.expressions):
            options = index.dialect_options["postgresql"]
            targets[str(index.name)] = _Target(
                name=str(index.name),
                constraint=None,
                columns=tuple(cast(Column[Any], e) for e in index.expressions),
                where=options.get("where"),
                nulls_not_distinct=bool(options.get("nulls_not_distinct")),
            )
    targets = {
        name: target for name, target in targets.items() if all(col in key_of for col in target.columns)
    }
    return _Info(
        model=model,
        name=model.__name__,
        table=table,
        pk=pk,
        pk_key=key_of[pk],
        columns=columns,
        key_of=key_of,
        computed=frozenset(key for key, col in columns.items() if col.computed is not None),
        relationships=frozenset(mapper.relationships.keys()),
        insert_defaults=insert_defaults,
        update_defaults=update_defaults,
        targets=targets,
        audited=audit_entity(model) is not None,
        append_only=is_append_only(model),
        coerce_key=_key_coercer(model.__name__, pk),
        aliases=aliases(model),
    )


def _default_of(default: ColumnDefault) -> _Default:
    if default.is_sequence:
        return _Default(sql=default.next_value())  # type: ignore[attr-defined]
    if default.is_clause_element:
        return _Default(sql=cast(ColumnElement[Any], default.arg))
    if default.is_callable:
        fn = default.arg
        return _Default(make=lambda: fn(None))  # SQLAlchemy wraps no-argument callables to take a context
    value = default.arg
    return _Default(make=lambda: value)


def _key_coercer(entity: str, pk: Column[Any]) -> Callable[[Any], Any]:
    """A malformed primary key is a clear `InvalidRequestError`, not a driver error."""
    try:
        python_type = pk.type.python_type
    except NotImplementedError:
        return lambda key: key

    def refuse(key: Any, kind: str) -> InvalidRequestError:
        return InvalidRequestError(f"id: {entity} keys are {kind}, got {describe(key)}")

    if python_type is uuid.UUID:

        def as_uuid(key: Any) -> Any:
            if isinstance(key, uuid.UUID):
                return key
            if isinstance(key, str):
                try:
                    return uuid.UUID(key)
                except ValueError:
                    pass
            raise refuse(key, "UUIDs")

        return as_uuid
    if python_type is int:
        bound = integer_bound(pk.type)

        def as_int(key: Any) -> Any:
            if isinstance(key, int) and not isinstance(key, bool):
                if -bound <= key < bound:
                    return key
                raise InvalidRequestError(f"id: out of range for {entity} keys ({-bound} .. {bound - 1})")
            raise refuse(key, "integers")

        return as_int
    return lambda key: key


# -- validation -----------------------------------------------------------------------------------------


def _writable(info: _Info, keys: Iterable[str], *, update: bool = False) -> builtins.list[Column[Any]]:
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


def _required_filters(
    info: _Info, operation: str, filters: Sequence[Filter], lookups: Mapping[str, Any]
) -> builtins.list[Filter]:
    clauses = where_clauses(info.model, filters, lookups)
    if not clauses:
        raise InvalidRequestError(
            f"{operation}() of {info.name} needs at least one filter; "
            "pass sqlalchemy.true() to match every row"
        )
    return clauses


def _instance_values(info: _Info, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, info.model):
        raise InvalidRequestError(f"add() takes a {info.name} instance, got {type(obj).__name__}")
    state = inspect(obj)
    if not state.transient:
        raise InvalidRequestError(f"add() takes a new {info.name}; this one is persistent or detached")
    loaded = state.dict
    for key in info.relationships:
        if loaded.get(key):
            raise InvalidRequestError(
                f"add() writes columns only; set the foreign key instead of the relationship {key!r}"
            )
    return {key: loaded[key] for key in info.columns if key in loaded}


def _rows(
    rows: Iterable[Mapping[str, Any]],
) -> tuple[builtins.list[Mapping[str, Any]], tuple[str, ...]]:
    if isinstance(rows, Mapping | str | bytes) or not isinstance(rows, Iterable):
        raise refuse("rows", f"expected a sequence of rows (mappings), got {type(rows).__name__}")
    batch = builtins.list(rows)
    if not batch:
        return batch, ()
    first = batch[0]
    if not isinstance(first, Mapping):
        raise refuse("rows", f"rows must be mappings of field names to values, got {type(first).__name__}")
    expected = first.keys()
    for number, row in enumerate(batch):
        if not isinstance(row, Mapping):
            raise refuse("rows", f"row {number} is a {type(row).__name__}, not a mapping")
        if row.keys() != expected:
            raise InvalidRequestError(
                f"row {number} sets other fields than row 0 ({', '.join(sorted(map(str, expected)))}); "
                "every row of one call must set the same fields"
            )
    return batch, tuple(first)


def _target_name(on: object) -> str:
    if not isinstance(on, str):
        raise InvalidRequestError(f"on takes the name of a unique constraint or index, got {describe(on)}")
    return on


def _mapping(values: object, argument: str) -> Mapping[str, Any]:
    if not isinstance(values, Mapping):
        raise refuse(argument, f"expects a mapping of field names to values, got {type(values).__name__}")
    return values


def _fields(info: _Info, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` keyed by attribute names: a column's database name (`metadata`) becomes its
    attribute's (`metadata_`). Unknown names are left for `_writable` to refuse."""
    if not info.aliases:
        return dict(values)
    fields: dict[str, Any] = {}
    for name, value in values.items():
        key = info.aliases.get(name, name) if isinstance(name, str) else name
        if key in fields:
            raise InvalidRequestError(f"{info.name}.{key} is given twice (also as {name!r})")
        fields[key] = value
    return fields


def _field_keys(info: _Info, given: tuple[Any, ...]) -> tuple[Any, ...]:
    for name in given:
        if not isinstance(name, str):
            raise InvalidRequestError(f"field names are strings, got {describe(name)}")
    keys = tuple(info.aliases.get(name, name) for name in given)
    if len(set(keys)) != len(keys):
        raise InvalidRequestError(f"a field of {info.name} is given twice (by its name and its alias)")
    return keys


def _columns_of(info: _Info, keys: tuple[str, ...]) -> tuple[tuple[str, Column[Any]], ...]:
    return tuple((key, info.columns[key]) for key in keys)


def _checked(info: _Info, fields: Mapping[str, Any]) -> builtins.list[Any]:
    """The values of `fields` (names already checked) as they will be bound, or `ValidationError`."""
    return [check_value(info.name, key, info.columns[key], value) for key, value in fields.items()]


def _update_fields(info: _Info, update: Sequence[str] | None) -> tuple[str, ...] | None:
    if update is None:
        return None
    if isinstance(update, str | bytes | Mapping) or not isinstance(update, Iterable):
        raise refuse("update", f"takes a list of field names, got {type(update).__name__}")
    return _field_keys(info, tuple(update))


def _check_key_values(plan: _Plan, rows: Sequence[Mapping[str, Any]]) -> None:
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


# -- statements (built once per model and shape, so SQLAlchemy's compiled cache is hit cheaply) ----------


@dataclass(frozen=True, slots=True, eq=False)
class _Plan:
    statement: Any
    names: tuple[str, ...]  # the bound parameter of each given field, in field order
    audited: bool
    defaults: tuple[tuple[str, Callable[[], Any]], ...] = ()  # Python-side defaults: (parameter, make)
    counts: bool = False  # the statement returns count(*) (else: use the rowcount)
    target: _Target | None = None
    key_fields: tuple[str, ...] = ()


def _bind_type(col: Column[Any]) -> TypeEngine[Any]:
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
    bind_type = _bind_type(col)
    item = _unsized(bind_type.impl_instance if isinstance(bind_type, TypeDecorator) else bind_type)
    return sql_cast(
        bindparam(name, type_=ARRAY(_unsized(bind_type), dimensions=1)), ARRAY(item, dimensions=1)
    )


def _returning_models(info: _Info, new: CTE) -> Any:
    return select(aliased(info.model, new)).execution_options(populate_existing=True)


def _insert_values(info: _Info, keys: tuple[str, ...]) -> tuple[dict[Column[Any], Any], _Defaults]:
    """VALUES of one row: a parameter per given field, then the defaults of the other columns."""
    values: dict[Column[Any], Any] = {
        col: bindparam(f"p{i}", type_=_bind_type(col)) for i, col in enumerate(_writable(info, keys))
    }
    defaults: _Defaults = []
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
                values[col] = bindparam(f"d{len(defaults)}", type_=_bind_type(col))
                defaults.append((f"d{len(defaults)}", default.make))
    return values, defaults


def _onupdate_sets(info: _Info, given: Iterable[str], defaults: _Defaults) -> dict[Column[Any], Any]:
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
                sets[col] = bindparam(f"u{len(defaults)}", type_=_bind_type(col))
                defaults.append((f"u{len(defaults)}", default.make))
    return sets


_Defaults = builtins.list[tuple[str, Callable[[], Any]]]


@dataclass(frozen=True, slots=True, eq=False)
class _Source:
    """Many rows as `unnest(:p0::type[], :p1::type[], ...)`, and how they map onto the table."""

    rows: Any  # the table-valued unnest (columns c0, c1, ... [, ord])
    columns: builtins.list[Column[Any]]  # table columns filled from rows.c0, rows.c1, ...
    sql_columns: builtins.list[Column[Any]]  # table columns filled by SQL defaults
    sql_values: builtins.list[ColumnElement[Any]]
    defaults: _Defaults


def _unnest_source(info: _Info, keys: tuple[str, ...], *, ordinality: bool) -> _Source:
    columns = _writable(info, keys)
    arrays = [_array_param(f"p{i}", col) for i, col in enumerate(columns)]
    sql_columns: builtins.list[Column[Any]] = []
    sql_values: builtins.list[ColumnElement[Any]] = []
    defaults: _Defaults = []
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
def _insert_plan(info: _Info, keys: tuple[str, ...]) -> _Plan:
    values, defaults = _insert_values(info, keys)
    new = info.table.insert().values(values).returning(*info.table.c).cte("_w_new")
    stmt = _returning_models(info, new)
    if info.audited:
        stmt = stmt.add_cte(audit_cte(info.model, new=new))
    return _Plan(stmt, _names(keys), info.audited, tuple(defaults))


@functools.lru_cache(maxsize=1024)
def _bulk_insert_plan(info: _Info, keys: tuple[str, ...], returning: bool) -> _Plan:
    source = _unnest_source(info, keys, ordinality=False)
    insert = info.table.insert().from_select(
        [*source.columns, *source.sql_columns],
        select(*source.rows.c, *source.sql_values),
        include_defaults=False,
    )
    if not (info.audited or returning):
        return _Plan(insert, _names(keys), False, tuple(source.defaults))
    new = insert.returning(*info.table.c).cte("_w_new")
    stmt: Any = _returning_models(info, new) if returning else select(func.count()).select_from(new)
    if info.audited:
        stmt = stmt.add_cte(audit_cte(info.model, new=new))
    return _Plan(stmt, _names(keys), info.audited, tuple(source.defaults), counts=not returning)


@functools.lru_cache(maxsize=1024)
def _update_plan(info: _Info, keys: tuple[str, ...]) -> _Plan:
    sets: dict[Column[Any], Any] = {
        col: bindparam(f"p{i}", type_=_bind_type(col))
        for i, col in enumerate(_writable(info, keys, update=True))
    }
    defaults: _Defaults = []
    sets.update(_onupdate_sets(info, keys, defaults))
    table, pk = info.table, info.pk
    key = bindparam("_id", type_=pk.type)
    if info.audited:
        old = select(*table.c).where(pk == key).with_for_update().cte("_w_old")
        new = table.update().where(pk == old.c[pk.key]).values(sets).returning(*table.c).cte("_w_new")
        stmt = _returning_models(info, new).add_cte(audit_cte(info.model, new=new, old=old))
    else:
        new = table.update().where(pk == key).values(sets).returning(*table.c).cte("_w_new")
        stmt = _returning_models(info, new)
    return _Plan(stmt, _names(keys), info.audited, tuple(defaults))


@functools.lru_cache(maxsize=256)
def _delete_plan(info: _Info) -> _Plan:
    table, pk = info.table, info.pk
    key = bindparam("_id", type_=pk.type)
    if info.audited:
        old = table.delete().where(pk == key).returning(*table.c).cte("_w_old")
        stmt: Any = select(old.c[pk.key]).add_cte(audit_cte(info.model, old=old))
    else:
        stmt = table.delete().where(pk == key).returning(pk)
    return _Plan(stmt, (), info.audited)


@functools.lru_cache(maxsize=1024)
def _upsert_plan(
    info: _Info, keys: tuple[str, ...], on: str, update: tuple[str, ...] | None, bulk: bool
) -> _Plan:
    target = info.targets.get(on) if isinstance(on, str) else None
    if target is None:
        known = ", ".join(sorted(info.targets)) or "none"
        raise InvalidRequestError(
            f"{info.name} has no unique constraint or unique index named {on!r}; known: {known}"
        )
    _writable(info, keys)
    key_fields = tuple(info.key_of[col] for col in target.columns)
    missing = [key for key in key_fields if key not in keys]
    if missing:
        raise InvalidRequestError(f"upsert on {on!r} needs values for {', '.join(missing)}")
    if update is None:
        update_fields = tuple(key for key in keys if key not in key_fields and key != info.pk_key)
    else:
        _writable(info, update, update=True)
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
        sets.update(_onupdate_sets(info, update_fields, defaults))
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
            .execution_options(populate_existing=True)
        )
    else:
        stmt = _returning_models(info, new)
    if old is not None:
        stmt = stmt.add_cte(audit_cte(info.model, new=new, old=old, upsert=True))
    return _Plan(stmt, _names(keys), info.audited, tuple(defaults), target=target, key_fields=key_fields)


# -- execution helpers ------------------------------------------------------------------------------------


def _fill_defaults(plan: _Plan, params: dict[str, Any], rows: int | None = None) -> None:
    for name, make in plan.defaults:
        params[name] = make() if rows is None else [make() for _ in range(rows)]


def _column_arrays(plan: _Plan, keys: tuple[str, ...], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {
        name: [row[key] for row in rows] for name, key in zip(plan.names, keys, strict=True)
    }
    _fill_defaults(plan, params, len(rows))
    return params


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
