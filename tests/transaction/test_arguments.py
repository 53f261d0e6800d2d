"""Wrong arguments to `transaction()`, `on_commit()` and `set_rollback()` are typed errors naming the
argument, raised before any block opens: never a bare TypeError/ValueError, never silently accepted."""

from __future__ import annotations

from typing import Any

import pytest

from persistence.errors import ArgumentTypeError, InvalidRequestError, PersistenceError, ValidationError
from persistence.transaction import on_commit, set_rollback, transaction

WRONG_TYPES: list[tuple[str, Any]] = [
    ("retries", "3"),
    ("retries", 1.5),
    ("retries", True),
    ("read_only", "yes"),
    ("read_only", 1),
    ("durable", "no"),
    ("savepoint", 1),
    ("savepoint", None),
    ("isolation_level", 3),
]

WRONG_VALUES: list[tuple[str, Any]] = [
    ("retries", -1),
    ("retries", 10**6),  # its backoff (2**attempt) would overflow a float
    ("isolation_level", "serializable"),
    ("isolation_level", "DIRTY READ"),
]


@pytest.mark.parametrize(("name", "value"), WRONG_TYPES)
def test_a_wrong_type_is_an_argument_type_error_naming_it(name: str, value: Any) -> None:
    options: dict[str, Any] = {name: value}
    with pytest.raises(ArgumentTypeError, match=name) as info:
        transaction(**options)
    assert isinstance(info.value, ValidationError) and isinstance(info.value, TypeError)


@pytest.mark.parametrize(("name", "value"), WRONG_VALUES)
def test_a_wrong_value_is_an_invalid_request_naming_it(name: str, value: Any) -> None:
    options: dict[str, Any] = {name: value}
    with pytest.raises(InvalidRequestError, match=name) as info:
        transaction(**options)
    assert isinstance(info.value, ValueError)  # `except ValueError` callers keep working


def test_callbacks_and_rollback_marks_are_checked_too() -> None:
    not_callable: Any = "send_email"
    with pytest.raises(ArgumentTypeError, match="callable") as info:
        on_commit(not_callable)
    assert isinstance(info.value, TypeError) and isinstance(info.value, PersistenceError)
    robust: Any = "yes"
    with pytest.raises(ArgumentTypeError, match="robust"):
        on_commit(lambda: None, robust=robust)
    flag: Any = "no"
    with pytest.raises(ArgumentTypeError, match="rollback"):
        set_rollback(flag)
    sync: Any = lambda: None  # noqa: E731
    with pytest.raises(ArgumentTypeError, match="async"):
        transaction(sync)
