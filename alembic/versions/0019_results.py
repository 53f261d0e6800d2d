"""results: the content-addressed result store, its chunks and the deduplication cache

- `results` (company_id, sha256) -> kind, mime_type, size_bytes, inline_text | inline_bytes, or
  `blob_id` + `chunks` when the content is stored in `result_chunks` (see `persistence.results`).
- `result_chunks` (company_id, blob_id, seq) -> data; the foreign key to `results` is checked at
  commit (chunks are written before their header) and cascades deletes.
- `result_cache` (company_id, dedup_key) -> leader's claim, then the cached result and its expiry.
- `binary_results`: seed 001's name, a view over the binary rows.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 15:10:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STORAGE_CHECK = (
    "(blob_id IS NULL AND chunks = 0 AND CASE WHEN kind = 'binary' "
    "THEN inline_bytes IS NOT NULL AND inline_text IS NULL "
    "ELSE inline_text IS NOT NULL AND inline_bytes IS NULL END) "
    "OR (blob_id IS NOT NULL AND chunks > 0 AND inline_text IS NULL AND inline_bytes IS NULL)"
)

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


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("sha256", sa.LargeBinary(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("mime_type", sa.String(length=200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("inline_text", sa.Text(), nullable=True),
        sa.Column("inline_bytes", sa.LargeBinary(), nullable=True),
        sa.Column("blob_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("chunks", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('text', 'json', 'binary')", name=op.f("ck_results_kind_known")),
        sa.CheckConstraint("octet_length(sha256) = 32", name=op.f("ck_results_sha256_length")),
        sa.CheckConstraint("size_bytes >= 0", name=op.f("ck_results_size_non_negative")),
        sa.CheckConstraint(STORAGE_CHECK, name=op.f("ck_results_storage_consistent")),
        sa.PrimaryKeyConstraint("company_id", "sha256", name=op.f("pk_results")),
        sa.UniqueConstraint("company_id", "blob_id", name=op.f("uq_results_company_id_blob_id")),
    )
    op.create_table(
        "result_chunks",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("blob_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_result_chunks_seq_non_negative")),
        sa.ForeignKeyConstraint(
            ["company_id", "blob_id"],
            ["results.company_id", "results.blob_id"],
            name=op.f("fk_result_chunks_company_id_results"),
            ondelete="CASCADE",
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.PrimaryKeyConstraint("company_id", "blob_id", "seq", name=op.f("pk_result_chunks")),
    )
    op.create_table(
        "result_cache",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("dedup_key", sa.LargeBinary(), nullable=False),
        sa.Column("key_version", sa.SmallInteger(), nullable=False),
        sa.Column("leader", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result_sha256", sa.LargeBinary(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("octet_length(dedup_key) = 32", name=op.f("ck_result_cache_dedup_key_length")),
        sa.CheckConstraint(
            "result_sha256 IS NOT NULL OR (leader IS NOT NULL AND lease_until IS NOT NULL)",
            name=op.f("ck_result_cache_claimed_or_ready"),
        ),
        sa.ForeignKeyConstraint(
            ["company_id", "result_sha256"],
            ["results.company_id", "results.sha256"],
            name=op.f("fk_result_cache_company_id_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("company_id", "dedup_key", name=op.f("pk_result_cache")),
    )
    op.execute(BINARY_RESULTS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS binary_results")
    op.drop_table("result_cache")
    op.drop_table("result_chunks")
    op.drop_table("results")
