"""Caller-supplied field names and lookups, checked against the model before any SQL is built.

Two ways to filter, both typed: SQLAlchemy expressions (`VerificationResult.confidence >= 0.9`), or
Django-style keyword lookups for names that arrive as data (`confidence__gte=0.9`). A name that is not
a mapped column of the model (or the database name of one: `metadata` for `metadata_`) raises
`InvalidRequestError` and never reaches SQL; values are checked against the column's type
(`persistence.repository.coerce`: `ValidationError` naming the lookup) and always bound parameters.

Lookups: `field` / `field__eq`, `__ne`, `__lt`, `__lte`, `__gt`, `__gte`, `__in`, `__not_in`,
`__isnull` (True/False), `__contains` (JSONB `@>`). `__ne`, `__in` and `__not_in` follow SQL: a row
whose field is NULL matches none of them (use `__isnull`).

`__in` / `__not_in` bind the whole list as one array parameter (`= ANY($1)` / `<> ALL($1)`): one
prepared statement whatever the list length, and no limit of 32767 parameters per statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import JSON, Column, ColumnElement, UnaryExpression, all_, any_, bindparam, inspect, literal
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import InstrumentedAttribute

from persistence.errors import InvalidRequestError
from persistence.repository.coerce import check_value, describe, refuse

Filter = ColumnElement[bool]


def _array_of(col: InstrumentedAttribute[Any], values: Iterable[Any]) -> Any:
    return bindparam(None, list(values), type_=ARRAY(col.type))


def _in(col: InstrumentedAttribute[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    if isinstance(col.type, JSON):  # no array of JSON documents; IN (...) compares them fine
        return col.in_(list(values))
    return col == any_(_array_of(col, values))


def _not_in(col: InstrumentedAttribute[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    if isinstance(col.type, JSON):
        return col.not_in(list(values))
    return col != all_(_array_of(col, values))


_LOOKUPS: dict[str, Callable[[InstrumentedAttribute[Any], Any], ColumnElement[bool]]] = {
    "eq": lambda col, v: col.is_(None) if v is None else col == v,
    "ne": lambda col, v: col.is_not(None) if v is None else col != v,
    "lt": lambda col, v: col < v,
    "lte": lambda col, v: col <= v,
    "gt": lambda col, v: col > v,
    "gte": lambda col, v: col >= v,
    "in": lambda col, v: _in(col, v),
    "not_in": lambda col, v: _not_in(col, v),
    "isnull": lambda col, v: col.is_(None) if v else col.is_not(None),
    "contains": lambda col, v: col.contains(v),
}


def field_key(model: type[Any], name: object) -> str:
    """The attribute key of field `name`: an attribute name, or a column's database name where the
    attribute has another name (seed 003's `metadata` for `metadata_`); else `InvalidRequestError`."""
    mapper = inspect(model)
    if isinstance(name, str):
        if name in mapper.column_attrs:
            return name
        alias = aliases(model).get(name)
        if alias is not None:
            return alias
    known = ", ".join(sorted(mapper.column_attrs.keys()))
    raise InvalidRequestError(f"{model.__name__} has no field {describe(name)}; fields: {known}")


_ALIASES: dict[type[Any], dict[str, str]] = {}


def aliases(model: type[Any]) -> dict[str, str]:
    """Database column names that differ from their attribute's name (`metadata` -> `metadata_`)."""
    found = _ALIASES.get(model)
    if found is None:
        found = _ALIASES[model] = _build_aliases(model)
    return found


def _build_aliases(model: type[Any]) -> dict[str, str]:
    mapper = inspect(model)
    aliases: dict[str, str] = {}
    for prop in mapper.column_attrs:
        [col] = prop.columns[:1]
        name = getattr(col, "name", None)
        if isinstance(name, str) and name != prop.key and name not in mapper.column_attrs:
            aliases[name] = prop.key
    return aliases


def column(model: type[Any], name: str) -> InstrumentedAttribute[Any]:
    """The mapped column attribute `name` (or its alias) of `model`, or `InvalidRequestError`."""
    attr: InstrumentedAttribute[Any] = getattr(model, field_key(model, name))
    return attr


def lookup(model: type[Any], key: str, value: Any) -> ColumnElement[bool]:
    """One keyword lookup (`confidence__gte=0.9`) as a SQL expression with a checked, bound value.

    The value is checked against the column's type (`persistence.repository.coerce`, filter rules):
    a value of the wrong type is a `ValidationError` naming the lookup, before any SQL.
    """
    # Split at the last `__`, so a field whose name ends in `_` works (`metadata___contains`).
    name, sep, op = key.rpartition("__")
    if not sep:
        name, op = key, "eq"
    if op not in _LOOKUPS:
        raise InvalidRequestError(f"unknown lookup {op!r} in {key!r}; lookups: {', '.join(_LOOKUPS)}")
    col = column(model, name)
    entity = model.__name__
    if op == "contains" and not isinstance(col.type, JSONB):
        raise InvalidRequestError(f"{key!r}: __contains works on JSONB fields only")
    if op == "isnull":
        if not isinstance(value, bool):
            raise refuse(f"{entity}.{key}", f"needs True or False, got {type(value).__name__}")
        return _LOOKUPS[op](col, value)
    if op in ("eq", "ne") and value is None:
        return _LOOKUPS[op](col, value)
    table_column = _table_column(model, col.key)
    bind = _json_bind(col) if isinstance(col.type, JSON) else None
    if op in ("in", "not_in"):
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
            raise refuse(f"{entity}.{key}", f"needs a list of values, got {type(value).__name__}")
        value = [check_value(entity, key, table_column, item, filtering=True) for item in value]
        if bind is not None:
            value = [bind(item) for item in value]
    else:
        value = check_value(entity, key, table_column, value, filtering=True)
        if bind is not None:
            value = bind(value)
    return _LOOKUPS[op](col, value)


def _json_bind(col: InstrumentedAttribute[Any]) -> Callable[[Any], Any]:
    """A JSON value bound as the column's JSON type: a bare `"x"` or `1` would otherwise be bound as
    varchar/integer, and `jsonb = varchar` does not exist."""
    return lambda value: literal(value, col.type)


def _table_column(model: type[Any], key: str) -> Column[Any]:
    [col] = inspect(model).column_attrs[key].columns[:1]
    return cast("Column[Any]", col)


def where_clauses(model: type[Any], filters: Sequence[Filter], lookups: Mapping[str, Any]) -> list[Filter]:
    """SQLAlchemy expressions as given, plus checked keyword lookups."""
    for expression in filters:
        if not isinstance(expression, ColumnElement):
            raise InvalidRequestError(f"filters must be SQL expressions, got {type(expression).__name__}")
    return [*filters, *(lookup(model, key, value) for key, value in lookups.items())]


def order_terms(
    model: type[Any], order_by: str | Sequence[str]
) -> list[tuple[InstrumentedAttribute[Any], bool]]:
    """`"-created_at"` style names as (column, descending) pairs, each name checked.

    A leading `-` means descending, an optional `+` ascending; naming a field twice is an error.
    """
    names = [order_by] if isinstance(order_by, str) else list(order_by)
    terms = []
    seen: set[str] = set()
    for raw in names:
        if not isinstance(raw, str):
            raise InvalidRequestError(f"order_by takes field names, got {type(raw).__name__}")
        descending = raw.startswith("-")
        name = raw[1:] if raw[:1] in ("-", "+") else raw
        col = column(model, name)
        if col.key in seen:
            raise InvalidRequestError(f"order_by names {name!r} twice")
        seen.add(col.key)
        terms.append((col, descending))
    return terms


def order_clause(col: InstrumentedAttribute[Any], descending: bool) -> UnaryExpression[Any]:
    return col.desc() if descending else col.asc()
