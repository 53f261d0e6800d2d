"""The content-addressed result store (seed 001's `results` and `binary_results`) and the opt-in
deduplication cache.

- `results`: one row per (company, sha-256 of the content): kind ('text' | 'json' | 'binary'),
  MIME type, size, and the content itself inline (`inline_text` for text and canonical JSON,
  `inline_bytes` for binary) when it is at most the store's inline limit; otherwise both are NULL
  and the content is in `result_chunks` under `blob_id` (`chunks` rows). The row is written last,
  in the transaction that wrote the chunks: a reader that finds it finds the whole content.
- `result_chunks`: (company, blob_id, seq) -> up to one chunk (1 MiB by default) of a large
  content. The foreign key to `results (company_id, blob_id)` is checked at commit (DEFERRABLE
  INITIALLY DEFERRED: chunks are written before the header that names them) and cascades deletes.
- `result_cache`: (company, dedup key) -> the result of the first identical request. A row
  without a result is a leader's claim (`leader` is the fencing token, `lease_until` its lease);
  `expires_at` ends a cached entry. Its foreign key removes entries whose result is deleted.
- `binary_results`: a view under seed 001's name: the binary rows, `sha256` as `result_id`,
  `content` reassembled from the chunks (whole in memory: use `ResultStore.stream` for large ones).

Company first in every key (no foreign key to `companies` yet).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Connection,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base, CreatedAt

RESULT_KINDS = ("text", "json", "binary")

# Inline rows hold their content in the column of their kind; chunked rows in neither.
STORAGE_CHECK = (
    "(blob_id IS NULL AND chunks = 0 AND CASE WHEN kind = 'binary' "
    "THEN inline_bytes IS NOT NULL AND inline_text IS NULL "
    "ELSE inline_text IS NOT NULL AND inline_bytes IS NULL END) "
    "OR (blob_id IS NOT NULL AND chunks > 0 AND inline_text IS NULL AND inline_bytes IS NULL)"
)


class Result(CreatedAt, Base):
    """One stored content of a company, addressed by its sha-256."""

    __tablename__ = "results"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    sha256: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    mime_type: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    inline_text: Mapped[str | None] = mapped_column(Text)
    inline_bytes: Mapped[bytes | None] = mapped_column(LargeBinary)
    blob_id: Mapped[uuid.UUID | None]
    chunks: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    __table_args__ = (
        UniqueConstraint("company_id", "blob_id"),
        CheckConstraint("kind IN ('text', 'json', 'binary')", name="kind_known"),
        CheckConstraint("octet_length(sha256) = 32", name="sha256_length"),
        CheckConstraint("size_bytes >= 0", name="size_non_negative"),
        CheckConstraint(STORAGE_CHECK, name="storage_consistent"),
    )


class ResultChunk(Base):
    """One chunk of a large content; `seq` counts from 0."""

    __tablename__ = "result_chunks"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    blob_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        ForeignKeyConstraint(
            ["company_id", "blob_id"],
            ["results.company_id", "results.blob_id"],
            ondelete="CASCADE",
            deferrable=True,
            initially="DEFERRED",
        ),
        CheckConstraint("seq >= 0", name="seq_non_negative"),
    )


class ResultCacheEntry(CreatedAt, Base):
    """A deduplication entry: a leader's claim while `result_sha256` is NULL, then the cached result."""

    __tablename__ = "result_cache"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    dedup_key: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    key_version: Mapped[int] = mapped_column(SmallInteger)
    leader: Mapped[uuid.UUID | None]
    lease_until: Mapped[datetime | None]
    result_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime | None]

    __table_args__ = (
        ForeignKeyConstraint(
            ["company_id", "result_sha256"], ["results.company_id", "results.sha256"], ondelete="CASCADE"
        ),
        CheckConstraint("octet_length(dedup_key) = 32", name="dedup_key_length"),
        CheckConstraint(
            "result_sha256 IS NOT NULL OR (leader IS NOT NULL AND lease_until IS NOT NULL)",
            name="claimed_or_ready",
        ),
    )


# Seed 001's `binary_results`, as a view over the store (revision 0019 freezes its own copy).
BINARY_RESULTS_VIEW = """
CREATE VIEW binary_results AS
SELECT r.company_id, r.sha256 AS result_id, r.mime_type, r.size_bytes,
       COALESCE(r.inline_bytes,
                (SELECT string_agg(c.data, ''::bytea ORDER BY c.seq) FROM result_chunks c
                  WHERE c.company_id = r.company_id AND c.blob_id = r.blob_id)) AS content,
       r.created_at
  FROM results r
 WHERE r.kind = 'binary'
"""


# So `Base.metadata.create_all` builds what the migrations build (the view needs both tables).
def _create_view(target: object, connection: Connection, **kw: Any) -> None:
    connection.execute(text(BINARY_RESULTS_VIEW))


def _drop_view(target: object, connection: Connection, **kw: Any) -> None:
    connection.execute(text("DROP VIEW IF EXISTS binary_results"))


event.listen(ResultChunk.__table__, "after_create", _create_view)
event.listen(ResultChunk.__table__, "before_drop", _drop_view)
