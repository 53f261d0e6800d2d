"""How a batch of events reaches PostgreSQL: one transaction, one idempotent INSERT per table.

A batch is COPied (binary) into each table it has rows for, in one transaction. A replayed event
(a lost COMMIT acknowledgement, a spool replayed after a crash) makes the primary key
(tenant_id, time, event_id) refuse that COPY; the batch is then written again as
`INSERT ... SELECT FROM unnest(<one array per column>) ON CONFLICT DO NOTHING`, which skips what is
stored. Replays are rare, so ingest runs at COPY speed; `bench/bench_events.py` measured the
always-idempotent shapes (unnest INSERT, and COPY into a temporary staging table + INSERT ... ON
CONFLICT) at 0.25-0.65x of a raw COPY (BENCHMARKS.md).

`EventBatcher` is the ledger's `BatchWriter` (buffer, writer task, spool, replay, refusal
bisection) over these writes; a batch of `2 * SPLIT_AT` events or more is written as two halves at
once on two connections (each half its own transaction, settled on its own).

Under row-level security (a service role, revision 0026) PostgreSQL refuses COPY FROM into the
tables: where `tenancy.row_security_binds` says the login is bound, a batch is grouped by tenant and
each group written with the INSERTs, its tenant set first, all in the batch's one transaction (the
owner pays one cached lookup per batch for the check).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from itertools import islice
from operator import attrgetter
from pathlib import Path
from typing import Any

import asyncpg

from persistence.ai_calls.batch import BatchWriter, Overflow
from persistence.ai_calls.batch_outcomes import is_refusal
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


# A row is its event's attributes in the table's column order (the JSON columns from the text
# validation already produced; enum members are `str`s, sent as their values): one C call per event.
_ATTRIBUTE = {"event_data": "event_data_json", "metadata": "metadata_json"}
_PLATFORM_ROW = attrgetter(*(_ATTRIBUTE.get(c, c) for c in PLATFORM_COLUMNS))
_COST_ROW = attrgetter(*(_ATTRIBUTE.get(c, c) for c in COST_COLUMNS))
_AGENT_ROW = attrgetter(*(_ATTRIBUTE.get(c, c) for c in AGENT_COLUMNS))


def _rows(events: Sequence[Event]) -> tuple[list[tuple[object, ...]], ...]:
    platform: list[tuple[object, ...]] = []
    cost: list[tuple[object, ...]] = []
    agent: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, PlatformEvent):
            platform.append(_PLATFORM_ROW(e))
        elif isinstance(e, CostEvent):
            cost.append(_COST_ROW(e))
        else:
            agent.append(_AGENT_ROW(e))
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


# Half of the smallest batch written as two concurrent halves (`EventBatcher._settle`).
SPLIT_AT = 50


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

    async def _settle(self, batch: list[Event]) -> list[Event]:
        """A batch of at least `2 * SPLIT_AT` events is written as two halves at once, on two leased
        connections: the server stores one half while this process encodes and sends the other
        (a two-deep pipeline; one connection leaves each side idle in turn). Each half commits on
        its own, so a failure leaves the other half's outcome standing: a refused half is bisected
        alone (idempotent writes), a half cut off by an outage is spooled or kept, and a half that
        committed is counted even when closing cancels the other one."""
        leases = self.leases
        if len(batch) < 2 * SPLIT_AT or leases is None or leases.size < 2 or leases.pinned:
            return await super()._settle(batch)  # (a test's one pinned connection: no second one)
        middle = len(batch) // 2
        halves = (batch[:middle], batch[middle:])
        tasks = [asyncio.ensure_future(self._write(half)) for half in halves]
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            self._count_cancelled(batch, halves, tasks)
            raise
        written = [outcome for outcome in outcomes if isinstance(outcome, int)]
        self._written += sum(written)
        failures = [(half, o) for half, o in zip(halves, outcomes, strict=True) if not isinstance(o, int)]
        for _, outcome in failures:
            if not isinstance(outcome, Exception):
                raise outcome  # not an error of the write (cancelled from inside): the buffer keeps the batch
        outage = next((o for _, o in failures if not is_refusal(o)), None)
        if outage is not None:
            self._failed(outage, "database unavailable")  # one outage, one step of the backoff
        elif written:
            self._succeeded()
        else:
            self._healthy = True  # both halves refused: the database answered, it judged them
        left: list[Event] = []
        try:
            for half, outcome in failures:
                if outage is None and self._healthy:
                    left += await self._split_refused(half, outcome)  # not written again whole
                else:  # down (or went down while the other half was bisected): no more knocking
                    left += await self._keep(half)
        except asyncio.CancelledError:
            committed = [half for half, o in zip(halves, outcomes, strict=True) if isinstance(o, int)]
            self._drop_committed(batch, committed)
            raise
        return left

    def _count_cancelled(
        self, batch: list[Event], halves: tuple[list[Event], ...], tasks: Sequence[asyncio.Future[int]]
    ) -> None:
        """Closing cancelled the writer while the halves ran: a half that committed is counted and
        taken out of the buffer (`_drop_committed`)."""
        committed: list[list[Event]] = []
        for half, task in zip(halves, tasks, strict=True):
            if task.done() and not task.cancelled() and task.exception() is None:
                self._written += task.result()
                committed.append(half)
        self._drop_committed(batch, committed)

    def _drop_committed(self, batch: list[Event], committed: list[list[Event]]) -> None:
        """Closing cancelled the writer after a half committed: when the batch is the buffer's head
        (`_drain`), the committed events leave it, so `close()` does not spool them as unwritten;
        the rest stays at the head. A batch from the spool (`_replay` settling a refused chunk) is
        not in the buffer: its chunk stays in the spool, replayed as a no-op for that half."""
        done = {id(e) for half in committed for e in half}
        buffer = self._buffer
        if not done or len(buffer) < len(batch):
            return
        if not all(a is b for a, b in zip(islice(buffer, len(batch)), batch, strict=False)):
            return
        for _ in batch:
            buffer.popleft()
        buffer.extendleft(reversed([e for e in batch if id(e) not in done]))

    def _key(self, record: Event) -> str:
        return event_key(record)

    def _encode(self, record: Event) -> dict[str, Any]:
        return encode_event(record)

    def _decode(self, data: Mapping[str, Any]) -> Event:
        return decode_event(data)

    def _describe(self, record: Event) -> dict[str, Any]:
        return {"key": event_key(record), "tenant_id": record.tenant_id}
