"""Hourly UTC rollups of seed 004's cost events and agent executions (revision 0022).

Writers never touch a rollup row: a statement-level trigger on each event table appends one delta
row per (bucket) a statement touched, in the writer's transaction (append-only, no unique key, so
concurrent writers never wait on each other); `persistence.events.rollups` folds deltas into the
rollups under an advisory lock. A late event is simply a delta of its old hour. Readers add
rollups and unfolded deltas, so they are exact at every moment. The rollups are not partitioned:
they outlive the raw partitions that retention drops. Money sums are unconstrained NUMERIC (exact).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Identity, Index, Numeric, PrimaryKeyConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base
from persistence.models.events import SCHEMA

COST_MEASURES = ("cost_usd", "events")
AGENT_MEASURES = ("runs", "successes", "quality_sum", "quality_count", "cost_usd")


class _CostMeasures:
    cost_usd: Mapped[Decimal] = mapped_column(Numeric)
    events: Mapped[int] = mapped_column(BigInteger)


class _AgentMeasures:
    runs: Mapped[int] = mapped_column(BigInteger)
    successes: Mapped[int] = mapped_column(BigInteger)
    # Over the runs that had a score (quality_count of them).
    quality_sum: Mapped[Decimal] = mapped_column(Numeric)
    quality_count: Mapped[int] = mapped_column(BigInteger)
    # NULL costs count as 0.
    cost_usd: Mapped[Decimal] = mapped_column(Numeric)


class TenantCostHourly(_CostMeasures, Base):
    """Cost per tenant, UTC hour, cost type and service."""

    __tablename__ = "tenant_cost_hourly"
    __table_args__ = {"schema": SCHEMA}

    tenant_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    cost_type: Mapped[str] = mapped_column(String(20), primary_key=True)
    service: Mapped[str] = mapped_column(String(50), primary_key=True)


class TenantCostHourlyDelta(_CostMeasures, Base):
    """What a statement on `tenant_cost_events` added (or, negative, removed); folded away."""

    __tablename__ = "tenant_cost_hourly_deltas"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "id"), {"schema": SCHEMA})  # tenant first: 0025

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    tenant_id: Mapped[str] = mapped_column(String(100))
    hour: Mapped[datetime]
    cost_type: Mapped[str] = mapped_column(String(20))
    service: Mapped[str] = mapped_column(String(50))


Index(
    "ix_tenant_cost_hourly_deltas_tenant_id_hour", TenantCostHourlyDelta.tenant_id, TenantCostHourlyDelta.hour
)


class AgentExecutionHourly(_AgentMeasures, Base):
    """Runs per tenant, agent and UTC hour."""

    __tablename__ = "agent_execution_hourly"
    __table_args__ = {"schema": SCHEMA}

    tenant_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)


class AgentExecutionHourlyDelta(_AgentMeasures, Base):
    """What a statement on `agent_executions` added (or, negative, removed); folded away."""

    __tablename__ = "agent_execution_hourly_deltas"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "id"), {"schema": SCHEMA})  # tenant first: 0025

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    tenant_id: Mapped[str] = mapped_column(String(100))
    agent_id: Mapped[str] = mapped_column(String(100))
    hour: Mapped[datetime]


Index(
    "ix_agent_execution_hourly_deltas_tenant_id_agent_id_hour",
    AgentExecutionHourlyDelta.tenant_id,
    AgentExecutionHourlyDelta.agent_id,
    AgentExecutionHourlyDelta.hour,
)
