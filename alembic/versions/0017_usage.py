"""usage: seed 001's `usage` rollups (daily and monthly per company and user), apart from the quota counters

- `usage` (company_id, user_id, period, period_start) -> period_end (inclusive), requests_count,
  tokens_used, cost_usd, updated_at; 'daily' and 'monthly' rows on the user's local dates; user_id
  '' for requests admitted without a user. Written by `Quotas.settle`'s statement (an upsert of the
  settled actual usage) and by `Quotas.rebuild_usage`; a manual reset of a quota counter leaves it.
- `quota_reservations.usage_time_zone`: the zone whose local dates filed a settled reservation's
  usage (set by settlement; NOT NULL exactly when settled).

The upgrade files every reservation already settled (zone: the user's quota's, UTC without one),
so `usage` starts equal to a rebuild. The downgrade drops the table and the column (the usage is
still derivable from the settled reservations).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 15:10:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose (a revision must not change when the package does); `persistence.quotas_sql`
# files settled reservations the same way.
ZONES = """
UPDATE quota_reservations r
SET usage_time_zone = coalesce((SELECT q.time_zone FROM quotas q
                                WHERE q.company_id = r.company_id AND q.user_id = r.user_id
                                ORDER BY q.enabled DESC, q.window_seconds IS NOT NULL, q.quota_id LIMIT 1),
                               'UTC')
WHERE r.state = 'settled'
"""
FILL = """
INSERT INTO usage (company_id, user_id, period, period_start, period_end, requests_count, tokens_used, cost_usd)
SELECT r.company_id, r.user_id, p.period, p.period_start, p.period_end,
       sum(r.actual_requests::bigint), sum(r.actual_tokens::bigint), sum(r.actual_cost_usd)
FROM quota_reservations r
CROSS JOIN LATERAL (SELECT (r.created_at AT TIME ZONE r.usage_time_zone)::date AS day) d
CROSS JOIN LATERAL (VALUES ('daily', d.day, d.day),
                           ('monthly', date_trunc('month', d.day::timestamp)::date,
                            (date_trunc('month', d.day::timestamp) + interval '1 month - 1 day')::date))
     AS p (period, period_start, period_end)
WHERE r.state = 'settled'
GROUP BY r.company_id, r.user_id, p.period, p.period_start, p.period_end
"""


def upgrade() -> None:
    op.add_column("quota_reservations", sa.Column("usage_time_zone", sa.String(length=64), nullable=True))
    op.execute(ZONES)
    op.create_check_constraint(
        "ck_quota_reservations_usage_time_zone_given",
        "quota_reservations",
        "(state = 'settled') = (usage_time_zone IS NOT NULL)",
    )
    op.create_table(
        "usage",
        sa.Column("company_id", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("period", sa.String(length=20), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("requests_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=6), server_default=sa.text("0"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("period IN ('daily', 'monthly')", name=op.f("ck_usage_period_known")),
        sa.CheckConstraint(
            "period_end = CASE period WHEN 'daily' THEN period_start "
            "ELSE (period_start + interval '1 month - 1 day')::date END "
            "AND (period = 'daily' OR extract(day FROM period_start) = 1)",
            name=op.f("ck_usage_period_valid"),
        ),
        sa.CheckConstraint(
            "requests_count >= 0 AND tokens_used >= 0 AND cost_usd >= 0", name=op.f("ck_usage_amounts_valid")
        ),
        sa.PrimaryKeyConstraint("company_id", "user_id", "period", "period_start", name=op.f("pk_usage")),
    )
    op.create_index(
        op.f("ix_usage_company_id_period_period_start"), "usage", ["company_id", "period", "period_start"]
    )
    op.execute(FILL)


def downgrade() -> None:
    # Names written out, so `rollback`'s confirmation can list them (migration_drops.py).
    op.drop_index("ix_usage_company_id_period_period_start", table_name="usage")
    op.drop_table("usage")
    op.drop_constraint("ck_quota_reservations_usage_time_zone_given", "quota_reservations", type_="check")
    op.drop_column("quota_reservations", "usage_time_zone")
