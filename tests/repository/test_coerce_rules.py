"""The per-type rules of `persistence.repository.coerce` for column types no seed table uses (Enum, real,
arrays, date, bytea) and the numeric edge cases; pure functions, no database involved."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import REAL, Column, Date, Enum, LargeBinary, MetaData, Numeric, String, Table
from sqlalchemy.dialects.postgresql import ARRAY

from persistence.errors import ValidationError
from persistence.repository.coerce import check_value, describe


class Colour(enum.Enum):
    red = "red"
    blue = "blue"


_table = Table(
    "rules",
    MetaData(),
    Column("colour", Enum(Colour)),
    Column("ratio", REAL),
    Column("tags", ARRAY(String(5))),
    Column("day", Date),
    Column("blob", LargeBinary),
    Column("amount", Numeric(10, 6), nullable=False),
)


def check(name: str, value: Any, *, filtering: bool = False) -> Any:
    return check_value("Rules", name, _table.c[name], value, filtering=filtering)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("colour", Colour.red, Colour.red),
        ("colour", "blue", "blue"),
        ("ratio", 0.5, 0.5),
        ("tags", ("a", "b"), ["a", "b"]),
        ("day", "2024-05-01", date(2024, 5, 1)),
        ("blob", bytearray(b"x"), b"x"),
        ("amount", Decimal("1.500000000"), Decimal("1.500000000")),  # trailing zeros lose nothing
        ("amount", "1e-6", Decimal("0.000001")),
        ("amount", -0.0, Decimal("-0.0")),
        ("amount", Decimal("0E-99999"), Decimal(0)),  # zero, whatever its exponent
        ("amount", Decimal("2." + "0" * 20000), Decimal(2)),
    ],
)
def test_accepted(name: str, value: Any, expected: Any) -> None:
    assert check(name, value) == expected


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("colour", "green", "not one of"),
        ("colour", 1, "not one of"),
        ("ratio", 0.1, "no exact real value"),  # float4 would round it
        ("ratio", 1e300, "out of range for real"),
        ("tags", "ab", "expects a list"),
        ("tags", ["abcdef"], "at most 5"),
        ("day", datetime(2024, 5, 1, tzinfo=UTC), "expects a date"),
        ("blob", "x", "expects bytes"),
        ("amount", None, "NOT NULL"),
        ("amount", Decimal("sNaN"), "finite"),
        ("amount", Decimal("1e4"), "digits before the decimal point"),
        ("amount", " 1", "plain decimal"),
        ("amount", "1_000", "plain decimal"),
    ],
)
def test_refused(name: str, value: Any, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as info:
        check(name, value)
    assert (info.value.table, info.value.column) == ("rules", name)


def test_filters_skip_storage_limits_but_not_types() -> None:
    assert check("amount", Decimal("0.0000001"), filtering=True) == Decimal("0.0000001")
    assert check("tags", ["abcdef"], filtering=True) == ["abcdef"]
    with pytest.raises(ValidationError, match="__isnull"):
        check("amount", None, filtering=True)


def test_describe_never_reprs_arbitrary_objects() -> None:
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    assert describe(deep) == "a list"
    assert len(describe("x" * 1000)) == 80
    assert describe(5) == "5"
