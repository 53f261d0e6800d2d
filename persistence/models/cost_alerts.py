"""Cost alerts (seed 002's `cost_alerts` / `cost_alerts_log`): rules, their firings, and the outbox.

An alert fires at most once per rule, window and threshold, across threads and processes, because a
firing is a row of `cost_alert_firings` whose UNIQUE (alert_id, window_start, threshold) decides who
fires: `INSERT .. ON CONFLICT DO NOTHING RETURNING` (LiteLLM's in-memory dedupe sent one alert per
replica; domains.md, alerts). Only the inserting statement writes the notification into the outbox,
`cost_alerts_log`, in the same transaction; a dispatcher delivers it after commit and appends one
`attempt` row per delivery attempt beside it, so the log is both the outbox and its delivery history.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from persistence.models.base import JSON, Base, Timestamps

ALERT_SCOPES = ("all", "organization", "customer", "product", "provider", "model")
ALERT_PERIODS = ("daily", "weekly", "monthly")
THRESHOLD_KINDS = ("amount", "percent")
LOG_KINDS = ("outbox", "attempt")
# outbox: pending -> delivered | failed (gave up); attempt: how that one attempt ended.
LOG_STATUSES = ("pending", "delivered", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class CostAlert(Timestamps, Base):
    """One alert rule: spend of a scope over a calendar window in a named time zone, and thresholds.

    `thresholds` are USD amounts, or percentages of `budget_usd` (`threshold_kind`). `scope_value`
    is the organization/customer/product id, provider or model the rule watches (NULL for `all`).
    `channels` name the sinks a firing is delivered to (the dispatcher maps names to sinks).
    """

    __tablename__ = "cost_alerts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(20))
    scope_value: Mapped[str | None] = mapped_column(String(100))
    period: Mapped[str] = mapped_column(String(10))
    time_zone: Mapped[str] = mapped_column(String(64), server_default=text("'UTC'"))
    threshold_kind: Mapped[str] = mapped_column(String(10), server_default=text("'amount'"))
    thresholds: Mapped[list[Decimal]] = mapped_column(ARRAY(Numeric(20, 6)))
    budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    channels: Mapped[list[str]] = mapped_column(ARRAY(String(100)), server_default=text("'{default}'"))
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))

    __table_args__ = (
        UniqueConstraint("name"),
        CheckConstraint(_in("scope", ALERT_SCOPES), name="scope_known"),
        CheckConstraint("(scope = 'all') = (scope_value IS NULL)", name="scope_value_given"),
        CheckConstraint(_in("period", ALERT_PERIODS), name="period_known"),
        CheckConstraint(_in("threshold_kind", THRESHOLD_KINDS), name="threshold_kind_known"),
        CheckConstraint(
            "cardinality(thresholds) >= 1 AND 0 < ALL (thresholds) AND array_position(thresholds, NULL) IS NULL",
            name="thresholds_positive",
        ),
        CheckConstraint("budget_usd > 0", name="budget_positive"),
        CheckConstraint("threshold_kind <> 'percent' OR budget_usd IS NOT NULL", name="percent_has_budget"),
        CheckConstraint("cardinality(channels) >= 1", name="channels_given"),
    )


class CostAlertFiring(Base):
    """One threshold of one rule crossed in one window: the row whose insertion is the firing."""

    __tablename__ = "cost_alert_firings"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    alert_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("cost_alerts.id", ondelete="CASCADE"))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    # As configured (an amount or a percentage), and the USD amount it meant when it fired.
    threshold: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    threshold_usd: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    spend_usd: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    fired_at: Mapped[datetime] = mapped_column(server_default=text("now()"))

    alert: Mapped[CostAlert] = relationship(lazy="raise")

    __table_args__ = (
        UniqueConstraint("alert_id", "window_start", "threshold"),
        CheckConstraint("window_end > window_start", name="window_ordered"),
    )


class CostAlertLog(Base):
    """The outbox (`kind = 'outbox'`: one notification per firing and channel, with its delivery
    state) and every delivery attempt (`kind = 'attempt'`, `parent_id` = its outbox row)."""

    __tablename__ = "cost_alerts_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    firing_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("cost_alert_firings.id", ondelete="CASCADE")
    )
    parent_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("cost_alerts_log.id", ondelete="CASCADE")
    )
    channel: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(10))
    # outbox: attempts made so far; attempt: its number (1, 2, ...).
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    idempotency_key: Mapped[uuid.UUID | None]
    payload: Mapped[JSON | None]
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    response_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))

    firing: Mapped[CostAlertFiring] = relationship(lazy="raise")

    __table_args__ = (
        CheckConstraint(_in("kind", LOG_KINDS), name="kind_known"),
        CheckConstraint(_in("status", LOG_STATUSES), name="status_known"),
        CheckConstraint("(kind = 'outbox') = (parent_id IS NULL)", name="attempt_has_parent"),
        CheckConstraint(
            "kind = 'attempt' OR (idempotency_key IS NOT NULL AND payload IS NOT NULL "
            "AND next_attempt_at IS NOT NULL)",
            name="outbox_complete",
        ),
        CheckConstraint("kind = 'outbox' OR (status <> 'pending' AND attempt >= 1)", name="attempt_finished"),
    )


# One notification per firing and channel; one row per attempt number; the dispatcher's queue.
Index(
    "ix_cost_alerts_log_firing_id_channel",
    CostAlertLog.firing_id,
    CostAlertLog.channel,
    unique=True,
    postgresql_where=text("kind = 'outbox'"),
)
Index(
    "ix_cost_alerts_log_parent_id_attempt",
    CostAlertLog.parent_id,
    CostAlertLog.attempt,
    unique=True,
    postgresql_where=text("kind = 'attempt'"),
)
Index(
    "ix_cost_alerts_log_next_attempt_at",
    CostAlertLog.next_attempt_at,
    postgresql_where=text("kind = 'outbox' AND status = 'pending'"),
)
