"""Seed 004's recorder, `TimescaleIntegration` (the seed's name), on plain partitioned PostgreSQL.

`log_platform_event` / `log_cost_event` / `log_agent_execution` take a validated event and return
once it is buffered: a background writer sends 100 events or whatever 5 s gathered (configurable)
in one transaction, removing them from the buffer only after the COMMIT. When PostgreSQL is
unreachable the batch goes to the durable spool (with `spool_dir`) and is replayed, exactly once
(event ids), as soon as the database answers, with no new traffic needed; without a spool it stays
in the bounded buffer and is retried. When the buffer is full the `overflow` policy decides: wait
for room (`block`), append to the spool (`spill`: the caller waits one fsync'd append, never the
database), or drop and count (`drop`, only if chosen). `stats` has the counters.

While open it folds the event rollups every `fold_interval` seconds (60; None: never), skipping a
turn when another process is folding; the queries are exact either way (`events.rollups`).

It keeps up to 3 connections of its engine's pool: a batch of 100 events or more is written as two
halves at once (`writer.EventBatcher`), and queries and folds share the third. They are closed, not
given back to the pool, by `close()` (they carry asyncpg's own jsonb codec, `Leases(plain_json=True)`).

Under row-level security (a service role, revision 0026) events are written as their tenants
(`writer.write_events`), a `log_*` call inside `tenant("a")` for another tenant raises
`TenantIsolationError` (nothing buffered), and the queries read as their `tenant_id`. Folds are
platform work: a recorder whose login RLS binds stops its periodic fold at the first turn (one info
line); run `fold_event_rollups` / the maintenance command as the owner.

Disabled by configuration (`PERSISTENCE_EVENTS_ENABLED=false`, or `enabled=False`), it logs one
warning and accepts events without recording them (counted as `dropped`); its queries raise
`ConfigurationError`, since they cannot answer.

`get_timescale_integration()` is the process-wide recorder (built on first use, from the
environment unless given an engine and options); `close()` ends it, and the next call builds a new one.
"""

from __future__ import annotations

import asyncio
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Literal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.batch import BatchStats, Overflow
from persistence.ai_calls.leases import Leases
from persistence.config import EventsConfig
from persistence.errors import ConfigurationError, Endpoint, PersistenceError, ValidationError
from persistence.events.queries import AgentRuns, agent_runs, cost_day, daily_cost, window_hours
from persistence.events.records import AgentExecution, CostEvent, Event, PlatformEvent
from persistence.events.rollups import FoldResult, fold_event_rollups_raw
from persistence.events.writer import EventBatcher
from persistence.observe.loggers import get_logger
from persistence.tenancy import as_tenant, check_tenant, row_security_binds

__all__ = ["TimescaleIntegration", "get_timescale_integration"]

log = get_logger("persistence.events")


class TimescaleIntegration:
    """Records platform, cost and agent-execution events. Use `async with` or call `close()`.

    `engine`: the engine to write with (None: one is built from the environment on first use, and
    disposed by `close()`). Options left None come from `EventsConfig` (the environment).
    """

    def __init__(
        self,
        engine: AsyncEngine | None = None,
        *,
        enabled: bool | None = None,
        spool_dir: Path | str | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        max_buffered: int | None = None,
        overflow: Overflow | None = None,
        retry_interval: float | None = None,
        max_retry_interval: float | None = None,
        fold_interval: float | None = 60.0,
        config: EventsConfig | None = None,
    ) -> None:
        if engine is not None and not isinstance(engine, AsyncEngine):
            raise ValidationError(f"engine must be an AsyncEngine or None, got {type(engine).__name__}")
        cfg = config if config is not None else EventsConfig()
        self.enabled = cfg.enabled if enabled is None else enabled
        spool = spool_dir if spool_dir is not None else cfg.spool_dir
        policy: Overflow = overflow or cfg.overflow or ("spill" if spool is not None else "block")
        self.engine = engine
        self._owns_engine = engine is None
        self._leases: Leases | None = None
        self._ready = asyncio.Lock()
        self._said_disabled = False
        self._ignored = 0
        self.closed = False
        self._batcher: EventBatcher | None = None
        if fold_interval is not None and (
            isinstance(fold_interval, bool)
            or not isinstance(fold_interval, int | float)
            or not fold_interval > 0
        ):
            raise ValidationError(f"fold_interval must be a positive number or None, got {fold_interval!r}")
        self.fold_interval = fold_interval
        self._folder: asyncio.Task[None] | None = None
        if self.enabled:
            # Validates every option now (ValidationError), before any event is accepted.
            self._batcher = EventBatcher(
                None,
                spool_dir=spool,
                overflow=policy,
                batch_size=batch_size if batch_size is not None else cfg.batch_size,
                flush_interval=flush_interval if flush_interval is not None else cfg.flush_interval,
                max_buffered=max_buffered if max_buffered is not None else cfg.max_buffered,
                retry_interval=retry_interval if retry_interval is not None else cfg.retry_interval,
                max_retry_interval=(
                    max_retry_interval if max_retry_interval is not None else cfg.max_retry_interval
                ),
            )

    async def __aenter__(self) -> TimescaleIntegration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def stats(self) -> BatchStats:
        """queued / written / spooled / replayed / rejected / dropped, and what is buffered or spooled now."""
        if self._batcher is None:
            return BatchStats(0, 0, 0, 0, 0, 0, dropped=self._ignored)
        return self._batcher.stats

    # -- the seed's API ---------------------------------------------------------------------------

    async def log_platform_event(self, event: PlatformEvent) -> None:
        if not self._buffered(event, PlatformEvent):
            await self._log(event, PlatformEvent)

    async def log_cost_event(self, event: CostEvent) -> None:
        if not self._buffered(event, CostEvent):
            await self._log(event, CostEvent)

    async def log_agent_execution(self, execution: AgentExecution) -> None:
        if not self._buffered(execution, AgentExecution):
            await self._log(execution, AgentExecution)

    async def flush_all(self) -> None:
        """Return once every event logged before the call is committed (or, in an outage, spooled)."""
        if self._batcher is not None:
            await self._batcher_ready()
            await self._batcher.flush()

    async def get_tenant_daily_cost(
        self, tenant_id: str, date: date | None = None, *, time_zone: str = "UTC"
    ) -> Decimal:
        """The sum of `tenant_id`'s cost events on `date` (default today) in `time_zone` (an IANA
        name), in USD, exact; this recorder's buffered events are flushed first."""
        day = cost_day(tenant_id, date, time_zone)
        leases = await self._for_query()
        value: Decimal = await leases.attempts(
            lambda raw: as_tenant(raw, day.tenant_id, lambda r: daily_cost(r, day))
        )
        return value

    async def get_agent_success_rate(self, agent_id: str, tenant_id: str, hours: float = 24) -> float:
        """Percent (0-100) of `agent_id`'s runs for `tenant_id` in the last `hours` (database clock)
        that succeeded; 0.0 when there were none. `agent_runs` gives the counts."""
        return (await self.agent_runs(agent_id, tenant_id, hours)).success_rate

    async def agent_runs(self, agent_id: str, tenant_id: str, hours: float = 24) -> AgentRuns:
        window = window_hours(hours)
        leases = await self._for_query()
        runs: AgentRuns = await leases.attempts(
            lambda raw: as_tenant(raw, tenant_id, lambda r: agent_runs(r, agent_id, tenant_id, window))
        )
        return runs

    async def start(self) -> None:
        """Connect and start the writer now (it replays what an earlier run left in the spool);
        the first event does it otherwise."""
        if self._batcher is not None:
            await self._batcher_ready()
            await self._batcher.open()

    async def close(self, timeout: float | None = None) -> BatchStats:  # noqa: ASYNC109 (a bound on the shutdown)
        """Flush (within `timeout` seconds, if given: what is left then is spooled), stop the writer,
        give back connections; the process-wide recorder is forgotten if this is it."""
        global _instance
        if _instance is self:
            _instance = None
        if self.closed:
            return self.stats
        self.closed = True
        try:
            if self._batcher is not None and self._batcher.leases is not None:
                return await self._batcher.close(timeout)
            return self.stats
        finally:
            if self._folder is not None:
                self._folder.cancel()
                await asyncio.gather(self._folder, return_exceptions=True)
            if self._leases is not None:
                await self._leases.close()
            if self._owns_engine and self.engine is not None:
                await self.engine.dispose()

    # -- internals --------------------------------------------------------------------------------

    def _buffered(self, event: Event, kind: type[Event]) -> bool:
        """The common case without a coroutine: a valid event appended to a running batcher's
        buffer with room. False: nothing done (`_log` decides, raises or waits)."""
        batcher = self._batcher
        if type(event) is not kind or self.closed or batcher is None or batcher.leases is None:
            return False
        check_tenant(event.tenant_id)
        return batcher._append_nowait(event)

    async def _log(self, event: Event, kind: type[Event]) -> None:
        if not isinstance(event, kind):
            raise ValidationError(f"expected a {kind.__name__}, got {type(event).__name__}")
        if self.closed:
            raise PersistenceError("TimescaleIntegration is closed")
        check_tenant(event.tenant_id)  # inside tenant("a"), b's event is refused here, not buffered
        if self._batcher is None:
            self._ignored += 1
            if not self._said_disabled:
                self._said_disabled = True
                log.warning("event recording is disabled by configuration; events are not recorded",
                            setting="PERSISTENCE_EVENTS_ENABLED")  # fmt: skip
            return
        if self._batcher.leases is None:
            await self._batcher_ready()
        await self._batcher.put(event)

    async def _connected(self) -> Leases:
        if self._leases is None:
            async with self._ready:
                if self._leases is None:
                    if self.engine is None:
                        from persistence.engine import create_database_engine

                        # No connectivity check: the recorder must start while PostgreSQL is down.
                        self.engine = await create_database_engine(check=False)
                    # The recorder writes JSON as text and reads none: asyncpg's C codec for jsonb.
                    self._leases = Leases(self.engine, 3, Endpoint.of_url(self.engine.url),
                                          "TimescaleIntegration", plain_json=True)  # fmt: skip
        return self._leases

    async def _batcher_ready(self) -> None:
        leases = await self._connected()
        assert self._batcher is not None
        if self._batcher.leases is None:
            self._batcher.leases = leases
        if self.fold_interval is not None and self._folder is None and not self.closed:
            self._folder = asyncio.create_task(self._fold_loop(leases, self.fold_interval))

    async def _fold_loop(self, leases: Leases, interval: float) -> None:
        """Keeps the rollups' deltas short (the queries' speed, not their correctness). Ends at the
        first turn where row-level security binds the login: folding is the owner's work."""
        while True:
            await asyncio.sleep(interval)
            try:
                folded = await leases.attempts(_fold_unless_bound)
            except PersistenceError as exc:  # an outage: the next turn folds what is left
                log.info("event rollup fold failed; retried next turn", error=type(exc).__name__)
                continue
            if folded is None:
                log.info("row-level security binds this login: event rollups are not folded here; "
                         "run fold_event_rollups (or the maintenance command) as the owner")  # fmt: skip
                return

    async def _for_query(self) -> Leases:
        if not self.enabled:
            raise ConfigurationError("event recording is disabled by configuration; nothing to query")
        if self.closed:
            raise PersistenceError("TimescaleIntegration is closed")
        await self.flush_all()
        return await self._connected()


async def _fold_unless_bound(raw: asyncpg.Connection) -> FoldResult | None:
    """The periodic fold, or None where row-level security binds the login (platform work)."""
    if await row_security_binds(raw):
        return None
    return await fold_event_rollups_raw(raw, wait=False)


_instance: TimescaleIntegration | None = None


def get_timescale_integration(
    engine: AsyncEngine | None = None,
    *,
    spool_dir: Path | str | None = None,
    overflow: Literal["block", "spill", "drop"] | None = None,
    config: EventsConfig | None = None,
) -> TimescaleIntegration:
    """The process-wide recorder, built by the first call (later calls return it; giving another
    engine then is a `ValidationError`)."""
    global _instance
    if _instance is None or _instance.closed:
        _instance = TimescaleIntegration(engine, spool_dir=spool_dir, overflow=overflow, config=config)
    elif engine is not None and engine is not _instance.engine:
        raise ValidationError(
            "the process-wide recorder already exists with another engine; close() it first"
        )
    return _instance
