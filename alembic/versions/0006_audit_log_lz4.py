"""audit_log.changes: LZ4 compression where the server has it

An update of a large JSON document writes its whole old and new value into `audit_log.changes`
(two documents in one value). PostgreSQL's default TOAST compression, pglz, spent most of an audited
400k-key update compressing them (about 0.6 of 1.5 s of server time); LZ4 does the same in a
fraction of that and decompresses faster when the audit log is read. Only values written from now on
are compressed with it. A server built without LZ4 keeps pglz (the upgrade changes nothing there).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 03:20:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IF_LZ4 = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE audit_log ALTER COLUMN changes SET COMPRESSION lz4;
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(_IF_LZ4)


def downgrade() -> None:
    op.execute("ALTER TABLE audit_log ALTER COLUMN changes SET COMPRESSION default")
