"""Who uses the platform: companies (the tenants), their users, and their API keys.

`company_id` is the tenant: the ledger's `organization_id` and the `company_id` of the limits
tables (which refer to subjects by these string ids, without foreign keys). It leads every key and
index of the tenant-owned tables here, so the schema can later be distributed by tenant.

- `companies`: one row per tenant, with its tier (the `tier` scope of `rate_limit_configs`).
- `users`: seed 001's `users` (user_id, name, email, created_at, active) inside a company; the
  seed's plaintext `api_key` column is deliberately absent (keys live in `api_keys`, hashed).
  Emails are unique per company (the seed's global UNIQUE, scoped to the tenant), NULL allowed.
- `api_keys`: only the public key id, an HMAC-SHA256 of the key (under a server-side pepper) and a
  display prefix; never the key itself (`persistence.api_keys`). The one index that does not lead
  with `company_id` is the plain index on `key_id`: authentication starts from a key whose tenant is
  not yet known. It is not unique (revision 0025: every unique key leads with the tenant); key ids
  are random, 95 bits, and `authenticate` tells rows sharing one apart by their HMAC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column, relationship

from persistence.models.base import Base, CreatedAt

API_KEY_ENVIRONMENTS = ("live", "test")


class Company(CreatedAt, Base):
    """A tenant. `tier` names its plan (`basic`, `standard`, `premium`, `enterprise`, ...)."""

    __tablename__ = "companies"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(20), server_default=text("'basic'"))
    active: Mapped[bool] = mapped_column(server_default=text("true"))

    __table_args__ = (
        CheckConstraint("company_id <> ''", name="company_given"),
        CheckConstraint("tier <> ''", name="tier_given"),
    )


class User(CreatedAt, Base):
    """Seed 001's user, inside its company (no plaintext `api_key`: see `ApiKey`)."""

    __tablename__ = "users"

    company_id: Mapped[str] = mapped_column(
        String(100), ForeignKey("companies.company_id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(server_default=text("true"))

    company: Mapped[Company] = relationship(lazy="raise")

    __table_args__ = (
        UniqueConstraint("company_id", "email"),
        CheckConstraint("user_id <> ''", name="user_given"),
    )


class ApiKey(CreatedAt, Base):
    """One API key: `secret_hash` is HMAC-SHA256(pepper, the key without its checksum).

    `user_id` NULL is a company-wide (service) key. A key works while `revoked_at` is NULL and
    `expires_at` is NULL or ahead of the server's clock; rotation sets the old key's `expires_at`
    to the end of the overlap and records it as the new key's `rotated_from`.
    """

    __tablename__ = "api_keys"

    company_id: Mapped[str] = mapped_column(
        String(100), ForeignKey("companies.company_id", ondelete="CASCADE"), primary_key=True
    )
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100), server_default=text("''"))
    environment: Mapped[str] = mapped_column(String(10))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    display_prefix: Mapped[str] = mapped_column(String(40))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(64)), server_default=text("'{}'"))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    rotated_from: Mapped[str | None] = mapped_column(String(32))

    company: Mapped[Company] = relationship(lazy="raise")

    __table_args__ = (
        ForeignKeyConstraint(
            ["company_id", "user_id"],
            ["users.company_id", "users.user_id"],
            name="fk_api_keys_company_id_user_id_users",
            ondelete="CASCADE",
        ),
        # Authentication's one lookup (the tenant is not known yet). Not unique (revision 0025: a
        # unique key must lead with the tenant); ids are 95 random bits and the HMAC tells two apart.
        Index("ix_api_keys_key_id", "key_id"),
        Index("ix_api_keys_company_id_user_id", "company_id", "user_id"),
        CheckConstraint(
            "environment IN (" + ", ".join(f"'{e}'" for e in API_KEY_ENVIRONMENTS) + ")",
            name="environment_known",
        ),
        CheckConstraint("octet_length(secret_hash) = 32", name="secret_hash_sha256"),
        CheckConstraint("key_id <> ''", name="key_id_given"),
    )
