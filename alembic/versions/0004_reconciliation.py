"""reconciliation reports: one per (period, source), exact money, coverage, threshold, lines

Seed 000's report table kept one row per day; a re-run for another source or period overwrote it.
Now the key is (period_start, period_end, source). Money widens to NUMERIC(16, 6) (the ledger's
precision, summed) and variance to NUMERIC(12, 4) (a vendor 17x off is 1600%, which NUMERIC(5, 2)
cannot hold).

The downgrade keeps, per report_date, only the newest report, since the old key allows one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "reconciliation_reports"


def upgrade() -> None:
    op.add_column(
        TABLE,
        sa.Column("source", sa.String(length=200), server_default=sa.text("'revenium'"), nullable=False),
    )
    op.add_column(TABLE, sa.Column("cost_variance_pct", sa.Numeric(precision=12, scale=4), nullable=True))
    op.add_column(TABLE, sa.Column("coverage_pct", sa.Numeric(precision=7, scale=3), nullable=True))
    op.add_column(
        TABLE,
        sa.Column(
            "threshold_pct", sa.Numeric(precision=6, scale=3), server_default=sa.text("2"), nullable=False
        ),
    )
    op.add_column(TABLE, sa.Column("lines", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    for name, type_ in (
        ("total_cost_usd", sa.Numeric(precision=16, scale=6)),
        ("revenium_cost_usd", sa.Numeric(precision=16, scale=6)),
        ("variance_pct", sa.Numeric(precision=12, scale=4)),
    ):
        op.alter_column(TABLE, name, type_=type_)
    op.drop_constraint(op.f("uq_reconciliation_reports_report_date"), TABLE, type_="unique")
    op.create_unique_constraint(
        op.f("uq_reconciliation_reports_period_start_period_end_source"),
        TABLE,
        ["period_start", "period_end", "source"],
    )
    op.create_check_constraint(
        op.f("ck_reconciliation_reports_threshold_non_negative"), TABLE, "threshold_pct >= 0"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_reconciliation_reports_threshold_non_negative"), TABLE, type_="check")
    op.drop_constraint(
        op.f("uq_reconciliation_reports_period_start_period_end_source"), TABLE, type_="unique"
    )
    op.execute(
        "DELETE FROM reconciliation_reports r USING reconciliation_reports newer "
        "WHERE newer.report_date = r.report_date AND (newer.generated_at, newer.id) > (r.generated_at, r.id)"
    )
    op.create_unique_constraint(op.f("uq_reconciliation_reports_report_date"), TABLE, ["report_date"])
    # Values that do not fit the seed's narrower columns are clamped rather than failing the downgrade.
    op.execute("UPDATE reconciliation_reports SET variance_pct = LEAST(variance_pct, 999.99)")
    for name, type_ in (
        ("total_cost_usd", sa.Numeric(precision=12, scale=2)),
        ("revenium_cost_usd", sa.Numeric(precision=12, scale=2)),
        ("variance_pct", sa.Numeric(precision=5, scale=2)),
    ):
        op.alter_column(TABLE, name, type_=type_)
    for name in ("lines", "threshold_pct", "coverage_pct", "cost_variance_pct", "source"):
        op.drop_column(TABLE, name)
