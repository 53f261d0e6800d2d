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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, cast, overload

from sqlalchemy import Column, CursorResult, Executable, func, inspect, literal, select

from persistence.audit import audit_cte, audit_params
from persistence.errors import InvalidRequestError, NotFoundError, TransientError
from persistence.repository.base import ModelT, RepositoryBase
from persistence.repository.coerce import check_columns, check_value, describe, refuse
from persistence.repository.filters import Filter, where_clauses
from persistence.repository.meta import ModelInfo, model_info
from persistence.repository.statements import (
    Defaults,
    bind_type,
    bulk_insert_plan,
    check_key_values,
    column_arrays,
    delete_plan,
    fill_defaults,
    insert_plan,
    onupdate_sets,
    update_plan,
    upsert_plan,
    writable,
)

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
        info = model_info(self.model)
        fields = _fields(info, values)
        if obj is not None:
            fields = {**_instance_values(info, obj), **fields}
        plan = insert_plan(info, tuple(fields))
        params = dict(zip(plan.names, _checked(info, fields), strict=True))
        fill_defaults(plan, params)
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
        info = model_info(self.model)
        batch, given = _rows(rows)
        if not batch:
            return [] if returning else 0
        keys = _field_keys(info, given)
        plan = bulk_insert_plan(info, keys, returning)
        arrays = check_columns(info.name, _columns_of(info, keys), batch, given)
        chunks = []
        for start in range(0, len(batch), self.chunk_rows):
            end = min(start + self.chunk_rows, len(batch))
            params = {name: array[start:end] for name, array in zip(plan.names, arrays, strict=True)}
            fill_defaults(plan, params, end - start)
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
        info = model_info(self.model)
        self._check_mutable(info, "update")
        if not values:
            raise InvalidRequestError(f"update() of {info.name} needs at least one field to set")
        key = info.coerce_key(id)
        fields = _fields(info, values)
        plan = update_plan(info, tuple(fields))
        params = dict(zip(plan.names, _checked(info, fields), strict=True))
        params["_id"] = key
        fill_defaults(plan, params)
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
        info = model_info(self.model)
        self._check_mutable(info, "update_many")
        fields = _fields(info, _mapping(values, "values"))
        if not fields:
            raise InvalidRequestError(f"update_many() of {info.name} needs at least one field to set")
        clauses = _required_filters(info, "update_many", filters, lookups)
        columns = writable(info, fields, update=True)
        sets: dict[Column[Any], Any] = {
            col: literal(value, bind_type(col))
            for col, value in zip(columns, _checked(info, fields), strict=True)
        }
        defaults: Defaults = []
        sets.update(onupdate_sets(info, fields, defaults))
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
        info = model_info(self.model)
        self._check_mutable(info, "delete")
        key = info.coerce_key(id)
        plan = delete_plan(info)
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
        info = model_info(self.model)
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
        info = model_info(self.model)
        self._check_mutable(info, "upsert")
        fields = _fields(info, _mapping(values, "values"))
        keys = tuple(fields)
        plan = upsert_plan(info, keys, _target_name(on), _update_fields(info, update), False)
        fields = dict(zip(keys, _checked(info, fields), strict=True))
        check_key_values(plan, [fields])
        params = dict(zip(plan.names, fields.values(), strict=True))
        fill_defaults(plan, params)
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
        info = model_info(self.model)
        self._check_mutable(info, "upsert_many")
        given_rows, given = _rows(rows)
        if not given_rows:
            return []
        keys = _field_keys(info, given)
        plan = upsert_plan(info, keys, _target_name(on), _update_fields(info, update), True)
        arrays = check_columns(info.name, _columns_of(info, keys), given_rows, given)
        batch: builtins.list[Mapping[str, Any]] = [
            dict(zip(keys, row, strict=True)) for row in zip(*arrays, strict=True)
        ]
        check_key_values(plan, batch)
        stored: builtins.list[ModelT | None] = [None] * len(batch)
        async with self.session() as session:
            for start in range(0, len(batch), self.chunk_rows):
                todo = builtins.list(range(start, min(start + self.chunk_rows, len(batch))))
                for _ in range(_UPSERT_ATTEMPTS):
                    params = column_arrays(plan, keys, [batch[i] for i in todo])
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

    def _check_mutable(self, info: ModelInfo, operation: str) -> None:
        append_only = self.append_only if self.append_only is not None else info.append_only
        if append_only:
            raise InvalidRequestError(f"{info.name} is append-only: {operation}() is not allowed")


# -- validation -----------------------------------------------------------------------------------------


def _required_filters(
    info: ModelInfo, operation: str, filters: Sequence[Filter], lookups: Mapping[str, Any]
) -> builtins.list[Filter]:
    clauses = where_clauses(info.model, filters, lookups)
    if not clauses:
        raise InvalidRequestError(
            f"{operation}() of {info.name} needs at least one filter; "
            "pass sqlalchemy.true() to match every row"
        )
    return clauses


def _instance_values(info: ModelInfo, obj: Any) -> dict[str, Any]:
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


def _fields(info: ModelInfo, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` keyed by attribute names: a column's database name (`metadata`) becomes its
    attribute's (`metadata_`). Unknown names are left for `writable` to refuse."""
    if not info.aliases:
        return dict(values)
    fields: dict[str, Any] = {}
    for name, value in values.items():
        key = info.aliases.get(name, name) if isinstance(name, str) else name
        if key in fields:
            raise InvalidRequestError(f"{info.name}.{key} is given twice (also as {name!r})")
        fields[key] = value
    return fields


def _field_keys(info: ModelInfo, given: tuple[Any, ...]) -> tuple[Any, ...]:
    for name in given:
        if not isinstance(name, str):
            raise InvalidRequestError(f"field names are strings, got {describe(name)}")
    keys = tuple(info.aliases.get(name, name) for name in given)
    if len(set(keys)) != len(keys):
        raise InvalidRequestError(f"a field of {info.name} is given twice (by its name and its alias)")
    return keys


def _columns_of(info: ModelInfo, keys: tuple[str, ...]) -> tuple[tuple[str, Column[Any]], ...]:
    return tuple((key, info.columns[key]) for key in keys)


def _checked(info: ModelInfo, fields: Mapping[str, Any]) -> builtins.list[Any]:
    """The values of `fields` (names already checked) as they will be bound, or `ValidationError`."""
    return [check_value(info.name, key, info.columns[key], value) for key, value in fields.items()]


def _update_fields(info: ModelInfo, update: Sequence[str] | None) -> tuple[str, ...] | None:
    if update is None:
        return None
    if isinstance(update, str | bytes | Mapping) or not isinstance(update, Iterable):
        raise refuse("update", f"takes a list of field names, got {type(update).__name__}")
    return _field_keys(info, tuple(update))


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
