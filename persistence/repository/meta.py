"""What reads and writes need to know about a model, worked out once per model: `model_info(model)`.

One cache for both sides: the table, its columns and their attribute names (and database-name
aliases), the primary key and its checked coercion, defaults, upsert targets, relationships, whether
the model is audited or append-only, and the prebuilt get statements. Any mapped class works (ours on
`persistence.models.Base` or a service's on its own `DeclarativeBase`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    PrimaryKeyConstraint,
    Select,
    Table,
    UniqueConstraint,
    any_,
    bindparam,
    inspect,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute, raiseload
from sqlalchemy.sql.schema import ColumnDefault

from persistence.audit import audit_entity, is_append_only
from persistence.errors import InvalidRequestError
from persistence.repository.coerce import describe, integer_bound
from persistence.repository.filters import aliases


@dataclass(frozen=True, slots=True, eq=False)
class Default:
    """How a column gets its value when a write does not give one."""

    server: bool = False  # the server's own default (`DEFAULT`)
    sql: ColumnElement[Any] | None = None  # an expression rendered into the statement (now(), ...)
    make: Callable[[], Any] | None = None  # a Python value, computed per row


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    """A conflict target of an upsert: a unique constraint (by name) or a unique index (columns + WHERE)."""

    name: str
    constraint: str | None
    columns: tuple[Column[Any], ...]
    where: ColumnElement[bool] | None
    nulls_not_distinct: bool


@dataclass(eq=False)
class ModelInfo:
    """Hashable by identity: write plans are cached per (info, shape)."""

    model: type[Any]
    name: str
    table: Table
    pk: Column[Any]
    pk_key: str
    pk_attr: InstrumentedAttribute[Any]
    columns: dict[str, Column[Any]]  # attribute key -> column
    key_of: dict[Column[Any], str]
    computed: frozenset[str]
    relationships: frozenset[str]
    insert_defaults: dict[str, Default]  # columns with a Python-side default
    update_defaults: dict[str, Default]  # columns with `onupdate`
    targets: dict[str, Target]
    audited: bool
    append_only: bool
    coerce_key: Callable[[Any], Any]
    aliases: dict[str, str]  # database column name -> attribute key, where they differ
    get_stmt: Select[Any]  # prebuilt (relationships raising), so SQLAlchemy's compiled cache is hit cheaply
    get_many_stmt: Select[Any]


_INFOS: dict[type[Any], ModelInfo] = {}


def model_info(model: type[Any]) -> ModelInfo:
    """The facts of `model` (built on first use; a model's mapping does not change afterwards)."""
    info = _INFOS.get(model)
    if info is None:
        info = _INFOS[model] = _build(model)
    return info


def _build(model: type[Any]) -> ModelInfo:
    mapper = inspect(model)
    table = cast(Table, mapper.local_table)
    [pk] = mapper.primary_key
    columns: dict[str, Column[Any]] = {}
    for prop in mapper.column_attrs:
        col = prop.columns[0]
        if isinstance(col, Column) and col.table is table:
            columns[prop.key] = col
    key_of = {col: key for key, col in columns.items()}
    insert_defaults: dict[str, Default] = {}
    update_defaults: dict[str, Default] = {}
    for key, col in columns.items():
        if col.default is not None:
            insert_defaults[key] = (
                Default(server=True)
                if col.server_default is not None
                else _default_of(cast(ColumnDefault, col.default))
            )
        if col.onupdate is not None:
            update_defaults[key] = _default_of(cast(ColumnDefault, col.onupdate))
    pk_key = key_of[pk]
    pk_attr: InstrumentedAttribute[Any] = getattr(model, pk_key)
    loaded = select(model).options(raiseload("*"))  # see `persistence.repository.loading`
    return ModelInfo(
        model=model,
        name=model.__name__,
        table=table,
        pk=pk,
        pk_key=pk_key,
        pk_attr=pk_attr,
        columns=columns,
        key_of=key_of,
        computed=frozenset(key for key, col in columns.items() if col.computed is not None),
        relationships=frozenset(mapper.relationships.keys()),
        insert_defaults=insert_defaults,
        update_defaults=update_defaults,
        targets=_targets(table, key_of),
        audited=audit_entity(model) is not None,
        append_only=is_append_only(model),
        coerce_key=_key_coercer(model.__name__, pk),
        aliases=aliases(model),
        get_stmt=loaded.where(pk_attr == bindparam("key", type_=pk.type)),
        get_many_stmt=loaded.where(pk_attr == any_(bindparam("keys", type_=ARRAY(pk.type)))),
    )


def _targets(table: Table, key_of: dict[Column[Any], str]) -> dict[str, Target]:
    targets: dict[str, Target] = {}
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint) and constraint.name:
            targets[str(constraint.name)] = Target(
                name=str(constraint.name),
                constraint=str(constraint.name),
                columns=tuple(constraint.columns),
                where=None,
                nulls_not_distinct=bool(constraint.dialect_options["postgresql"].get("nulls_not_distinct")),
            )
    for index in table.indexes:
        if index.unique and index.name and all(isinstance(e, Column) for e in index.expressions):
            options = index.dialect_options["postgresql"]
            targets[str(index.name)] = Target(
                name=str(index.name),
                constraint=None,
                columns=tuple(cast(Column[Any], e) for e in index.expressions),
                where=options.get("where"),
                nulls_not_distinct=bool(options.get("nulls_not_distinct")),
            )
    return {name: target for name, target in targets.items() if all(col in key_of for col in target.columns)}


def _default_of(default: ColumnDefault) -> Default:
    if default.is_sequence:
        return Default(sql=default.next_value())  # type: ignore[attr-defined]
    if default.is_clause_element:
        return Default(sql=cast(ColumnElement[Any], default.arg))
    if default.is_callable:
        fn = default.arg
        return Default(make=lambda: fn(None))  # SQLAlchemy wraps no-argument callables to take a context
    value = default.arg
    return Default(make=lambda: value)


def _key_coercer(entity: str, pk: Column[Any]) -> Callable[[Any], Any]:
    """Checks a primary-key value in Python, so a malformed id is a clear `InvalidRequestError`,
    not a driver error."""
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
