"""Every value a repository writes or filters by, checked against its column's type before any SQL.

What is stored is exactly what was given, or a `ValidationError` naming the field and the reason (never
the value itself: values stay out of messages and logs). Nothing is sent when a value is refused.

Accepted, because nothing is lost (the value bound is the converted one):

- number columns: a numeric string in plain notation (`"12"`, `"0.5"`, `"1e3"`; no `nan`, `inf`,
  spaces or `_`); an integer column also takes an integral float or Decimal (`5.0`); a `Numeric` takes
  an int, a float (by its shortest repr, `0.1` is `Decimal("0.1")`) or a Decimal; a float column takes
  an int or a Decimal whose value the float keeps exactly (by shortest repr: `Decimal("0.1")` is fine);
- `timestamptz`: an ISO-8601 string with an offset; `date`: an ISO date string; `UUID`: a UUID string;
- JSON: tuples as arrays and any `Mapping` as an object (read back as list and dict); `...` (the
  placeholder in seed 003's examples) as the string `"..."`;
- text: a `str` subclass is stored as plain `str`.

Refused: anything else that is not the column's Python type (no `str()` of objects, no bool as a
number), None for a NOT NULL column, a float with a fraction or an out-of-range int for an integer
column (int2/int4/int8), NaN and infinities, a Decimal with more decimal places than the column's scale
(PostgreSQL would round it) or more digits than its precision, text longer than `varchar(n)`
(PostgreSQL would silently cut trailing spaces), NUL or lone surrogates in text, a naive datetime for a
`timestamptz` column (it would be read in the client's local zone), `datetime.max`/`min`,
`date.max`/`min` and any aware datetime at or beyond them in UTC (asyncpg would store them as
'infinity'), a `str` for an array column, and for JSON columns: non-JSON values (sets, datetimes, Decimals, objects), non-string keys, NaN, text that
PostgreSQL cannot store, floats that would not read back equal, and nesting deeper than
`MAX_JSON_DEPTH`.

Filters use the same checks except the ones about storage (length, precision, scale), so
`confidence__gte="0.5"` compares with the float 0.5 and a malformed UUID is refused before any SQL.

Why ~600 lines in one module: it is one concept, one check per column type, and the rules above are
its specification; split by type, the rules and the shared number parsing would scatter.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import Column
from sqlalchemy.sql import sqltypes
from sqlalchemy.types import TypeDecorator, TypeEngine

from persistence.errors import ValidationError
from persistence.values import text_problem

__all__ = [
    "MAX_JSON_DEPTH",
    "Check",
    "check_columns",
    "check_value",
    "checker",
    "describe",
    "integer_bound",
    "mapping_argument",
    "refuse",
    "required",
    "text_key",
]

MAX_JSON_DEPTH = 100
"""Deepest nesting of arrays and objects accepted in a JSON value (deeper is a ValidationError)."""

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_NUMBER_CHARS = 1000
_MAX_TIME_CHARS = 64
# PostgreSQL numeric: up to 131072 digits before the decimal point and 16383 after.
_NUMERIC_INT_DIGITS = 131072
_NUMERIC_SCALE = 16383
# A JSON integer must read back through json.loads (Python refuses ints of more than 4300 digits).
_JSON_INT_BITS = 14000
_INT_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}

Check = Callable[[Any], Any]
"""Returns the value to bind, or raises `_Refused` with the reason."""


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def refuse(
    where: str, reason: str, *, table: str | None = None, column: str | None = None
) -> ValidationError:
    """The error for a refused value: `where` names the field or argument."""
    return ValidationError(f"{where}: {reason}", table=table, column=column)


def check_value(entity: str, field: str, col: Column[Any], value: Any, *, filtering: bool = False) -> Any:
    """`value` as it will be bound for `col`, or `ValidationError` naming `entity.field` and the reason."""
    try:
        return checker(col, filtering)(value)
    except _Refused as exc:
        raise refuse(f"{entity}.{field}", exc.reason, table=col.table.name, column=col.name) from None


@functools.lru_cache(maxsize=4096)
def _column_type_check(col: Column[Any], filtering: bool) -> Check:
    return _type_check(col.type, filtering)


@functools.lru_cache(maxsize=4096)
def checker(col: Column[Any], filtering: bool) -> Check:
    """The check of one column (built once): None handling, then the type's check."""
    check = _column_type_check(col, filtering)
    if filtering:

        def filter_check(value: Any) -> Any:
            if value is None:
                raise _Refused("None can only be compared with = and != (use field__isnull)")
            return check(value)

        return filter_check
    nullable = bool(col.nullable)

    def write_check(value: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise _Refused("None for a NOT NULL column")
        return check(value)

    return write_check


def _kind(value: Any) -> str:
    return type(value).__name__


def _type_check(type_: TypeEngine[Any], filtering: bool) -> Check:
    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    if isinstance(type_, sqltypes.Enum):
        return _enum_check(type_)
    if isinstance(type_, sqltypes.String):  # Text, Unicode, ...
        return _text_check(None if filtering else type_.length)
    if isinstance(type_, sqltypes.Boolean):
        return _bool_check
    if isinstance(type_, sqltypes.Integer):
        name = (
            "smallint"
            if isinstance(type_, sqltypes.SmallInteger)
            else "bigint"
            if isinstance(type_, sqltypes.BigInteger)
            else "integer"
        )
        return _int_check(name)
    if isinstance(type_, sqltypes.Float):  # Double, REAL (Float is a Numeric: test it first)
        single = isinstance(type_, sqltypes.REAL) or (
            type_.precision is not None and type_.precision <= 24 and not isinstance(type_, sqltypes.Double)
        )
        return _float_check(single)
    if isinstance(type_, sqltypes.Numeric):
        if filtering:
            return _numeric_check(None, None)
        return _numeric_check(type_.precision, type_.scale)
    if isinstance(type_, sqltypes.DateTime):
        return _datetime_check(bool(type_.timezone))
    if isinstance(type_, sqltypes.Date):
        return _date_check
    if isinstance(type_, sqltypes.Uuid):
        return _uuid_check(bool(type_.as_uuid))
    if isinstance(type_, sqltypes.JSON):
        return _json_value
    if isinstance(type_, sqltypes.ARRAY):
        return _array_check(_type_check(type_.item_type, filtering))
    if isinstance(type_, sqltypes._Binary):
        return _bytes_check
    return lambda value: value  # a type we do not know: bound as given


# -- scalars --------------------------------------------------------------------------------------------


def _text_check(length: int | None) -> Check:
    limit = length if length is not None else -1

    def check(value: Any) -> Any:
        # Fast path (most values): plain ASCII text without NUL, within the length.
        if (
            type(value) is str
            and value.isascii()
            and "\x00" not in value
            and (limit < 0 or len(value) <= limit)
        ):
            return value
        if not isinstance(value, str):
            raise _Refused(f"expects text (str), got {_kind(value)}")
        if type(value) is not str:
            value = value[:]  # a plain str of the same characters (no __str__ of the subclass)
        problem = text_problem(value)
        if problem is not None:
            raise _Refused(problem)
        if length is not None and len(value) > length:
            raise _Refused(f"is {len(value)} characters long; the column holds at most {length}")
        return value

    return check


def _enum_check(type_: sqltypes.Enum) -> Check:
    allowed = frozenset(type_.enums)
    enum_class = type_.enum_class

    def check(value: Any) -> Any:
        if enum_class is not None and isinstance(value, enum_class):
            return value
        if isinstance(value, Enum) or not isinstance(value, str) or value not in allowed:
            raise _Refused(f"not one of the column's values ({', '.join(sorted(allowed))})")
        return value

    return check


def _bool_check(value: Any) -> Any:
    if not isinstance(value, bool):
        raise _Refused(f"expects a bool, got {_kind(value)}")
    return value


def _parse_number(value: str) -> Decimal:
    if len(value) > _MAX_NUMBER_CHARS or not _NUMBER.fullmatch(value):
        raise _Refused("a string for a number column must be a plain decimal number")
    return Decimal(value)


def _int_check(name: str) -> Check:
    bound = _INT_RANGES[name]

    def check(value: Any) -> Any:
        if type(value) is int and -bound <= value < bound:
            return value
        if isinstance(value, bool):
            raise _Refused(f"expects an integer, got {_kind(value)}")
        if isinstance(value, numbers.Integral):
            number = int(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _Refused(f"{value!r} is not a finite number")
            if not value.is_integer():
                raise _Refused("a float with a fractional part cannot be stored in an integer column")
            number = int(value)
        elif isinstance(value, Decimal | str):
            decimal = _parse_number(value) if isinstance(value, str) else value
            if not decimal.is_finite():
                raise _Refused("not a finite number")
            if decimal.adjusted() > 20:
                raise _Refused(f"out of range for {name}")
            if decimal != decimal.to_integral_value():
                raise _Refused("a number with a fractional part cannot be stored in an integer column")
            number = int(decimal)
        else:
            raise _Refused(f"expects an integer, got {_kind(value)}")
        if not -bound <= number < bound:
            raise _Refused(f"out of range for {name} ({-bound} .. {bound - 1})")
        return number

    return check


def _float_check(single: bool) -> Check:
    kind = "real" if single else "double precision"

    def check(value: Any) -> Any:
        if type(value) is float and not single and math.isfinite(value):
            return value
        if isinstance(value, bool):
            raise _Refused(f"expects a number, got {_kind(value)}")
        if isinstance(value, float):
            number = float(value)
            if not math.isfinite(number):
                raise _Refused(f"{number!r} is not a finite number")
        elif isinstance(value, numbers.Integral):
            exact = int(value)
            try:
                number = float(exact)
            except OverflowError:
                raise _Refused(f"out of range for {kind}") from None
            if int(number) != exact:
                raise _Refused(f"this integer has no exact {kind} value")
        elif isinstance(value, Decimal | str):
            decimal = _parse_number(value) if isinstance(value, str) else value
            if not decimal.is_finite():
                raise _Refused("not a finite number")
            number = float(decimal)
            if not math.isfinite(number) or Decimal(repr(number)) != decimal:
                raise _Refused(f"this number has no exact {kind} value (it would be rounded)")
        else:
            raise _Refused(f"expects a number, got {_kind(value)}")
        if single:
            try:
                narrowed = struct.unpack("<f", struct.pack("<f", number))[0]
            except OverflowError:
                raise _Refused(f"out of range for {kind}") from None
            if narrowed != number:
                raise _Refused(f"this number has no exact {kind} value (it would be rounded)")
        return number

    return check


def _numeric_check(precision: int | None, scale: int | None) -> Check:
    fast_scale = _NUMERIC_SCALE if scale is None else scale
    fast_int = _NUMERIC_INT_DIGITS if precision is None else precision - (scale or 0)

    def check(value: Any) -> Any:
        if type(value) is Decimal and value.is_finite():
            exponent = value.as_tuple().exponent
            # No more decimal places than the scale, no more integer digits than precision - scale.
            if isinstance(exponent, int) and exponent >= -fast_scale and value.adjusted() < fast_int:
                return value
        if isinstance(value, bool):
            raise _Refused(f"expects a number, got {_kind(value)}")
        if isinstance(value, Decimal):
            number = value
        elif isinstance(value, numbers.Integral):
            number = Decimal(int(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _Refused(f"{value!r} is not a finite number")
            number = Decimal(repr(value))
        elif isinstance(value, str):
            number = _parse_number(value)
        else:
            raise _Refused(f"expects a number (Decimal), got {_kind(value)}")
        if not number.is_finite():
            raise _Refused("not a finite number")
        sign, digits, given_exponent = number.as_tuple()
        assert isinstance(given_exponent, int)
        exponent = given_exponent
        significant = len(digits)
        while significant > 1 and digits[significant - 1] == 0:  # trailing zeros are not lost
            significant -= 1
            exponent += 1
        if significant == 1 and digits[0] == 0:  # zero: no digits anywhere
            return Decimal(0)
        decimals = max(0, -exponent)
        int_digits = max(0, significant + exponent)
        max_scale = _NUMERIC_SCALE if scale is None else scale
        if decimals > max_scale:
            raise _Refused(
                f"has {decimals} decimal places; the column keeps {max_scale} (it would be rounded)"
            )
        max_int = _NUMERIC_INT_DIGITS if precision is None else precision - (scale or 0)
        if int_digits > max_int:
            raise _Refused(f"has {int_digits} digits before the decimal point; the column holds {max_int}")
        if given_exponent < -max_scale:  # only zeros beyond the scale: the same number without them
            return Decimal((sign, digits[:significant], exponent))
        return number

    return check


# asyncpg sends these as PostgreSQL's 'infinity' / '-infinity' (and reads those back naive): refused.
_DATETIME_MAX_UTC = datetime.max.replace(tzinfo=UTC)
_DATETIME_MIN_UTC = datetime.min.replace(tzinfo=UTC)
_OUT_OF_RANGE = "out of range (the driver would store this bound as ±infinity)"


def _datetime_check(aware: bool) -> Check:
    def check(value: Any) -> Any:
        if (
            type(value) is datetime
            and aware
            and value.tzinfo is not None
            and value.utcoffset() is not None
            and _DATETIME_MIN_UTC < value < _DATETIME_MAX_UTC
        ):
            return value
        if isinstance(value, str):
            if len(value) > _MAX_TIME_CHARS:
                raise _Refused("not an ISO-8601 timestamp")
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise _Refused("not an ISO-8601 timestamp") from None
        if not isinstance(value, datetime):
            raise _Refused(f"expects a datetime, got {_kind(value)}")
        has_zone = value.tzinfo is not None and value.utcoffset() is not None
        if aware and not has_zone:
            raise _Refused("a naive datetime is ambiguous; give a tz-aware one (e.g. tzinfo=UTC)")
        if not aware and has_zone:
            raise _Refused("the column has no time zone; give a naive datetime")
        if aware:
            try:
                utc = value.astimezone(UTC)
            except OverflowError:  # its UTC time is outside year 1 .. 9999
                raise _Refused(_OUT_OF_RANGE) from None
            if not _DATETIME_MIN_UTC < utc < _DATETIME_MAX_UTC:
                raise _Refused(_OUT_OF_RANGE)
        elif not _DATETIME_MIN_UTC < value.replace(tzinfo=UTC) < _DATETIME_MAX_UTC:  # naive bounds
            raise _Refused(_OUT_OF_RANGE)
        return value

    return check


def _date_check(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) > _MAX_TIME_CHARS:
            raise _Refused("not an ISO-8601 date")
        try:
            value = date.fromisoformat(value)
        except ValueError:
            raise _Refused("not an ISO-8601 date") from None
    if not isinstance(value, date) or isinstance(value, datetime):
        raise _Refused(f"expects a date, got {_kind(value)}")
    if not date.min < value < date.max:
        raise _Refused(_OUT_OF_RANGE)
    return value


def _uuid_check(as_uuid: bool) -> Check:
    def check(value: Any) -> Any:
        if isinstance(value, str):
            if len(value) > 64:
                raise _Refused("not a UUID")
            try:
                value = uuid.UUID(value)
            except ValueError:
                raise _Refused("not a UUID") from None
        if not isinstance(value, uuid.UUID):
            raise _Refused(f"expects a UUID, got {_kind(value)}")
        return value if as_uuid else str(value)

    return check


def _bytes_check(value: Any) -> Any:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _Refused(f"expects bytes, got {_kind(value)}")
    return bytes(value)


def _array_check(item: Check) -> Check:
    def check(value: Any) -> Any:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise _Refused(f"expects a list, got {_kind(value)}")
        return [None if element is None else item(element) for element in value]

    return check


# -- JSON -----------------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    return _json(value, 0)


def _json(value: Any, depth: int) -> Any:
    """A plain JSON structure equal to `value` that reads back equal, or `_Refused`."""
    kind = type(value)
    # Fast paths (exact types, the common case): the general checks below handle the rest.
    if kind is str:
        if value.isascii() and "\x00" not in value:
            return value
    elif kind is int:
        if -(2**63) <= value < 2**63:
            return value
    elif kind is dict and depth < MAX_JSON_DEPTH:
        result: dict[str, Any] = {}
        for key, element in value.items():
            if type(key) is not str or not key.isascii() or "\x00" in key:
                return _json_general(value, depth)
            result[key] = _json(element, depth + 1)
        return result
    return _json_general(value, depth)


def _json_general(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise _Refused(f"a JSON string {problem}")
        return value[:] if type(value) is not str else value
    if isinstance(value, int):
        if value.bit_length() > _JSON_INT_BITS:
            raise _Refused("a JSON integer this large would not read back")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"{value!r} is not a JSON number")
        if abs(value) >= 2**53 and value.is_integer() and Decimal(repr(value)) != Decimal(value):
            # jsonb keeps the decimal digits of repr(value), which read back as a different integer
            raise _Refused("a float this large would not read back equal; pass an int")
        return float(value)
    if depth >= MAX_JSON_DEPTH:
        raise _Refused(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, list | tuple):
        return [_json(element, depth + 1) for element in value]
    if value is Ellipsis:  # the `[...]` placeholders of seed 003's examples, stored as "..."
        return "..."
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, element in value.items():
            if not isinstance(key, str):
                raise _Refused(f"JSON object keys must be strings, got {_kind(key)}")
            problem = text_problem(key)
            if problem is not None:
                raise _Refused(f"a JSON object key {problem}")
            result[key[:] if type(key) is not str else key] = _json(element, depth + 1)
        return result
    raise _Refused(f"{_kind(value)} is not a JSON value (JSON takes dict, list, str, int, float, bool, None)")


def check_columns(
    entity: str,
    fields: tuple[tuple[str, Column[Any]], ...],
    rows: list[Any],
    keys: tuple[Any, ...],
) -> list[list[Any]]:
    """The checked values of many rows as one list per field (`rows[i][keys[j]]` is field j of row i),
    or `ValidationError` naming the row number, field and reason."""
    arrays: list[list[Any]] = []
    for (field, col), key in zip(fields, keys, strict=True):
        # One call per value (the type's check); None is handled inline, the whole column at once.
        check = _column_type_check(col, False)
        column = [row[key] for row in rows]
        try:
            if col.nullable:
                arrays.append([value if value is None else check(value) for value in column])
            elif any(value is None for value in column):
                raise _Refused("None for a NOT NULL column")
            else:
                arrays.append([check(value) for value in column])
        except _Refused as exc:
            full = checker(col, False)
            number = next(i for i, value in enumerate(column) if _refused(full, value))
            raise refuse(
                f"row {number}: {entity}.{field}", exc.reason, table=col.table.name, column=col.name
            ) from None
    return arrays


def _refused(check: Check, value: Any) -> bool:
    try:
        check(value)
    except _Refused:
        return True
    return False


def mapping_argument(value: object, argument: str) -> dict[str, Any]:
    """A domain method's mapping argument as a dict, or `ValidationError` naming the argument."""
    if not isinstance(value, Mapping):
        raise refuse(argument, f"expects a mapping, got {_kind(value)}")
    return dict(value)


def required(value: object, argument: str) -> object:
    """A lookup argument that must be given: None would silently become `IS NULL` and match nothing
    (or, for a write, set NULL), so it is a `ValidationError` naming the argument."""
    if value is None:
        raise refuse(argument, "must not be None")
    return value


def integer_bound(type_: TypeEngine[Any]) -> int:
    """Integer keys of this column type lie in `-bound .. bound - 1` (int2/int4/int8)."""
    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    if isinstance(type_, sqltypes.SmallInteger):
        return _INT_RANGES["smallint"]
    if isinstance(type_, sqltypes.BigInteger):
        return _INT_RANGES["bigint"]
    return _INT_RANGES["integer"]


def text_key(value: object) -> object:
    """A key that is stored as text: a UUID as its canonical string, anything else as given (so the
    column's check refuses what is not text, instead of storing `str(None)`)."""
    return str(value) if isinstance(value, uuid.UUID) else value


def describe(value: object) -> str:
    """A short, safe description of an argument for an error message: the repr of a short str,
    int or None, else only its type (a repr may be huge, recurse without end, or run user code)."""
    if value is None or (isinstance(value, bool | int) and abs(int(value)) < 10**20):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a {type(value).__name__}"
