"""Keyset pages: the checked sort order of a page or stream, and its opaque cursor.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from sqlalchemy import Column, ColumnElement, UnaryExpression, and_, inspect, literal, or_, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from persistence.errors import InvalidRequestError, ValidationError
from persistence.repository.coerce import check_value
from persistence.repository.filters import order_clause, order_terms
from persistence.repository.meta import model_info

_MAX_CURSOR_CHARS = 4096
_CURSOR_VERSION = 1
_CHECKSUM_BYTES = 8
_CHECKSUM_KEY = b"persistence.repository.cursor"


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
class SortPlan:
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
        token = base64.urlsafe_b64encode(checksum(data) + data)
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
            if not hmac.compare_digest(check, checksum(data)):
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


def checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_CHECKSUM_BYTES, key=_CHECKSUM_KEY).digest()


_SORT_PLANS: dict[tuple[type[Any], tuple[str, ...]], SortPlan] = {}
_MAX_SORT_PLANS = 1024


def sort_plan(model: type[Any], order_by: tuple[str, ...]) -> SortPlan:
    """The checked order of `order_by`, ending with the primary key (cached per model and order)."""
    plan = _SORT_PLANS.get((model, order_by))
    if plan is None:
        plan = _build_sort_plan(model, order_by)  # raises on unknown names: those are never cached
        if len(_SORT_PLANS) >= _MAX_SORT_PLANS:
            _SORT_PLANS.clear()
        _SORT_PLANS[(model, order_by)] = plan
    return plan


def _build_sort_plan(model: type[Any], order_by: tuple[str, ...]) -> SortPlan:
    """Names after the primary key are dropped: the key is unique, so they could never matter."""
    info = model_info(model)
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
        keys.append(
            _SortKey(info.pk_attr, info.pk_key, descending, False, _codec_for(info.pk_attr), pk_column)
        )
    normalized = ",".join(("-" if key.descending else "") + key.key for key in keys)
    signature = hashlib.blake2b(f"{mapper.local_table.name}|{normalized}".encode(), digest_size=6).hexdigest()
    return SortPlan(
        entity=model.__name__,
        keys=tuple(keys),
        clauses=tuple(order_clause(key.attr, key.descending) for key in keys),
        signature=signature,
        uniform=not any(key.nullable for key in keys) and len({key.descending for key in keys}) == 1,
    )
