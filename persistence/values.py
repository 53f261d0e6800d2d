"""Checks on values before they reach PostgreSQL, shared by repositories and the ledger.

PostgreSQL text (UTF-8) cannot hold NUL (U+0000) or lone surrogates (U+D800-U+DFFF); asyncpg would
fail while encoding them, mid-statement or mid-COPY, with a raw `UnicodeEncodeError`. Every public
write checks text with `text_problem` first, so such a value is a `ValidationError` naming the field
and nothing is sent.
"""

from __future__ import annotations

__all__ = ["text_problem"]


def text_problem(value: str) -> str | None:
    """Why PostgreSQL would refuse `value` as text, or None if it can store it verbatim."""
    if "\x00" in value:
        return "contains NUL (U+0000), which PostgreSQL text cannot store"
    if value.isascii():  # the common case: no surrogate possible, no encoding needed
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains a lone surrogate (U+{ord(value[exc.start]):04X}) at index {exc.start}, not valid UTF-8"
        )
    return None
