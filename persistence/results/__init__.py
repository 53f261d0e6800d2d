"""Results of inference requests: a content-addressed store and opt-in deduplication.

`ResultStore` (`store.py`) keeps text, JSON and binary results by (company, sha-256), inline up to
a size and chunked above it, streamed in and out; `Deduplicator` (`dedup.py`) caches a result per
canonical request key and collapses concurrent identical requests onto one. Statements in `sql.py`.
"""

from persistence.results.dedup import (
    KEY_SCHEMA_VERSION,
    TRANSPORT_ONLY_FIELDS,
    DedupClaim,
    DedupKey,
    Deduplicated,
    Deduplicator,
    dedup_key,
)
from persistence.results.errors import DedupTimeoutError, DigestMismatchError, ResultConflictError
from persistence.results.store import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_INLINE_LIMIT,
    JSON_MIME_TYPE,
    STREAMED,
    TEXT_MIME_TYPE,
    AsyncReadable,
    Readable,
    ResultKind,
    ResultSource,
    ResultStore,
    StoredResult,
    canonical_json,
    inline_content,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_INLINE_LIMIT",
    "JSON_MIME_TYPE",
    "KEY_SCHEMA_VERSION",
    "STREAMED",
    "TEXT_MIME_TYPE",
    "TRANSPORT_ONLY_FIELDS",
    "AsyncReadable",
    "DedupClaim",
    "DedupKey",
    "DedupTimeoutError",
    "Deduplicated",
    "Deduplicator",
    "DigestMismatchError",
    "Readable",
    "ResultConflictError",
    "ResultKind",
    "ResultSource",
    "ResultStore",
    "StoredResult",
    "canonical_json",
    "dedup_key",
    "inline_content",
]
