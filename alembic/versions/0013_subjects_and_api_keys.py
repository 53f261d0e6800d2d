"""subjects and API keys: `companies` (tenants), seed 001's `users` without its plaintext `api_key`, `api_keys`

- `companies`: `company_id` (the tenant id the limits tables and the ledger's `organization_id`
  use), name, tier, active.
- `users`: seed 001's columns (user_id, name, email, created_at, active) keyed by
  (company_id, user_id); email unique per company. The seed's `api_key VARCHAR(64) UNIQUE` column
  is not created: keys are never stored.
- `api_keys`: key id, HMAC-SHA256 of the key under a server-side pepper, display prefix, scopes,
  expiry, revocation, rotation link, last use (see `persistence.api_keys`). Keyed by
  (company_id, key_id), plus a unique index on key_id alone: the one lookup authentication makes.

The downgrade drops the three tables (and every API key: they cannot be re-created, only re-issued).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 13:20:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "companies",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("tier", sa.String(length=20), server_default=sa.text("'basic'"), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("company_id <> ''", name=op.f("ck_companies_company_given")),
        sa.CheckConstraint("tier <> ''", name=op.f("ck_companies_tier_given")),
        sa.PrimaryKeyConstraint("company_id", name=op.f("pk_companies")),
    )
    op.create_table(
        "users",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("user_id <> ''", name=op.f("ck_users_user_given")),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["companies.company_id"],
            name=op.f("fk_users_company_id_companies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("company_id", "user_id", name=op.f("pk_users")),
        sa.UniqueConstraint("company_id", "email", name=op.f("uq_users_company_id_email")),
    )
    op.create_table(
        "api_keys",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=True),
        sa.Column("name", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("display_prefix", sa.String(length=40), nullable=False),
        sa.Column(
            "scopes", postgresql.ARRAY(sa.String(length=64)), server_default=sa.text("'{}'"), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rotated_from", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("environment IN ('live', 'test')", name=op.f("ck_api_keys_environment_known")),
        sa.CheckConstraint("octet_length(secret_hash) = 32", name=op.f("ck_api_keys_secret_hash_sha256")),
        sa.CheckConstraint("key_id <> ''", name=op.f("ck_api_keys_key_id_given")),
        sa.ForeignKeyConstraint(
            ["company_id"], ["companies.company_id"], name=op.f("fk_api_keys_company_id_companies"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["company_id", "user_id"], ["users.company_id", "users.user_id"],
            name="fk_api_keys_company_id_user_id_users", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("company_id", "key_id", name=op.f("pk_api_keys")),
    )  # fmt: skip
    op.create_index("uq_api_keys_key_id", "api_keys", ["key_id"], unique=True)
    op.create_index("ix_api_keys_company_id_user_id", "api_keys", ["company_id", "user_id"])


def downgrade() -> None:
    # Names written out, so `rollback`'s confirmation can list them (migration_drops.py).
    op.drop_index("ix_api_keys_company_id_user_id", table_name="api_keys")
    op.drop_index("uq_api_keys_key_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("users")
    op.drop_table("companies")
