"""Seed 004's event tables in schema `analytics`, range-partitioned by `time` (revision 0020).

`platform_events` has daily partitions, `tenant_cost_events` and `agent_executions` monthly ones,
each with a default partition (so no insert fails for want of one) and partitions created ahead by
`persistence.events.maintain_event_partitions`. The key is (tenant_id, time, event_id): the
partition column must be in every unique key, the tenant leads (it is also the (tenant, time)
btree the seed's queries range over), and the event id makes a replayed write a no-op. `time` has a
BRIN index (append-mostly, scanned by ranges). Tenants and users are the same string ids as
everywhere else (seed 004's UUIDs would refuse its own examples' "tenant-123"), without foreign keys.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import JSON, Base

SCHEMA = "analytics"
EVENT_CATEGORIES = ("user_behavior", "agent_performance", "system_health")
COST_TYPES = ("llm", "embedding", "storage", "compute")

# create_all (tests, tools) needs the schema first; the revision creates it itself.
event.listen(Base.metadata, "before_create", DDL(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))  # type: ignore[no-untyped-call]


def _known(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class PlatformEventRow(Base):
    __tablename__ = "platform_events"

    tenant_id: Mapped[str] = mapped_column(String(100))
    time: Mapped[datetime]
    event_id: Mapped[uuid.UUID]
    user_id: Mapped[str | None] = mapped_column(String(100))
    session_id: Mapped[str | None] = mapped_column(String(100))
    event_type: Mapped[str] = mapped_column(String(100))
    event_category: Mapped[str] = mapped_column(String(30))
    event_data: Mapped[JSON] = mapped_column(server_default=text("'{}'::jsonb"))
    metadata_: Mapped[JSON] = mapped_column("metadata", server_default=text("'{}'::jsonb"))

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "time", "event_id"),
        CheckConstraint(_known("event_category", EVENT_CATEGORIES), name="event_category_known"),
        {"schema": SCHEMA, "postgresql_partition_by": "RANGE (time)"},
    )


class TenantCostEventRow(Base):
    __tablename__ = "tenant_cost_events"

    tenant_id: Mapped[str] = mapped_column(String(100))
    time: Mapped[datetime]
    event_id: Mapped[uuid.UUID]
    user_id: Mapped[str | None] = mapped_column(String(100))
    cost_type: Mapped[str] = mapped_column(String(20))
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10))
    quantity: Mapped[int | None] = mapped_column(BigInteger)
    service: Mapped[str] = mapped_column(String(50))
    service_tier: Mapped[str | None] = mapped_column(String(100))
    metadata_: Mapped[JSON] = mapped_column("metadata", server_default=text("'{}'::jsonb"))
    # The ledger call (`ai_calls.id`) this cost is, if any; its event id is derived from it (revision
    # 0023's check), so a call's cost event is one row however often it is emitted.
    call_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "time", "event_id"),
        CheckConstraint(_known("cost_type", COST_TYPES), name="cost_type_known"),
        CheckConstraint(
            "call_id IS NULL OR event_id = md5('persistence.ai_call:' || call_id)::uuid",
            name="event_id_of_call",
        ),
        CheckConstraint("cost_usd >= 0", name="cost_non_negative"),
        CheckConstraint("quantity >= 0", name="quantity_non_negative"),
        {"schema": SCHEMA, "postgresql_partition_by": "RANGE (time)"},
    )


class AgentExecutionRow(Base):
    __tablename__ = "agent_executions"

    tenant_id: Mapped[str] = mapped_column(String(100))
    time: Mapped[datetime]
    event_id: Mapped[uuid.UUID]
    user_id: Mapped[str | None] = mapped_column(String(100))
    agent_id: Mapped[str] = mapped_column(String(100))
    agent_type: Mapped[str] = mapped_column(String(50))
    execution_time_ms: Mapped[int] = mapped_column(Integer)
    success: Mapped[bool] = mapped_column(Boolean)
    quality_score: Mapped[Decimal | None] = mapped_column(Numeric(7, 6))
    citation_accuracy: Mapped[Decimal | None] = mapped_column(Numeric(7, 6))
    hallucination_detected: Mapped[bool | None] = mapped_column(Boolean)
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(20, 10))
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[JSON] = mapped_column("metadata", server_default=text("'{}'::jsonb"))

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "time", "event_id"),
        CheckConstraint("execution_time_ms >= 0", name="execution_time_non_negative"),
        CheckConstraint("quality_score BETWEEN 0 AND 1", name="quality_score_in_unit_range"),
        CheckConstraint("citation_accuracy BETWEEN 0 AND 1", name="citation_accuracy_in_unit_range"),
        CheckConstraint("cost_usd >= 0", name="cost_non_negative"),
        CheckConstraint("total_tokens >= 0", name="total_tokens_non_negative"),
        {"schema": SCHEMA, "postgresql_partition_by": "RANGE (time)"},
    )


Index("ix_platform_events_time_brin", PlatformEventRow.time, postgresql_using="brin")
Index("ix_tenant_cost_events_time_brin", TenantCostEventRow.time, postgresql_using="brin")
Index("ix_agent_executions_time_brin", AgentExecutionRow.time, postgresql_using="brin")
# get_agent_success_rate: one agent of one tenant over the last hours.
Index(
    "ix_agent_executions_tenant_id_agent_id_time",
    AgentExecutionRow.tenant_id,
    AgentExecutionRow.agent_id,
    AgentExecutionRow.time,
    postgresql_include=["success"],  # revision 0022: the raw edge of a window read from the index alone
)
