"""Automatic audit: who changed which row of an audited model, how, written with the change itself.

Every insert, update and delete that a repository makes on an audited model (every seed 003 model but
`AuditLog` itself) also writes `AuditLog` rows, in the same SQL statement (a data-modifying CTE), so the
audit rows commit or roll back with the change and cost no extra round trip:

    with audit_context(user_id="alice", request_id="r-1"):
        await claims.update(claim_id, content="...")

An audit row holds the entity type (`audit_entity(model)`), the entity id (the primary key as text),
the action (`"insert"`, `"update"`, `"delete"`), the actor and metadata of the current
`audit_context`, and `changes` as `{column: [old, new]}` keyed by database column name (so `"metadata"`,
not the attribute `metadata_`), with values as PostgreSQL's `to_jsonb` renders them:

- insert: `[null, new]` for every column the new row has a value in (defaults included);
- update: `[old, new]` for every column whose value changed, without columns the table maintains
  itself on update (`onupdate`, e.g. `updated_at`). An update that changes no value writes no audit row;
- delete: `[old, null]` for every column the deleted row had a value in.

Each column is compared (`IS DISTINCT FROM`) and recorded as one whole value: a changed JSON column
is stored as its whole old and new document, never diffed key by key, so building the record costs a
small constant factor of writing the row, whatever the size of its documents (bench/bench_audit.py).
`created_at` is the time of the write (`clock_timestamp()`).

`audit_context` is a plain `with` block (sync or async code), backed by a context variable: nested blocks
inherit the outer actor and metadata (an inner `user_id` wins, metadata merges), and concurrent asyncio
tasks never see each other's actor.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Literal
from typing import cast as cast_type

from sqlalchemy import (
    CTE,
    Column,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import array as postgresql_array
from sqlalchemy.sql import sqltypes
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import NamedFromClause

from persistence.models import (
    AuditLog,
    Claim,
    ConsensusDecision,
    ModelCheckpoint,
    ServiceHealth,
    TrainingData,
    VerificationResult,
)

AuditAction = Literal["insert", "update", "delete"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class AuditActor:
    """Who is acting, and what to record with every audit row (request id, reason, ...)."""

    user_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


_ANONYMOUS = AuditActor()
_actor: ContextVar[AuditActor | None] = ContextVar("persistence_audit_actor", default=None)


def current_audit() -> AuditActor:
    """The actor of the innermost `audit_context` of this task (an anonymous one outside any)."""
    return _actor.get() or _ANONYMOUS


class audit_context:
    """`with audit_context(user_id="alice", request_id="r-1"):` sets the actor for the writes inside.

    Nested blocks inherit: a `user_id` given here overrides the outer one (None keeps it), and the
    metadata merges into the outer metadata (keys given here win). Values must be JSON serializable.
    """

    __slots__ = ("_metadata", "_tokens", "_user_id")

    def __init__(self, user_id: str | None = None, **metadata: Any) -> None:
        self._user_id = user_id
        self._metadata = metadata
        self._tokens: list[Token[AuditActor | None]] = []

    def __enter__(self) -> AuditActor:
        outer = current_audit()
        actor = AuditActor(
            user_id=self._user_id if self._user_id is not None else outer.user_id,
            metadata=MappingProxyType({**outer.metadata, **self._metadata})
            if self._metadata
            else outer.metadata,
        )
        self._tokens.append(_actor.set(actor))
        return actor

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _actor.reset(self._tokens.pop())


# -- the registry -----------------------------------------------------------------------------------

_ENTITY_TYPES: dict[type[Any], str] = {
    Claim: "claim",
    VerificationResult: "verification_result",
    ConsensusDecision: "consensus_decision",
    TrainingData: "training_data",
    ModelCheckpoint: "model_checkpoint",
    ServiceHealth: "service_health",
}

_APPEND_ONLY: set[type[Any]] = {AuditLog}
_ENTITY_TYPE_LENGTH = 50  # audit_log.entity_type is VARCHAR(50)


def audit_entity(model: type[Any]) -> str | None:
    """The `entity_type` recorded for writes to `model`, or None when the model is not audited."""
    return _ENTITY_TYPES.get(model)


def register_audited(model: type[Any], entity_type: str) -> None:
    """Audit writes to another model (call once, at import time, before its repository is used)."""
    if model in _APPEND_ONLY:
        raise ValueError(f"{model.__name__} is append-only and cannot be audited")
    if len(entity_type) > _ENTITY_TYPE_LENGTH:
        raise ValueError(f"entity type {entity_type!r} is too long")
    _ENTITY_TYPES[model] = entity_type


def is_append_only(model: type[Any]) -> bool:
    """True for models whose rows are never updated or deleted through a repository (`AuditLog`)."""
    return model in _APPEND_ONLY


# -- SQL ---------------------------------------------------------------------------------------------

AUDIT_USER_PARAM = "_audit_user"
AUDIT_METADATA_PARAM = "_audit_metadata"

_AUDIT_COLUMNS = ["entity_type", "entity_id", "action", "user_id", "changes", "metadata"]
# Aliases of the new and the old row.
_NEW, _OLD = "n", "o"


def audit_params() -> dict[str, Any]:
    """The bound values of the current actor, for a statement built with `audit_cte`."""
    actor = current_audit()
    return {AUDIT_USER_PARAM: actor.user_id, AUDIT_METADATA_PARAM: dict(actor.metadata) or None}


# The changes of one row as `{column: [old, new]}`, built column by column from the new row (alias `n`)
# and/or the old row (alias `o`): each column is compared and rendered as one whole value (a JSON
# document is one value, never taken apart key by key), so the cost is linear in the size of the row.
# `jsonb_object_agg` is not used: on PostgreSQL 15 its cost grows with the square of the size of the
# values it aggregates (a 400k-key document took 14 s); `jsonb_build_object` and `jsonb - text[]` are
# single passes. Column names are rendered as SQL string constants: they come from the table
# definition, never from a caller.
_MAX_PAIRS = 50  # jsonb_build_object takes at most 100 arguments


def _name(column: Column[Any]) -> ColumnElement[str]:
    return literal_column("'" + column.name.replace("'", "''") + "'", Text)


def _audited_columns(table: Table, ignored: Collection[str] = ()) -> list[Column[Any]]:
    return [c for c in table.columns if isinstance(c, Column) and c.name not in ignored]


def _comparable(value: ColumnElement[Any], column: Column[Any]) -> ColumnElement[Any]:
    """The value as compared: `json` (text) has no equality operator, so it is compared as `jsonb`."""
    if isinstance(column.type, sqltypes.JSON) and not isinstance(column.type, JSONB):
        return cast(value, JSONB)
    return value


def _has_value(value: ColumnElement[Any], column: Column[Any]) -> ColumnElement[bool]:
    """Not SQL NULL (nor JSON `null` in a JSON column): such columns are left out of an insert or a delete."""
    present = value.is_not(None)
    if isinstance(column.type, sqltypes.JSON):
        return and_(present, _comparable(value, column) != literal_column("'null'::jsonb", JSONB))
    return present


def _pair(column: Column[Any], old: ColumnElement[Any], new: ColumnElement[Any]) -> ColumnElement[Any]:
    """`[old, new]`. As an SQL array, `jsonb_build_object` renders the two values straight into the
    object it builds (one pass over a large value); `jsonb_build_array` would build a JSON array first
    and copy it into the object again. An array column's two values would make a 2-D array instead."""
    if isinstance(column.type, sqltypes.ARRAY):
        return func.jsonb_build_array(old, new, type_=JSONB)
    return postgresql_array([old, new], type_=column.type)


def _changes(
    columns: list[Column[Any]],
    differs: Callable[[Column[Any]], ColumnElement[bool]],
    entry: Callable[[Column[Any]], ColumnElement[Any]],
) -> ColumnElement[Any]:
    """`{name: entry}` for every column where `differs`, `{}` when none does.

    Unchanged columns are first built as JSON null (costs nothing) and then removed by name in one
    pass (`- text[]`, which removes top-level keys only: a null inside a stored document stays).
    """
    parts: list[ColumnElement[Any]] = []
    for start in range(0, len(columns), _MAX_PAIRS):
        pairs: list[ColumnElement[Any]] = []
        for column in columns[start : start + _MAX_PAIRS]:
            pairs += [_name(column), case((differs(column), entry(column)))]
        parts.append(func.jsonb_build_object(*pairs, type_=JSONB))
    built = parts[0]
    for part in parts[1:]:
        built = built.op("||", return_type=JSONB)(part)
    unchanged = postgresql_array([case((differs(column), null()), else_=_name(column)) for column in columns])
    return built.op("-", return_type=JSONB)(func.array_remove(unchanged, null(), type_=ARRAY(Text())))


def _inserted_changes(table: Table, n: NamedFromClause) -> ColumnElement[Any]:
    """`[null, new]` for every column the new row has a value in."""
    return _changes(
        _audited_columns(table),
        lambda c: _has_value(n.c[c.key], c),
        lambda c: _pair(c, null(), n.c[c.key]),
    )


def _deleted_changes(table: Table, o: NamedFromClause) -> ColumnElement[Any]:
    """`[old, null]` for every column the old row had a value in."""
    return _changes(
        _audited_columns(table),
        lambda c: _has_value(o.c[c.key], c),
        lambda c: _pair(c, o.c[c.key], null()),
    )


def _updated_changes(table: Table, n: NamedFromClause, o: NamedFromClause) -> ColumnElement[Any]:
    """`[old, new]` for changed columns only; NULL when nothing changed (ignoring columns the table
    maintains itself on update, such as `updated_at`)."""
    ignored = {c.name for c in table.columns if isinstance(c, Column) and c.onupdate is not None}
    changes = _changes(
        _audited_columns(table, ignored),
        lambda c: _comparable(o.c[c.key], c).is_distinct_from(_comparable(n.c[c.key], c)),
        lambda c: _pair(c, o.c[c.key], n.c[c.key]),
    )
    return func.nullif(changes, literal_column("'{}'::jsonb", JSONB), type_=JSONB)


def audit_cte(
    model: type[Any], *, new: CTE | None = None, old: CTE | None = None, upsert: bool = False
) -> CTE:
    """The `INSERT INTO audit_log ... SELECT` CTE that audits one write statement's rows.

    - `new` only: the rows an INSERT returned (action insert);
    - `old` only: the rows a DELETE returned (action delete);
    - both: an UPDATE's returned rows joined on the primary key to the rows as they were before it
      (`SELECT ... FOR UPDATE` in the same statement); rows whose values did not change are skipped;
    - both with `upsert=True`: an `INSERT ... ON CONFLICT DO UPDATE`'s returned rows; a row with no
      old row was inserted, the others were updated.

    Both CTEs must return the table's columns. The statement needs `audit_params()`.
    """
    entity_type = audit_entity(model)
    if entity_type is None:
        raise ValueError(f"{model.__name__} is not audited")
    table = cast_type(Table, model.__table__)
    [pk_column] = table.primary_key.columns
    pk = pk_column.name
    user = bindparam(AUDIT_USER_PARAM, type_=String(), required=True)
    metadata = bindparam(AUDIT_METADATA_PARAM, type_=JSONB(none_as_null=True), required=True)
    entity = literal(entity_type, String())
    if new is not None and old is None:
        n = new.alias(_NEW)
        rows = select(
            entity,
            cast(n.c[pk], Text),
            literal("insert", String()),
            user,
            _inserted_changes(table, n),
            metadata,
        ).select_from(n)
    elif new is None and old is not None:
        o = old.alias(_OLD)
        rows = select(
            entity,
            cast(o.c[pk], Text),
            literal("delete", String()),
            user,
            _deleted_changes(table, o),
            metadata,
        ).select_from(o)
    elif new is not None and old is not None:
        n, o = new.alias(_NEW), old.alias(_OLD)
        entity_id = cast(n.c[pk], Text).label("entity_id")
        if upsert:
            inserted = o.c[pk].is_(None)
            diff = (
                select(
                    entity_id,
                    case((inserted, literal("insert", String())), else_=literal("update", String())).label(
                        "action"
                    ),
                    case((inserted, _inserted_changes(table, n)), else_=_updated_changes(table, n, o)).label(
                        "changes"
                    ),
                )
                .select_from(n.outerjoin(o, o.c[pk] == n.c[pk]))
                .offset(0)  # a fence: a flattened "d" would compute every row's changes twice
                .subquery("d")
            )
        else:
            diff = (
                select(
                    entity_id,
                    literal("update", String()).label("action"),
                    _updated_changes(table, n, o).label("changes"),
                )
                .select_from(n.join(o, o.c[pk] == n.c[pk]))
                .offset(0)  # a fence: a flattened "d" would compute every row's changes twice
                .subquery("d")
            )
        rows = select(entity, diff.c.entity_id, diff.c.action, user, diff.c.changes, metadata).where(
            diff.c.changes.is_not(None)
        )
    else:
        raise ValueError("audit_cte needs the new rows, the old rows, or both")
    audit_table = cast_type(Table, AuditLog.__table__)
    return insert(audit_table).from_select(_AUDIT_COLUMNS, rows, include_defaults=False).cte("_w_audit")
