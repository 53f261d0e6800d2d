"""How a batch of events reaches PostgreSQL: one transaction, one idempotent INSERT per table.

A batch is COPied (binary) into each table it has rows for, in one transaction. A replayed event
(a lost COMMIT acknowledgement, a spool replayed after a crash) makes the primary key
(tenant_id, time, event_id) refuse that COPY; the batch is then written again as
`INSERT ... SELECT FROM unnest(<one array per column>) ON CONFLICT DO NOTHING`, which skips what is
stored. Replays are rare, so ingest runs at COPY speed; `bench/bench_events.py` measured the
always-idempotent shapes (unnest INSERT, and COPY into a temporary staging table + INSERT ... ON
CONFLICT) at 0.25-0.65x of a raw COPY (BENCHMARKS.md).

`EventBatcher` is the ledger's `BatchWriter` (buffer, writer task, spool, replay, refusal
bisection) over these writes; nothing here knows about outages.

Under row-level security (a service role, revision 0026) PostgreSQL refuses COPY FROM into the
tables: where `tenancy.row_security_binds` says the login is bound, a batch is grouped by tenant and
each group written with the INSERTs, its tenant set first, all in the batch's one transaction (the
owner pays one cached lookup per batch for the check).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from persistence.ai_calls.batch import BatchWriter, Overflow
from persistence.ai_calls.leases import Leases
from persistence.events.records import (
    CostEvent,
    Event,
    PlatformEvent,
    decode_event,
    encode_event,
)
from persistence.tenancy import SET_TENANT_SQL, row_security_binds

__all__ = [
    "INSERT_AGENT",
    "INSERT_COST",
    "INSERT_PLATFORM",
    "EventBatcher",
    "write_events",
    "write_events_on_conflict",
]

INSERT_PLATFORM = """
INSERT INTO analytics.platform_events
    (tenant_id, time, event_id, user_id, session_id, event_type, event_category, event_data, metadata)
SELECT * FROM unnest($1::varchar[], $2::timestamptz[], $3::uuid[], $4::varchar[], $5::varchar[],
                     $6::varchar[], $7::varchar[], $8::jsonb[], $9::jsonb[])
ON CONFLICT DO NOTHING
"""

INSERT_COST = """
INSERT INTO analytics.tenant_cost_events
    (tenant_id, time, event_id, user_id, cost_type, cost_usd, quantity, service, service_tier, metadata, call_id)
SELECT * FROM unnest($1::varchar[], $2::timestamptz[], $3::uuid[], $4::varchar[], $5::varchar[],
                     $6::numeric[], $7::bigint[], $8::varchar[], $9::varchar[], $10::jsonb[], $11::bigint[])
ON CONFLICT DO NOTHING
"""

INSERT_AGENT = """
INSERT INTO analytics.agent_executions
    (tenant_id, time, event_id, user_id, agent_id, agent_type, execution_time_ms, success, quality_score,
     citation_accuracy, hallucination_detected, cost_usd, total_tokens, error_message, metadata)
SELECT * FROM unnest($1::varchar[], $2::timestamptz[], $3::uuid[], $4::varchar[], $5::varchar[],
                     $6::varchar[], $7::integer[], $8::boolean[], $9::numeric[], $10::numeric[],
                     $11::boolean[], $12::numeric[], $13::integer[], $14::text[], $15::jsonb[])
ON CONFLICT DO NOTHING
"""


PLATFORM_COLUMNS = ["tenant_id", "time", "event_id", "user_id", "session_id", "event_type", "event_category",
                    "event_data", "metadata"]  # fmt: skip
COST_COLUMNS = ["tenant_id", "time", "event_id", "user_id", "cost_type", "cost_usd", "quantity", "service",
                "service_tier", "metadata", "call_id"]  # fmt: skip
AGENT_COLUMNS = ["tenant_id", "time", "event_id", "user_id", "agent_id", "agent_type", "execution_time_ms",
                 "success", "quality_score", "citation_accuracy", "hallucination_detected", "cost_usd",
                 "total_tokens", "error_message", "metadata"]  # fmt: skip
_TABLES = (
    ("platform_events", PLATFORM_COLUMNS, INSERT_PLATFORM),
    ("tenant_cost_events", COST_COLUMNS, INSERT_COST),
    ("agent_executions", AGENT_COLUMNS, INSERT_AGENT),
)


def _columns(rows: list[tuple[object, ...]], width: int) -> list[list[object]]:
    return [[row[i] for row in rows] for i in range(width)]


def _count(status: str) -> int:
    """Rows a command tag ("INSERT 0 <n>", "COPY <n>") counts."""
    return int(status.rsplit(" ", 1)[-1])


def _rows(events: Sequence[Event]) -> tuple[list[tuple[object, ...]], ...]:
    platform: list[tuple[object, ...]] = []
    cost: list[tuple[object, ...]] = []
    agent: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, PlatformEvent):
            platform.append((e.tenant_id, e.time, e.event_id, e.user_id, e.session_id, e.event_type,
                             e.event_category.value, e.event_data_json, e.metadata_json))  # fmt: skip
        elif isinstance(e, CostEvent):
            cost.append((e.tenant_id, e.time, e.event_id, e.user_id, e.cost_type.value, e.cost_usd,
                         e.quantity, e.service.value, e.service_tier, e.metadata_json, e.call_id))  # fmt: skip
        else:
            agent.append((e.tenant_id, e.time, e.event_id, e.user_id, e.agent_id, e.agent_type,
                          e.execution_time_ms, e.success, e.quality_score, e.citation_accuracy,
                          e.hallucination_detected, e.cost_usd, e.total_tokens, e.error_message,
                          e.metadata_json))  # fmt: skip
    return platform, cost, agent


async def write_events(raw: asyncpg.Connection, events: Sequence[Event]) -> int:
    """Insert `events` in one transaction; returns how many were new (replays are skipped).

    A batch is COPied (binary) into the partitioned tables: the fast path, taken unless the batch
    repeats a stored event. Then the key refuses the COPY (nothing of it stays) and the batch is
    written again with `INSERT ... ON CONFLICT DO NOTHING`, which skips the stored ones. Where
    row-level security binds the login: those INSERTs, per tenant (`_insert_by_tenant`).
    """
    if await row_security_binds(raw):
        return await _insert_by_tenant(raw, events)
    per_table = _rows(events)
    try:
        written = 0
        async with raw.transaction():
            for (table, columns, _), rows in zip(_TABLES, per_table, strict=True):
                if rows:
                    written += _count(
                        await raw.copy_records_to_table(
                            table, schema_name="analytics", records=rows, columns=columns
                        )
                    )
        return written
    except asyncpg.UniqueViolationError:
        pass  # the only unique keys are the primary keys (each partition's own `<partition>_pkey`)
    return await _insert_new(raw, per_table)


async def write_events_on_conflict(raw: asyncpg.Connection, events: Sequence[Event]) -> int:
    """`write_events` without the COPY attempt: every batch as INSERT ... ON CONFLICT DO NOTHING."""
    if await row_security_binds(raw):
        return await _insert_by_tenant(raw, events)
    return await _insert_new(raw, _rows(events))


async def _insert_new(raw: asyncpg.Connection, per_table: tuple[list[tuple[object, ...]], ...]) -> int:
    async with raw.transaction():
        return await _insert_rows(raw, per_table)


async def _insert_rows(raw: asyncpg.Connection, per_table: tuple[list[tuple[object, ...]], ...]) -> int:
    written = 0
    for (_, columns, insert), rows in zip(_TABLES, per_table, strict=True):
        if rows:
            written += _count(await raw.execute(insert, *_columns(rows, len(columns))))
    return written


async def _insert_by_tenant(raw: asyncpg.Connection, events: Sequence[Event]) -> int:
    """The batch as a service role under row-level security, in one transaction: each tenant's
    events with that tenant set (no statement writes two tenants' rows), replays skipped."""
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event.tenant_id, []).append(event)
    written = 0
    async with raw.transaction():
        for tenant_id, group in groups.items():
            await raw.execute(SET_TENANT_SQL, tenant_id)
            written += await _insert_rows(raw, _rows(group))
    return written


def event_key(event: Event) -> str:
    return f"{event.kind}:{event.event_id}"


class EventBatcher(BatchWriter[Event]):
    """The recorder's buffer: `BatchWriter` writing events through `write_events` on leased connections."""

    _noun = "event"

    def __init__(
        self,
        leases: Leases | None,
        *,
        batch_size: int = 100,
        flush_interval: float = 5.0,
        max_buffered: int = 10_000,
        spool_dir: Path | str | None = None,
        retry_interval: float = 1.0,
        max_retry_interval: float = 5.0,
        overflow: Overflow = "block",
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_buffered=max_buffered,
            spool_dir=spool_dir,
            retry_interval=retry_interval,
            max_retry_interval=max_retry_interval,
            overflow=overflow,
        )
        self.leases = leases  # set before the first event (the recorder connects lazily)

    async def put(self, event: Event) -> None:
        await self._put(event)

    async def _write(self, batch: list[Event]) -> int:
        assert self.leases is not None
        written: int = await self.leases.attempts(write_events, batch)
        return written

    def _key(self, record: Event) -> str:
        return event_key(record)

    def _encode(self, record: Event) -> dict[str, Any]:
        return encode_event(record)

    def _decode(self, data: Mapping[str, Any]) -> Event:
        return decode_event(data)

    def _describe(self, record: Event) -> dict[str, Any]:
        return {"key": event_key(record), "tenant_id": record.tenant_id}
