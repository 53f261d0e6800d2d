"""rate limits: GCRA state per subject counter and concurrency slots (see `persistence.rate_limits`)

- `rate_limit_state` (company_id, scope, subject, metric, period) -> `tat` (NUMERIC epoch seconds).
- `rate_limit_slots` (company_id, scope, subject, slot) -> holder, expires_at (the lease).

Both tables are LOGGED (crash-safe, replicated); limiter transactions may commit with
`synchronous_commit = off` instead. fillfactor 50 leaves room on each page for HOT updates (no
updated column is indexed), so a hot key's updates never touch the index. `rate_limit_configs`
needs no change: its unique key already serves the precedence lookup.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 13:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_state",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("tat", sa.Numeric(), nullable=False),
        sa.PrimaryKeyConstraint(
            "company_id", "scope", "subject", "metric", "period", name=op.f("pk_rate_limit_state")
        ),
        postgresql_with={"fillfactor": "50"},
    )
    op.create_table(
        "rate_limit_slots",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "expires_at", sa.DateTime(timezone=True), server_default=sa.text("'-infinity'"), nullable=False
        ),
        sa.PrimaryKeyConstraint("company_id", "scope", "subject", "slot", name=op.f("pk_rate_limit_slots")),
        postgresql_with={"fillfactor": "50"},
    )


def downgrade() -> None:
    op.drop_table("rate_limit_slots")
    op.drop_table("rate_limit_state")
