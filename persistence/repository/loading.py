"""Relationships a read loads with its rows: `await claims.get(id, load=("training_examples",))`.

A repository read returns rows whose session is gone (outside a block) or that live in an async
session that cannot do lazy IO on attribute access (inside one), so a relationship is either loaded
with the rows or not available at all:

- `load=` names relationships (`"training_examples"`, a dotted path `"training_examples.claim"`, or
  the attribute `Claim.training_examples`); each name is checked against the model's relationships
  before any SQL (`InvalidRequestError` listing them). Each is loaded by `selectinload`: one extra
  `SELECT ... WHERE key = ANY(...)` per relationship per query, whatever the number of rows.
- Every relationship not asked for is `lazy="raise"` on the returned rows (`raiseload("*")`, also on
  the related rows): touching one raises `sqlalchemy.exc.InvalidRequestError` ("... is not available
  due to lazy='raise'") at once, instead of a `DetachedInstanceError` or hidden IO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper, QueryableAttribute, RelationshipProperty, raiseload, selectinload
from sqlalchemy.orm.strategy_options import _AbstractLoad
from sqlalchemy.sql.base import ExecutableOption

from persistence.errors import InvalidRequestError
from persistence.repository.coerce import describe

Relationship = str | QueryableAttribute[Any]
"""A relationship to load: its name (`"training_examples"`, dotted for a path) or its attribute."""

Load = Relationship | Sequence[Relationship]
"""The `load=` argument of the reads: one relationship or several."""

_RAISE_ALL: tuple[ExecutableOption, ...] = (raiseload("*"),)
_OPTIONS: dict[tuple[type[Any], tuple[str, ...]], tuple[ExecutableOption, ...]] = {}
_MAX_OPTIONS = 1024


def load_options(model: type[Any], load: object) -> tuple[ExecutableOption, ...]:
    """The loader options of a read of `model`: `load` selectin-loaded, every other relationship raising."""
    if isinstance(load, tuple) and not load:
        return _RAISE_ALL
    paths = _paths(model, load)
    options = _OPTIONS.get((model, paths))
    if options is None:
        options = _build(model, paths)  # raises on unknown names: those are never cached
        if len(_OPTIONS) >= _MAX_OPTIONS:
            _OPTIONS.clear()
        _OPTIONS[(model, paths)] = options
    return options


def _paths(model: type[Any], load: object) -> tuple[str, ...]:
    items: Sequence[object]
    if isinstance(load, str | QueryableAttribute):
        items = (load,)
    elif isinstance(load, Sequence) and not isinstance(load, bytes | bytearray):
        items = load
    else:
        raise InvalidRequestError(f"load takes relationship names or attributes, got {describe(load)}")
    paths: list[str] = []
    for item in items:
        if isinstance(item, QueryableAttribute):
            if not isinstance(item.property, RelationshipProperty) or not _is_mapper_of(item.parent, model):
                raise InvalidRequestError(f"load: {item} is not a relationship of {model.__name__}")
            item = item.key
        if not isinstance(item, str) or not item:
            raise InvalidRequestError(f"load takes relationship names or attributes, got {describe(item)}")
        paths.append(item)
    return tuple(dict.fromkeys(paths))


def _is_mapper_of(parent: object, model: type[Any]) -> bool:
    return isinstance(parent, Mapper) and issubclass(model, parent.class_)


def _build(model: type[Any], paths: tuple[str, ...]) -> tuple[ExecutableOption, ...]:
    options: list[ExecutableOption] = []
    for path in paths:
        mapper: Mapper[Any] = inspect(model)
        option: _AbstractLoad | None = None
        for part in path.split("."):
            relationship = mapper.relationships.get(part)
            if relationship is None:
                known = ", ".join(sorted(mapper.relationships.keys())) or "none"
                raise InvalidRequestError(
                    f"load: {mapper.class_.__name__} has no relationship {part!r}; relationships: {known}"
                )
            attribute = relationship.class_attribute
            option = selectinload(attribute) if option is None else option.selectinload(attribute)
            options.append(option)
            # What the related rows do not load raises too, at every level of the path.
            options.append(option.raiseload("*"))
            mapper = relationship.mapper
    options.extend(_RAISE_ALL)
    return tuple(options)
