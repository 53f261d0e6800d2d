"""API key lookup under row-level security: `api_key_candidates(key_id)`, a SECURITY DEFINER function

`ApiKeys.authenticate` starts from a key id whose tenant it does not know yet, so under revision
0026's policies a service login (`persistence_service`) would find no key at all. This function
returns, for one key id, only what authentication needs (company, user, key id, the stored HMAC,
scopes, expiry, and the revoked / expired / active flags on the server's clock, which is the
calling statement's `statement_timestamp()`), with the rights of its owner: the role running this
revision, the tables' owner, which RLS does not bind (it is not FORCEd). Nothing else of another
tenant is reachable through it, and only with a key id (95 random bits) in hand.

- `SECURITY DEFINER` with a fixed `search_path` (`pg_catalog, pg_temp`; every table qualified), so
  a caller's objects cannot stand in for ours.
- EXECUTE revoked from PUBLIC, granted to `persistence_service` (and so to `persistence_operator`,
  a member).
- The owner keeps its one-statement join (`persistence.api_keys._LOOKUP`); only logins that RLS
  binds call the function.

Downgrade: drops the function.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 22:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0027"
down_revision: str | Sequence[str] | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "public.api_key_candidates(character varying)"

CREATE = """
CREATE FUNCTION public.api_key_candidates(p_key_id character varying)
RETURNS TABLE (
    company_id character varying,
    user_id character varying,
    key_id character varying,
    secret_hash bytea,
    scopes character varying[],
    expires_at timestamp with time zone,
    revoked boolean,
    expired boolean,
    active boolean,
    now timestamp with time zone
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.company_id, k.user_id, k.key_id, k.secret_hash, k.scopes::character varying[], k.expires_at,
           k.revoked_at IS NOT NULL,
           coalesce(k.expires_at <= statement_timestamp(), false),
           c.active AND coalesce(u.active, true),
           statement_timestamp()
      FROM public.api_keys k
      JOIN public.companies c ON c.company_id = k.company_id
      LEFT JOIN public.users u ON u.company_id = k.company_id AND u.user_id = k.user_id
     WHERE k.key_id = p_key_id
$$
"""


def upgrade() -> None:
    op.execute(CREATE)
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO persistence_service")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
