"""Advisory lock keys: a stable signed 64-bit key per lock name, the same in every process."""

from __future__ import annotations

import hashlib

__all__ = ["advisory_key"]


def advisory_key(name: str) -> int:
    """The `pg_advisory_*lock(bigint)` key of `name` (first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
