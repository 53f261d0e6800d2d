"""The result store's errors (all `PersistenceError`s)."""

from __future__ import annotations

from persistence.errors import PersistenceError, TransientError


class DigestMismatchError(PersistenceError, ValueError):
    """The content's sha-256 is not the digest the caller said it has; nothing was stored."""

    def __init__(self, expected: bytes, actual: bytes) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"content sha-256 is {actual.hex()}, expected {expected.hex()}: nothing stored")


class ResultConflictError(PersistenceError):
    """The same content is already stored under another kind or MIME type (a content address names
    one stored result; store the bytes under the type they were first stored with, or delete them)."""

    def __init__(self, sha256: bytes, stored: tuple[str, str], given: tuple[str, str]) -> None:
        self.sha256 = sha256
        self.stored = stored
        self.given = given
        super().__init__(
            f"result {sha256.hex()} is stored as {stored[0]} {stored[1]!r}, not {given[0]} {given[1]!r}"
        )


class DedupTimeoutError(TransientError):
    """An identical request's leader did not finish within the wait; trying again may succeed."""
