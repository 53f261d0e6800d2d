"""Cost events and the AI-call ledger: a logged call's cost as one cost event, never counted twice.

`AICallLogger(engine, cost_events=CostEventLink(recorder))` makes every call the logger stores
(new, not a retry of a stored key) with a cost and an `organization_id` (the tenant, as in the
ledger's own `get_tenant_daily_cost`) emit a `CostEvent` (type llm, `call_id` = the ledger's id,
`time` = the call's `created_at`, `cost_usd` = the cost the ledger stored). Its event id is derived
from the call id (`call_event_id`), so a second emission, `backfill_cost_events` or a caller logging
`CostEvent(call_id=..., time=<the call's created_at>, ...)` by hand write one row: a tenant's daily
cost from the events equals the ledger's for the same calls.

Emission never blocks or fails the call: the logger hands (id, record, cost) over after its
commit, and the link sends the events to the recorder from a task (the recorder's overflow policy
applies there, not to the caller); a failure is logged and counted (`stats`). An unpriced call
emits nothing when logged; once `reprice_calls` has priced it, `backfill_cost_events` over its
window emits it (and any emission a crash lost between the ledger's commit and the recorder).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.record import AICallRecord, _utc
from persistence.errors import PersistenceError, ValidationError
from persistence.events.recorder import TimescaleIntegration
from persistence.events.records import CostEvent, CostType, ServiceProvider
from persistence.observe.loggers import get_logger

__all__ = ["CostEventLink", "CostLinkStats", "backfill_cost_events", "call_cost_event"]

log = get_logger("persistence.events")
_PROVIDERS = {p.value for p in ServiceProvider}


def call_cost_event(
    call_id: int,
    *,
    created_at: datetime,
    organization_id: str | None,
    customer_id: str | None,
    provider: str,
    model: str,
    cost_usd: Decimal | None,
    total_tokens: int,
    input_tokens: int,
    output_tokens: int,
) -> CostEvent | None:
    """The cost event of ledger call `call_id` as stored; None when it has no cost (unpriced) or no
    tenant (`organization_id` None, or '' as the ledger stores that). The one mapping the link, the
    backfill and the seeder share."""
    if cost_usd is None or not organization_id:
        return None
    return CostEvent(
        tenant_id=organization_id,
        user_id=customer_id,
        cost_type=CostType.LLM,
        cost_usd=cost_usd,
        service=provider if provider in _PROVIDERS else ServiceProvider.OTHER,
        quantity=total_tokens,
        service_tier=model,
        metadata={
            "provider": provider,
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        },
        time=created_at,
        call_id=call_id,
    )


def _record_event(call_id: int, r: AICallRecord, cost: Decimal | None) -> CostEvent | None:
    return call_cost_event(
        call_id,
        created_at=r.created_at,
        organization_id=r.organization_id,
        customer_id=r.customer_id,
        provider=r.provider,
        model=r.model,
        cost_usd=cost,
        total_tokens=r.total_tokens,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
    )


@dataclass
class CostLinkStats:
    """emitted: handed to the recorder; skipped: unpriced or without a tenant; failed: not handed
    over (the recorder refused or was closed; `backfill_cost_events` recovers them)."""

    emitted: int = 0
    skipped: int = 0
    failed: int = 0


class CostEventLink:
    """The ledger -> cost event link (`AICallLogger(cost_events=...)`): see the module docstring."""

    def __init__(self, recorder: TimescaleIntegration) -> None:
        if not isinstance(recorder, TimescaleIntegration):
            raise ValidationError(f"recorder must be a TimescaleIntegration, got {type(recorder).__name__}")
        self.recorder = recorder
        self.stats = CostLinkStats()
        self._tasks: set[asyncio.Task[None]] = set()

    def calls_stored(self, calls: Sequence[tuple[int, AICallRecord, Decimal | None]]) -> None:
        """Called by the logger after its commit: the events are built and sent from a task, so
        the caller pays one task creation, whatever the batch."""
        task = asyncio.get_running_loop().create_task(self._send(list(calls)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, calls: list[tuple[int, AICallRecord, Decimal | None]]) -> None:
        events: list[CostEvent] = []
        for call_id, record, cost in calls:
            try:
                event = _record_event(call_id, record, cost)
            except ValidationError as exc:  # e.g. a value the event table cannot hold
                self.stats.failed += 1
                log.warning("cost event of a ledger call refused", call_id=call_id, error=str(exc))
                continue
            if event is None:
                self.stats.skipped += 1
            else:
                events.append(event)
        for i, event in enumerate(events):
            try:
                await self.recorder.log_cost_event(event)
            except PersistenceError as exc:
                self.stats.failed += len(events) - i
                log.warning("cost events of ledger calls not recorded", events=len(events) - i,
                            error=type(exc).__name__)  # fmt: skip
                return
            self.stats.emitted += 1

    async def drain(self) -> None:
        """Wait until every event emitted so far is in the recorder's hands (buffered or spooled)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# One chunk of the window, after the keyset ($after_at, $after_id), in (created_at, id) order.
_LEDGER_CALLS = text(
    "SELECT id, created_at, organization_id, customer_id, provider, model, cost_usd, total_tokens, "
    "input_tokens, output_tokens FROM ai_calls "
    "WHERE created_at >= :start AND created_at < :end AND (created_at, id) > (:after_at, :after_id) "
    "AND cost_usd IS NOT NULL AND organization_id <> '' ORDER BY created_at, id LIMIT :chunk"
)
_CHUNK = 5000


async def backfill_cost_events(
    engine: AsyncEngine, recorder: TimescaleIntegration, start: datetime, end: datetime
) -> int:
    """Emit the cost event of every priced, tenanted ledger call in [start, end) (e.g. after
    `reprice_calls`); the ones already recorded are no-ops. Returns how many were handed over (the
    recorder writes them; `flush_all()` waits for that). Reads a chunk at a time and holds no
    connection while the recorder takes the chunk."""
    lo, hi = _utc("start", start), _utc("end", end)
    if hi < lo:
        raise ValidationError("invalid period: end is before start")
    sent = 0
    after: tuple[datetime, int] = (lo, -1)
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    _LEDGER_CALLS,
                    {"start": lo, "end": hi, "after_at": after[0], "after_id": after[1], "chunk": _CHUNK},
                )
            ).all()
        for call_id, created_at, org, customer, provider, model, cost, total, inp, out in rows:
            event = call_cost_event(
                call_id,
                created_at=created_at,
                organization_id=org,
                customer_id=customer,
                provider=provider,
                model=model,
                cost_usd=Decimal(cost),
                total_tokens=total,
                input_tokens=inp,
                output_tokens=out,
            )
            if event is not None:
                await recorder.log_cost_event(event)
                sent += 1
        if len(rows) < _CHUNK:
            return sent
        after = (rows[-1][1], rows[-1][0])
