"""Caller-supplied field names and lookups, checked against the model before any SQL is built.

Two ways to filter, both typed: SQLAlchemy expressions (`VerificationResult.confidence >= 0.9`), or
Django-style keyword lookups for names that arrive as data (`confidence__gte=0.9`). A name that is not
a mapped column of the model raises `InvalidRequestError` and never reaches SQL; values are always
bound parameters.

Lookups: `field` / `field__eq`, `__ne`, `__lt`, `__lte`, `__gt`, `__gte`, `__in`, `__not_in`,
`__isnull` (True/False), `__contains` (JSONB `@>`). `__ne`, `__in` and `__not_in` follow SQL: a row
whose field is NULL matches none of them (use `__isnull`).

`__in` / `__not_in` bind the whole list as one array parameter (`= ANY($1)` / `<> ALL($1)`): one
prepared statement whatever the list length, and no limit of 32767 parameters per statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, ColumnElement, UnaryExpression, all_, any_, bindparam, inspect
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import InstrumentedAttribute

from persistence.errors import InvalidRequestError

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


def column(model: type[Any], name: str) -> InstrumentedAttribute[Any]:
    """The mapped column attribute `name` of `model`, or `InvalidRequestError`."""
    mapper = inspect(model)
    if not isinstance(name, str) or name not in mapper.column_attrs:
        known = ", ".join(sorted(mapper.column_attrs.keys()))
        raise InvalidRequestError(f"{model.__name__} has no field {name!r}; fields: {known}")
    attr: InstrumentedAttribute[Any] = getattr(model, name)
    return attr


def lookup(model: type[Any], key: str, value: Any) -> ColumnElement[bool]:
    """One keyword lookup (`confidence__gte=0.9`) as a SQL expression with a bound value."""
    # Split at the last `__`, so a field whose name ends in `_` works (`metadata___contains`).
    name, sep, op = key.rpartition("__")
    if not sep:
        name, op = key, "eq"
    if op not in _LOOKUPS:
        raise InvalidRequestError(f"unknown lookup {op!r} in {key!r}; lookups: {', '.join(_LOOKUPS)}")
    col = column(model, name)
    if op in ("in", "not_in") and (isinstance(value, str | bytes) or not isinstance(value, Iterable)):
        raise InvalidRequestError(f"{key!r} needs a list of values, got {type(value).__name__}")
    if op == "isnull" and not isinstance(value, bool):
        raise InvalidRequestError(f"{key!r} needs True or False")
    if op == "contains" and not isinstance(col.type, JSONB):
        raise InvalidRequestError(f"{key!r}: __contains works on JSONB fields only")
    return _LOOKUPS[op](col, value)


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
        if name in seen:
            raise InvalidRequestError(f"order_by names {name!r} twice")
        seen.add(name)
        terms.append((col, descending))
    return terms


def order_clause(col: InstrumentedAttribute[Any], descending: bool) -> UnaryExpression[Any]:
    return col.desc() if descending else col.asc()
