"""The read side of a repository: get, get_many, list, keyset pages, count, exists and stream.

Every result is an ORM instance of the repository's model, as the database has it: inside a
`transaction()` block a read sees the block's own writes, and refreshes (`populate_existing`) an
instance of the same row already in the block's session. Outside a block each call has a fresh
session, so that refresh (which costs up to a third more per row on large results) is skipped.

Field names that callers pass (`order_by`, keyword lookups) are checked against the model before any
SQL is built (`persistence.repository.filters`); values are always bound parameters.

Keyset pages
------------
`page()` orders by the requested fields and then always by the primary key (in the direction of the
last field), so rows that tie on the sort fields are never skipped or repeated. The condition "after the cursor row" is a row-value
comparison `(a, b, id) > (:a, :b, :id)` when every sort field is NOT NULL and all go the same way (it
uses a matching index directly), and the expanded form `a > :a OR (a = :a AND (b < :b OR ...))`
otherwise, with a leading `a >= :a` bound so an index on the first field still narrows the scan.

NULLs sort the way PostgreSQL sorts them by default: greater than every value, so last in an
ascending and first in a descending order. No `NULLS FIRST/LAST` is emitted, so ordinary btree
indexes serve both directions, and the keyset condition treats a NULL cursor value accordingly
(`a IS NULL` for ties, `a IS NOT NULL` for "after NULL" when descending). Nullable sort fields are
therefore fully supported; no row is skipped or repeated.

The cursor is opaque: URL-safe base64 (no padding) of an 8-byte checksum followed by compact JSON
`[version, order signature, [sort values..., pk]]`. The order signature is a hash of the table and
the normalized `order_by`, so a cursor from another order or model is refused. Values are encoded per
column type and decoded back to the same type (tz-aware `datetime`, `date`, `UUID`, `Decimal`,
`float`, `int`, `str`, `bool`); a cursor that does not decode exactly, fails its checksum or does not
fit the order raises `InvalidRequestError` before any SQL runs. The checksum is not a signature (it
has no secret): a crafted cursor can only choose where a page starts, since every value is type
checked and bound.

Sorting a page by a field whose values cannot be put in a cursor (JSONB, arrays) raises
`InvalidRequestError`; `list()` may order by any column.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Generic, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    Executable,
    Select,
    UnaryExpression,
    and_,
    any_,
    bindparam,
    func,
    inspect,
    literal,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute

from persistence.errors import InvalidRequestError, NotFoundError, ValidationError
from persistence.repository.base import ModelT, RepositoryBase
from persistence.repository.coerce import check_value, describe, integer_bound
from persistence.repository.filters import Filter, order_clause, order_terms, where_clauses
from persistence.repository.retry import retry_read
from persistence.transaction import in_transaction

MAX_LIMIT = 10_000
"""The largest `limit` (list, page) and `batch_size` (stream) a caller may ask for."""

_MAX_OFFSET = 2**63 - 1
_MAX_CURSOR_CHARS = 4096
_CURSOR_VERSION = 1
_CHECKSUM_BYTES = 8
_CHECKSUM_KEY = b"persistence.repository.cursor"


@dataclass(frozen=True, slots=True)
class Page(Generic[ModelT]):
    """One keyset page: `items`, and the cursor of the next page (None on the last page)."""

    items: list[ModelT]
    next_cursor: str | None


class Reads(RepositoryBase[ModelT]):
    """Typed reads of `model`. Outside a `transaction()` block each call is one short transaction."""

    max_ids_per_query: ClassVar[int] = 10_000
    """`get_many` sends at most this many ids per `= ANY(:ids)` query (all in one transaction)."""

    async def get(self, id: Any) -> ModelT:
        """The row with primary key `id`, or `NotFoundError(entity, key)`."""
        found = await self.get_or_none(id)
        if found is None:
            raise NotFoundError(self.model.__name__, _model_info(self.model).coerce_key(id))
        return found

    async def get_or_none(self, id: Any) -> ModelT | None:
        """The row with primary key `id`, or None. A malformed key raises `InvalidRequestError`."""
        info = _model_info(self.model)
        key = info.coerce_key(id)
        found = await self._fetch(info.get_stmt, [{"key": key}])
        return found[0] if found else None

    async def get_many(self, ids: Sequence[Any]) -> builtins.list[ModelT]:
        """The rows with these primary keys, in the order of `ids`; missing ids are skipped and a
        repeated id is returned once. One `= ANY(:ids)` query per `max_ids_per_query` ids."""
        if isinstance(ids, str | bytes | Mapping) or not isinstance(ids, Iterable):
            raise InvalidRequestError(f"get_many takes a sequence of ids, got {_short(ids)}")
        info = _model_info(self.model)
        keys = builtins.list(dict.fromkeys(info.coerce_key(id_) for id_ in ids))
        if not keys:
            return []
        step = self.max_ids_per_query
        chunks = [{"keys": keys[start : start + step]} for start in range(0, len(keys), step)]
        found = {getattr(row, info.pk_key): row for row in await self._fetch(info.get_many_stmt, chunks)}
        return [found[key] for key in keys if key in found]

    async def list(
        self,
        *filters: Filter,
        order_by: str | Sequence[str] = (),
        limit: int | None = None,
        offset: int = 0,
        **lookups: Any,
    ) -> builtins.list[ModelT]:
        """Rows matching every filter and lookup (`confidence__gte=0.9`, `claim_id__in=[...]`).

        With `order_by` the primary key is appended as a tiebreaker, so `limit`/`offset` windows are
        stable; without it the order is whatever PostgreSQL returns. Prefer `page()` for paging.
        """
        if limit is not None:
            _check_count(limit, "limit")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= _MAX_OFFSET:
            raise InvalidRequestError(f"offset must be an integer >= 0, got {_short(offset)}")
        clauses = where_clauses(self.model, filters, lookups)
        stmt = self._select(clauses)
        order = _order_key(order_by)
        if order:
            stmt = stmt.order_by(*_sort_plan(self.model, order).clauses)
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        return await self._fetch(stmt)

    async def page(
        self,
        *filters: Filter,
        order_by: str | Sequence[str] = (),
        limit: int = 50,
        after: str | None = None,
        **lookups: Any,
    ) -> Page[ModelT]:
        """One keyset page of at most `limit` rows after the cursor `after` (None: the first page).

        Pass `page.next_cursor` back as `after` with the same `order_by` (and filters) for the next
        page. Ordering ends with the primary key; see the module docstring for NULLs and the cursor.
        """
        _check_count(limit, "limit")
        plan = _sort_plan(self.model, _order_key(order_by))
        plan.require_codecs()
        clauses = where_clauses(self.model, filters, lookups)
        if after is not None:
            clauses.append(plan.after(plan.decode(after)))
        stmt = self._select(clauses).order_by(*plan.clauses).limit(limit + 1)
        rows = await self._fetch(stmt)
        if len(rows) <= limit:
            return Page(rows, None)
        del rows[limit:]
        return Page(rows, plan.encode(rows[-1]))

    async def count(self, *filters: Filter, **lookups: Any) -> int:
        """How many rows match."""
        clauses = where_clauses(self.model, filters, lookups)
        stmt = select(func.count()).select_from(self.model).where(*clauses)
        return int(await self._value(stmt) or 0)

    async def exists(self, *filters: Filter, **lookups: Any) -> bool:
        """Whether any row matches: `SELECT EXISTS (...)`, which stops at the first row."""
        clauses = where_clauses(self.model, filters, lookups)
        stmt = select(select(literal_column("1")).select_from(self.model).where(*clauses).exists())
        return bool(await self._value(stmt))

    def stream(
        self,
        *filters: Filter,
        order_by: str | Sequence[str] = (),
        batch_size: int = 1000,
        **lookups: Any,
    ) -> AsyncGenerator[ModelT, None]:
        """Every matching row, in order, fetched `batch_size` rows per query: `async for row in repo.stream()`.

        Built on keyset batches rather than a server-side cursor. Each batch is one ordinary query
        (ordered by `order_by`, then the primary key, "after" the last row of the previous batch),
        fully fetched before its rows are handed out, so nothing is held open while the caller works:
        outside a `transaction()` block each batch is its own short transaction and its connection
        goes straight back to the pool, and a consumer that stops early (`break`, an exception, a
        generator that is never closed) leaks no connection, cursor or transaction. A server-side
        cursor would pin a pooled connection and an open transaction (holding back VACUUM) for as
        long as the consumer takes, and its release would depend on the generator being closed.

        The price: outside a block, batches are separate snapshots, so rows changed concurrently may
        be seen in their old or new state (each row still at most once per position in the order).
        For one consistent snapshot, iterate inside `transaction(isolation_level="REPEATABLE READ")`.
        Arguments are checked when `stream()` is called, before iteration starts.
        """
        _check_count(batch_size, "batch_size")
        plan = _sort_plan(self.model, _order_key(order_by))
        clauses = where_clauses(self.model, filters, lookups)
        return self._stream(clauses, plan, batch_size)

    async def _stream(
        self, clauses: builtins.list[Filter], plan: _SortPlan, batch_size: int
    ) -> AsyncGenerator[ModelT, None]:
        base = self._select(clauses).order_by(*plan.clauses).limit(batch_size)
        stmt = base
        while True:
            batch = await self._fetch(stmt)
            if len(batch) < batch_size:
                for item in batch:
                    yield item
                return
            # Taken before the rows are handed out: the caller may change them.
            last = [getattr(batch[-1], key.key) for key in plan.keys]
            for item in batch:
                yield item
            stmt = base.where(plan.after(last))

    # The reads' only I/O: arguments are checked and statements built before, once, so the one retry
    # after a lost connection (`retry_read`, outside a block) re-runs exactly the same SQL.
    @retry_read
    async def _fetch(
        self, stmt: Executable, params: Sequence[Mapping[str, Any]] = ({},)
    ) -> builtins.list[ModelT]:
        """The instances `stmt` loads for each parameter set, in one session."""
        options = _load_options()
        rows: builtins.list[ModelT] = []
        async with self.session() as session:
            for each in params:
                rows.extend(await session.scalars(stmt, each, execution_options=options))
        return rows

    @retry_read
    async def _value(self, stmt: Executable) -> Any:
        async with self.connection() as conn:
            return await conn.scalar(stmt)

    def _select(self, clauses: Sequence[Filter]) -> Select[Any]:
        return select(self.model).where(*clauses)


_REFRESH: dict[str, Any] = {"populate_existing": True}
_PLAIN: dict[str, Any] = {}


def _load_options() -> dict[str, Any]:
    """Refresh identity-mapped instances only where there can be any: in a block's shared session."""
    return _REFRESH if in_transaction() else _PLAIN


# -- validation ---------------------------------------------------------------------------------------


def _check_count(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise InvalidRequestError(f"{name} must be an integer from 1 to {MAX_LIMIT}, got {_short(value)}")


def _order_key(order_by: object) -> tuple[str, ...]:
    """`order_by` as a hashable tuple of non-empty strings (the cache key of its plan)."""
    if isinstance(order_by, str) and order_by.lstrip("-"):
        return (order_by,)
    if (
        isinstance(order_by, Sequence)
        and not isinstance(order_by, str | bytes | bytearray)
        and all(isinstance(name, str) and name.lstrip("-") for name in order_by)
    ):
        return tuple(order_by)
    raise InvalidRequestError(f"order_by takes a field name or a sequence of them, got {_short(order_by)}")


def _short(value: object) -> str:
    return describe(value)


# -- per-model statements and keys ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ModelInfo:
    pk: InstrumentedAttribute[Any]
    pk_key: str
    coerce_key: Callable[[Any], Any]
    get_stmt: Select[Any]
    get_many_stmt: Select[Any]


_MODEL_INFOS: dict[type[Any], _ModelInfo] = {}


def _model_info(model: type[Any]) -> _ModelInfo:
    """Built once per model: prebuilt statements also keep their SQL compilation cache key."""
    info = _MODEL_INFOS.get(model)
    if info is None:
        info = _MODEL_INFOS[model] = _build_model_info(model)
    return info


def _build_model_info(model: type[Any]) -> _ModelInfo:
    mapper = inspect(model)
    [pk_column] = mapper.primary_key
    pk_key = mapper.get_property_by_column(pk_column).key
    pk: InstrumentedAttribute[Any] = getattr(model, pk_key)
    loaded = select(model)
    return _ModelInfo(
        pk=pk,
        pk_key=pk_key,
        coerce_key=_key_coercer(model.__name__, pk),
        get_stmt=loaded.where(pk == bindparam("key", type_=pk.type)),
        get_many_stmt=loaded.where(pk == any_(bindparam("keys", type_=ARRAY(pk.type)))),
    )


def _key_coercer(entity: str, pk: InstrumentedAttribute[Any]) -> Callable[[Any], Any]:
    """Checks a primary-key value in Python, so a malformed id is a clear error, not a driver error."""
    python_type = _python_type(pk)
    if python_type is uuid.UUID:

        def as_uuid(key: Any) -> Any:
            if isinstance(key, uuid.UUID):
                return key
            if isinstance(key, str):
                try:
                    return uuid.UUID(key)
                except ValueError:
                    pass
            raise InvalidRequestError(f"id: {entity} keys are UUIDs, got {_short(key)}")

        return as_uuid
    if python_type is int:
        bound = integer_bound(pk.type)

        def as_int(key: Any) -> Any:
            if isinstance(key, int) and not isinstance(key, bool):
                if -bound <= key < bound:
                    return key
                raise InvalidRequestError(f"id: out of range for {entity} keys ({-bound} .. {bound - 1})")
            raise InvalidRequestError(f"id: {entity} keys are integers, got {_short(key)}")

        return as_int
    return lambda key: key


def _python_type(attr: InstrumentedAttribute[Any]) -> type[Any] | None:
    try:
        python_type: type[Any] = attr.type.python_type
    except NotImplementedError:
        return None
    return python_type


# -- cursor values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Codec:
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]  # raises ValueError / TypeError / InvalidOperation on bad input


def _expect(kind: type[Any], value: Any) -> Any:
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}")
    return value


def _decode_int(value: Any) -> int:
    number: int = _expect(int, value)
    if not -(2**63) <= number < 2**63:
        raise ValueError("integer out of range")
    return number


def _decode_str(value: Any) -> str:
    text: str = _expect(str, value)
    if "\x00" in text:
        raise ValueError("NUL in text")
    return text


def _decode_decimal(value: Any) -> Decimal:
    number = Decimal(_expect(str, value))
    if number.is_snan():
        raise ValueError("signalling NaN")
    return number


def _datetime_codec(aware: bool) -> _Codec:
    def decode(value: Any) -> datetime:
        parsed = datetime.fromisoformat(_expect(str, value))
        if (parsed.tzinfo is not None) != aware:
            raise ValueError("time zone does not match the column")
        return parsed

    return _Codec(lambda v: v.isoformat(), decode)


_CODECS: dict[type[Any], _Codec] = {
    bool: _Codec(bool, lambda v: _expect(bool, v)),
    int: _Codec(int, _decode_int),
    str: _Codec(str, _decode_str),
    float: _Codec(lambda v: repr(float(v)), lambda v: float(_expect(str, v))),
    Decimal: _Codec(str, _decode_decimal),
    uuid.UUID: _Codec(str, lambda v: uuid.UUID(_expect(str, v))),
    date: _Codec(lambda v: v.isoformat(), lambda v: date.fromisoformat(_expect(str, v))),
}


def _codec_for(attr: InstrumentedAttribute[Any]) -> _Codec | None:
    python_type = _python_type(attr)
    if python_type is datetime:
        return _datetime_codec(bool(getattr(attr.type, "timezone", False)))
    return _CODECS.get(python_type) if python_type is not None else None


# -- sort plans ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SortKey:
    attr: InstrumentedAttribute[Any]
    key: str
    descending: bool
    nullable: bool
    codec: _Codec | None
    column: Column[Any]

    def beyond(self, value: Any) -> ColumnElement[bool] | None:
        """Rows strictly after `value` in this key's order (NULL sorts above every value); None: none."""
        if self.descending:
            return self.attr.is_not(None) if value is None else self.attr < self._bind(value)
        if value is None:
            return None
        after = self.attr > self._bind(value)
        return or_(after, self.attr.is_(None)) if self.nullable else after

    def tie(self, value: Any) -> ColumnElement[bool]:
        return self.attr.is_(None) if value is None else self.attr == self._bind(value)

    def _bind(self, value: Any) -> ColumnElement[Any]:
        return literal(value, self.attr.type)


@dataclass(frozen=True, slots=True)
class _SortPlan:
    entity: str
    keys: tuple[_SortKey, ...]
    clauses: tuple[UnaryExpression[Any], ...]
    signature: str
    uniform: bool  # every key NOT NULL and one direction: a row-value comparison suffices

    def require_codecs(self) -> None:
        for key in self.keys:
            if key.codec is None:
                raise InvalidRequestError(
                    f"cannot page {self.entity} by {key.key!r}: its values ({key.attr.type}) cannot be "
                    "put in a cursor; order by another field or use list()"
                )

    def after(self, values: Sequence[Any]) -> ColumnElement[bool]:
        """Rows after the row whose sort values are `values`, in this plan's order."""
        keys = self.keys
        if self.uniform:
            if len(keys) == 1:
                return cast("ColumnElement[bool]", keys[0].beyond(values[0]))
            row = tuple_(*(key.attr for key in keys))
            bound = tuple_(*(key._bind(value) for key, value in zip(keys, values, strict=True)))
            return row < bound if keys[0].descending else row > bound
        branches: list[ColumnElement[bool]] = []
        ties: list[ColumnElement[bool]] = []
        for key, value in zip(keys, values, strict=True):
            beyond = key.beyond(value)
            if beyond is not None:
                branches.append(and_(*ties, beyond) if ties else beyond)
            ties.append(key.tie(value))
        condition = or_(*branches)  # never empty: the primary key is last and NOT NULL
        first, value = keys[0], values[0]
        if not first.nullable:  # a plain range on the first key lets its index narrow the scan
            bind = first._bind(value)
            condition = and_(first.attr <= bind if first.descending else first.attr >= bind, condition)
        return condition

    def encode(self, item: Any) -> str:
        values = []
        for key in self.keys:
            value = getattr(item, key.key)
            values.append(None if value is None else cast("_Codec", key.codec).encode(value))
        data = json.dumps([_CURSOR_VERSION, self.signature, values], separators=(",", ":")).encode()
        token = base64.urlsafe_b64encode(_checksum(data) + data)
        return token.rstrip(b"=").decode("ascii")

    def decode(self, cursor: object) -> builtins.list[Any]:
        """The sort values in `cursor`, typed like their columns, or `InvalidRequestError`."""
        invalid = InvalidRequestError(
            f"after: invalid cursor for this {self.entity} page (tampered, truncated, or from another order_by)"
        )
        if not isinstance(cursor, str) or not cursor or len(cursor) > _MAX_CURSOR_CHARS:
            raise invalid
        try:
            raw = cursor.encode("ascii")
            token = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
            check, data = token[:_CHECKSUM_BYTES], token[_CHECKSUM_BYTES:]
            if not hmac.compare_digest(check, _checksum(data)):
                raise invalid
            version, signature, values = json.loads(data)
            if version != _CURSOR_VERSION or signature != self.signature:
                raise invalid
            if type(values) is not builtins.list or len(values) != len(self.keys):
                raise invalid
            decoded: builtins.list[Any] = []
            for key, value in zip(self.keys, values, strict=True):
                if value is None:
                    if not key.nullable:
                        raise invalid
                    decoded.append(None)
                else:
                    # Also within the column's range (a crafted int4 key beyond it, datetime.max).
                    typed = cast("_Codec", key.codec).decode(value)
                    decoded.append(check_value(self.entity, key.key, key.column, typed, filtering=True))
        except ValidationError as exc:
            raise invalid from exc
        except InvalidRequestError:
            raise
        except (ValueError, TypeError, InvalidOperation, binascii.Error, RecursionError) as exc:
            raise invalid from exc
        return decoded


def _checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_CHECKSUM_BYTES, key=_CHECKSUM_KEY).digest()


_SORT_PLANS: dict[tuple[type[Any], tuple[str, ...]], _SortPlan] = {}
_MAX_SORT_PLANS = 1024


def _sort_plan(model: type[Any], order_by: tuple[str, ...]) -> _SortPlan:
    """The checked order of `order_by`, ending with the primary key (cached per model and order)."""
    plan = _SORT_PLANS.get((model, order_by))
    if plan is None:
        plan = _build_sort_plan(model, order_by)  # raises on unknown names: those are never cached
        if len(_SORT_PLANS) >= _MAX_SORT_PLANS:
            _SORT_PLANS.clear()
        _SORT_PLANS[(model, order_by)] = plan
    return plan


def _build_sort_plan(model: type[Any], order_by: tuple[str, ...]) -> _SortPlan:
    """Names after the primary key are dropped: the key is unique, so they could never matter."""
    info = _model_info(model)
    mapper = inspect(model)
    keys: list[_SortKey] = []
    for attr, descending in order_terms(model, order_by):
        [col] = mapper.column_attrs[attr.key].columns
        keys.append(_SortKey(attr, attr.key, descending, bool(col.nullable), _codec_for(attr), col))
        if attr.key == info.pk_key:
            break
    else:
        # The tiebreaker follows the last key's direction: `-created_at` stays one direction, so the
        # keyset condition is a row-value comparison that an index on created_at can serve.
        descending = keys[-1].descending if keys else False
        [pk_column] = mapper.primary_key
        keys.append(_SortKey(info.pk, info.pk_key, descending, False, _codec_for(info.pk), pk_column))
    normalized = ",".join(("-" if key.descending else "") + key.key for key in keys)
    signature = hashlib.blake2b(f"{mapper.local_table.name}|{normalized}".encode(), digest_size=6).hexdigest()
    return _SortPlan(
        entity=model.__name__,
        keys=tuple(keys),
        clauses=tuple(order_clause(key.attr, key.descending) for key in keys),
        signature=signature,
        uniform=not any(key.nullable for key in keys) and len({key.descending for key in keys}) == 1,
    )
