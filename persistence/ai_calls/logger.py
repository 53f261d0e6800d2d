"""`AICallLogger`: seed 000's blocking logger, async, on raw asyncpg under the SQLAlchemy pool.

The hot path pays no ORM cost. The logger leases up to `connections` connections from the
engine's pool for its lifetime (`leases.py`: a checkout per call would pay the pool's pre-ping
round trip) and talks to them through asyncpg directly, with statements asyncpg prepares once per
connection.

- `log_call` is ONE statement in autocommit (one round trip): a CTE inserts the ledger row, its
  idempotency key and its rollup delta, or, when the key exists, returns the original id. It
  returns only after the commit, and raises on any failure.
- `log_batch` COPYs keys and rows and records the batch's id range as pending for the rollups, in
  one transaction; when a key already exists (a retried batch) it falls back to an
  `INSERT .. ON CONFLICT DO NOTHING` path that adds only the new calls. It returns the number of
  new rows. Folds aggregate pending batches and deltas into the rollups in the background: at the
  write that reaches `fold_every` rows, or the first write `fold_interval` seconds after the last
  fold (there is no timer: an idle logger folds at its next write or `close()`), and on `close()`.
- `get_stats` reads whole UTC hours from the rollups (+ unfolded deltas and pending batches' rows)
  and the partial hours at the edges from the ledger: exactly what a raw scan returns.

No call is refused for lack of a price: a call with no price in force and no `cost_usd` given is
stored unpriced (cost NULL, `cost_source` 'unpriced'), counted as such by `get_stats`, and priced
later by `reprice_calls` once a price exists.

A lost connection is replaced and the call retried once: the idempotency key makes that safe.
Keys are per organization (revision 0025): the same key under two organizations is two calls. A
call without an organization is stored under '' (`record.tenant_of`), so `log_call` writes one
tenant's rows per statement; `log_batch` / `ingest` are bulk paths and may mix tenants.

Row-level security (revision 0026): where it binds the login (a service role; checked once per
connection), `log_call` acts as its call's organization, and a batch is written per organization
(tenant set, INSERTs instead of COPY, which PostgreSQL refuses under RLS) in its one transaction. A
call with no organization is refused there (`TenantIsolationError`), and so are the cross-tenant
paths: `get_stats` and folds are platform work (the logger does not fold under RLS).

Over 500 lines on purpose: one class, whose write paths, folds and stats share its leases, price book
and fold state; its SQL is in `ledger_sql.py` and its connection leases in `leases.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from itertools import compress
from time import perf_counter
from types import TracebackType
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.leases import Leases, _Lease
from persistence.ai_calls.ledger_sql import (
    _CALL_COLUMNS,
    _IDS_LOCK,
    _INSERT_CALLS,
    _INSERT_KEYS,
    _KEY_COLUMNS,
    _KEY_HASHES,
    _NEXT_IDS,
    _SEQUENCE,
    _STATS,
    LOG_CALL,
    UNPRICED,
    Cost,
    _call_rows,
    _key_rows,
)
from persistence.ai_calls.prices import LOAD_PRICES_VERSIONED, LOAD_TENANT_PRICES, PRICES_VERSION, PriceBook
from persistence.ai_calls.record import (
    AICallRecord,
    _utc,
    hour_ceil,
    hour_floor,
    positive_int,
    positive_seconds,
    tenant_of,
)
from persistence.ai_calls.rollups import FOLD, RECORD_PENDING, fold_rollups_raw, id_runs
from persistence.ai_calls.tenant_cost import get_tenant_daily_cost
from persistence.errors import (
    ConflictError,
    Endpoint,
    PersistenceError,
    TenantIsolationError,
    TransientError,
    ValidationError,
    translate,
)
from persistence.observe.hooks import Hooks, QueryEvent, hooks_of
from persistence.observe.loggers import get_logger
from persistence.observe.logging import request_id, trace_id
from persistence.observe.statements import StatementInfo, describe, normalise
from persistence.tenancy import (
    SET_TENANT_SQL,
    check_tenant,
    current_tenant,
    in_tenant_transaction,
    row_security_binds,
)

__all__ = ["AICallLogger", "CallCostObserver", "CallObserver", "Stats"]

_log = get_logger("persistence.ai_calls.logger")

Stats = dict[str, Any]


class CallObserver(Protocol):
    """Told about calls after they committed (`AlertEvaluator` is one); runs on the hot path, so
    it must only take note (no I/O, no awaiting)."""

    def call_logged(self, record: AICallRecord) -> None: ...

    def batch_logged(self, records: Sequence[AICallRecord]) -> None: ...


class CallCostObserver(Protocol):
    """Told each NEW call's ledger id and stored cost (None: unpriced) after it committed
    (`persistence.events.CostEventLink` turns them into cost events). Runs on the hot path: it must
    only take note and hand the work to a task; `drain` awaits that work (the logger's `close()`)."""

    def calls_stored(self, calls: Sequence[tuple[int, AICallRecord, Decimal | None]]) -> None: ...

    async def drain(self) -> None: ...


# Connection-level failures (of the background fold, which runs through `_run` and gets our errors).
_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    ConnectionError,
    OSError,
)


# What each unit of work reports to hooks: operation, main table and statement, as the engine's
# instrumented statements would (log_batch is reported as its COPY into the ledger).
_UNKNOWN = StatementInfo("UNKNOWN", None, "")
_INFOS = {
    "_log_one": describe(LOG_CALL),
    "_log_many": StatementInfo(
        "COPY",
        "ai_calls",
        normalise(f"COPY ai_calls ({', '.join(_CALL_COLUMNS)}) FROM STDIN (FORMAT binary)"),
    ),
    "_fetch_stats": describe(_STATS),
    "fold_rollups_raw": describe(FOLD),
    "work": describe(LOAD_PRICES_VERSIONED),  # reload_prices
}
# log_batch where row-level security binds the login: INSERTs per organization instead of the COPY.
_RLS_BATCH = describe(_INSERT_CALLS)


def _tenant_rows(tenant_id: str) -> Callable[[asyncpg.Connection], Awaitable[list[asyncpg.Record]]]:
    async def work(raw: asyncpg.Connection) -> list[asyncpg.Record]:
        return await raw.fetch(LOAD_TENANT_PRICES, tenant_id)

    return work


class AICallLogger:
    """Seed 000's `AICallLogger` (async). Use `async with AICallLogger(engine) as log:` or `close()`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        connections: int = 4,
        price_ttl: float = 60.0,
        fold_every: int | None = 50_000,
        fold_interval: float = 60.0,
        alerts: CallObserver | None = None,
        cost_events: CallCostObserver | None = None,
        row_security: bool | None = None,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ValidationError(f"engine must be an AsyncEngine, got {type(engine).__name__}")
        connections = positive_int("connections", connections)
        if (
            isinstance(price_ttl, bool)
            or not isinstance(price_ttl, int | float)
            or not 0 <= price_ttl < math.inf
        ):
            raise ValidationError(f"price_ttl must be a finite number of seconds >= 0, got {price_ttl!r}")
        if fold_every is not None and (isinstance(fold_every, bool) or not isinstance(fold_every, int)
                                       or fold_every < 0):  # fmt: skip
            raise ValidationError(
                f"fold_every must be an int >= 0 or None (no automatic folds), got {fold_every!r}"
            )
        fold_interval = positive_seconds("fold_interval", fold_interval)
        self.engine = engine
        self.max_connections = connections
        self.prices = PriceBook(ttl=price_ttl)
        self.fold_every = fold_every
        self.fold_interval = fold_interval
        # Told about every committed call (e.g. `AlertEvaluator`); must not do I/O in the call.
        self.alerts = alerts
        # Told every new call's id and cost (opt-in: the ledger -> cost event link); never blocks.
        self.cost_events = cost_events
        if row_security is not None:
            warnings.warn(
                "AICallLogger(row_security=...) is deprecated and ignored: the logger finds out itself "
                "whether row-level security binds its login (tenancy.row_security_binds)",
                DeprecationWarning,
                stacklevel=2,
            )
        # Set once a connection shows that row-level security binds the login (a service role):
        # writes then act as each call's organization, and folds are left to the owner.
        self._rls = False
        self._folded_at = time.monotonic()
        # Hooks are attached when the engine is built, so this is fixed for the logger's life.
        self._hooks = hooks_of(engine)
        self._database = engine.url.database
        self._where = Endpoint.of_url(engine.url)
        self._leases = Leases(engine, connections, self._where)
        self._sequence: str | None = None
        self._since_fold = 0
        self._fold_task: asyncio.Task[int] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> AICallLogger:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Fold what this logger left unfolded (best effort), then give back every leased connection.

        Short-lived loggers (scripts, the sync facade) never reach `fold_every`; folding here keeps
        the rollups from collecting their deltas and pending batches forever.
        """
        if self._fold_task is not None:
            with contextlib.suppress(Exception):
                await self._fold_task
        if self.cost_events is not None:
            with contextlib.suppress(Exception):
                await self.cost_events.drain()
        if self.fold_every is not None and self._since_fold and not self._leases.closed:
            self._since_fold = 0
            await self._background_fold()
        await self._leases.close()

    def _connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A leased connection for a block (tests and maintenance; the hot paths use `_run`)."""
        return self._leases.connection()

    @property
    def _idle(self) -> list[_Lease]:
        return self._leases.idle

    def _run(self, work: Any, *args: Any) -> Awaitable[Any]:
        """`work(raw_connection, *args)` with our error types; one retry on a lost connection.

        Engines built with hooks also get a `QueryEvent` per call (these raw-asyncpg paths bypass
        the engine's instrumented dialect); without hooks this is one attribute test and no extra frame.
        """
        if self._hooks is None:
            return self._leases.attempts(work, *args)
        return self._observed(self._hooks, work, *args)

    async def _observed(self, hooks: Hooks, work: Any, *args: Any) -> Any:
        started = perf_counter()
        try:
            result = await self._leases.attempts(work, *args)
        except BaseException as exc:
            err = exc if isinstance(exc, PersistenceError) else translate(exc)
            hooks.query(
                self._event(
                    self._info(work.__name__),
                    perf_counter() - started,
                    None,
                    getattr(err, "sqlstate", None),
                    type(err if err is not None else exc).__name__,
                )
            )
            raise
        rows = len(result) if isinstance(result, list) else 1 if work.__name__ == "_log_one" else result
        hooks.query(
            self._event(
                self._info(work.__name__), perf_counter() - started, rows if isinstance(rows, int) else None
            )
        )
        return result

    def _info(self, name: str) -> StatementInfo:
        """What a unit of work reports; asked after it ran (the first one finds out about RLS)."""
        if name == "_log_many" and self._rls:
            return _RLS_BATCH
        return _INFOS.get(name, _UNKNOWN)

    def _event(
        self, info: StatementInfo, duration: float, rows: int | None, sqlstate: str | None = None,
        error: str | None = None,
    ) -> QueryEvent:  # fmt: skip
        return QueryEvent(
            operation=info.operation,
            table=info.table,
            statement=info.normalised,
            duration=duration,
            success=error is None,
            sqlstate=sqlstate,
            error=error,
            rows=rows,
            executemany=False,
            database=self._database,
            trace_id=trace_id.get(),
            request_id=request_id.get(),
        )

    # -- prices ---------------------------------------------------------------------------------

    async def _fresh_prices(self, raw: asyncpg.Connection) -> None:
        """Prices as the table has them now (a batch pays one small version read for this)."""
        prices = self.prices
        if prices.stale or (
            prices.version is not None and await raw.fetchval(PRICES_VERSION) != prices.version
        ):
            prices.replace_versioned(await raw.fetch(LOAD_PRICES_VERSIONED))

    async def _tenant_prices(self, raw: asyncpg.Connection, tenants: Iterable[str]) -> None:
        """Where row-level security binds the login, the book holds the list prices only: add each
        organization's overrides, read as that tenant, once per loaded book (so no call of a tenant
        with its own price is priced at list price). The rows are added only to the book they were
        read for, at its version (another task may reload it while this one awaits), and the
        caller quotes right after, without awaiting."""
        tenants = list(tenants)
        prices = self.prices
        for _ in range(3):
            generation = prices.generation
            loaded = [
                (tenant_id, await in_tenant_transaction(raw, tenant_id, _tenant_rows(tenant_id)))
                for tenant_id in tenants
                if tenant_id not in prices.tenants
            ]
            if prices.generation != generation:
                continue  # reloaded meanwhile: its tenants are forgotten, load them again
            if prices.version is not None and any(rows[0][0] != prices.version for _, rows in loaded):
                prices.replace_versioned(await raw.fetch(LOAD_PRICES_VERSIONED))  # the table changed
                continue
            for tenant_id, rows in loaded:
                prices.add_tenant(tenant_id, (tuple(row)[1:] for row in rows if row[1] is not None))
            return
        raise TransientError("vendor_prices kept changing while a tenant's prices were loaded")

    async def _quote_after_reload(self, raw: asyncpg.Connection, record: AICallRecord) -> Cost:
        """The cost of a call no loaded price covers: reload the prices (at most every
        `miss_interval`) and try again, else `UNPRICED` (stored without a cost, never refused)."""
        quote = None
        if self._may_reload():
            self.prices.replace_versioned(await raw.fetch(LOAD_PRICES_VERSIONED))
            if self._rls:
                await self._tenant_prices(raw, (tenant_of(record),))
            quote = self.prices.quote(record)
        return UNPRICED if quote is None else quote

    def _may_reload(self) -> bool:
        now = time.monotonic()
        if now - self.prices.missed_at < self.prices.miss_interval:
            return False
        self.prices.missed_at = now
        return True

    async def reload_prices(self) -> int:
        """Reload `vendor_prices` now (e.g. right after entering a price); returns the row count."""

        async def work(raw: asyncpg.Connection) -> int:
            self.prices.replace_versioned(await raw.fetch(LOAD_PRICES_VERSIONED))
            return len(self.prices)

        result: int = await self._run(work)
        return result

    # -- log_call -------------------------------------------------------------------------------

    async def log_call(
        self,
        provider: str,
        model: str,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: Decimal | int | str | float | None = None,
        latency_ms: int | None = None,
        customer_id: str | None = None,
        organization_id: str | None = None,
        product_id: str | None = None,
        environment: str | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
        **extra: Any,
    ) -> int:
        """Log one call (seed 000's signature; extra keywords are `AICallRecord` fields such as
        `cache_read_tokens`, `usage`, `status`, `created_at`, `event_id`). Returns the row id once
        the row is committed; a retry with the same key returns the same id. Raises
        `ValidationError` (nothing written), `ConflictError` (same key, different call), or another
        `PersistenceError`."""
        fields: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost_usd,
            "latency_ms": latency_ms,
            "customer_id": customer_id,
            "organization_id": organization_id,
            "product_id": product_id,
            "environment": environment,
            "request_id": request_id,
            "trace_id": trace_id,
            **extra,
        }
        if input_tokens is None and output_tokens is None and extra.get("usage") is None:
            raise ValidationError("invalid AI call: input_tokens and output_tokens (or usage) are required")
        return await self.log_record(AICallRecord.coerce(fields))

    async def log_record(self, record: AICallRecord) -> int:
        """`log_call` for a ready-made record."""
        check_tenant(tenant_of(record))  # inside tenant("a"), a call of b is refused before any statement
        call_id: int
        cost: Cost | None
        call_id, cost = await self._run(self._log_one, record)
        self._count_written(1)
        if self.alerts is not None:
            self.alerts.call_logged(record)
        if self.cost_events is not None and cost is not None:
            self._tell_costs([(call_id, record, cost[0])])
        return call_id

    def _tell_costs(self, calls: Sequence[tuple[int, AICallRecord, Decimal | None]]) -> None:
        """The cost observer must never fail a call that is already committed."""
        assert self.cost_events is not None
        try:
            self.cost_events.calls_stored(calls)
        except Exception as exc:  # logged: the calls are stored, the ledger stays right
            _log.warning("cost event observer failed", error=type(exc).__name__, calls=len(calls))

    async def _log_one(
        self, raw: asyncpg.Connection, r: AICallRecord, reloads: int = 0
    ) -> tuple[int, Cost | None]:
        """(the call's id, its cost fields when this wrote it; None when its key was there already).

        Where row-level security binds the login, the statement runs in a transaction that first
        sets the call's organization as the tenant (the owner: the bare statement, after one cached
        check per connection)."""
        rls = await row_security_binds(raw)
        if rls:
            self._rls = True
            _refuse_no_tenant([r])
        # The record was validated when it was built: only the price is looked up here.
        prices = self.prices
        if prices.stale:
            prices.replace_versioned(await raw.fetch(LOAD_PRICES_VERSIONED))
        if rls:
            await self._tenant_prices(raw, (tenant_of(r),))
        q: Cost | None = prices.quote(r)
        if q is None:
            q = await self._quote_after_reload(raw, r)
        args = (
            r.idempotency_key, r.payload_hash, r.created_at, r.provider, r.model, r.input_tokens,
            r.output_tokens, r.cache_read_tokens, r.cache_write_tokens, r.reasoning_tokens, r.usage_json,
            q[0], q[1], q[2], q[3], r.latency_ms,
            r.status, r.error_class, r.customer_id, tenant_of(r), r.product_id, r.environment,
            r.request_id, r.trace_id, r.hour, int(r.status != "success"), r.total_tokens,
            r.cache_write_1h_tokens, prices.version,
        )  # fmt: skip
        for _ in range(3):
            try:
                row = await (
                    in_tenant_transaction(raw, tenant_of(r), lambda raw: raw.fetchrow(LOG_CALL, *args))
                    if rls
                    else raw.fetchrow(LOG_CALL, *args)
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "pk_ai_call_keys":
                    raise
                continue  # the same key committed concurrently: now it is visible
            if row is None:
                continue  # the key's first writer committed after our snapshot
            if row["id"] is None:  # vendor_prices changed since the book was loaded: price it again
                if reloads >= 3:
                    raise TransientError("vendor_prices kept changing while a call was being priced")
                prices.replace_versioned(await raw.fetch(LOAD_PRICES_VERSIONED))
                return await self._log_one(raw, r, reloads + 1)
            if not row["same"]:
                raise _key_conflict([r.idempotency_key])
            call_id: int = row["id"]
            return call_id, q if row["new"] else None
        raise TransientError(f"could not settle idempotency key {r.idempotency_key!r}")

    # -- log_batch ------------------------------------------------------------------------------

    async def log_batch(self, calls: Iterable[AICallRecord | Mapping[str, Any]]) -> int:
        """Log many calls in one transaction; returns how many were new (retried calls are skipped).

        All-or-nothing: a bad call raises `ValidationError` before anything is written, and a key
        reused for a different call raises `ConflictError` and writes nothing.
        """
        records = _unique([AICallRecord.coerce(call) for call in _iterable_of_calls(calls)])
        if current_tenant() is not None:  # inside tenant("a"): a batch with b's calls writes nothing
            for tenant_id in {tenant_of(r) for r in records}:
                check_tenant(tenant_id)
        return await self._log_records(records)

    async def _log_records(self, records: list[AICallRecord]) -> int:
        """`log_batch` of checked, unique records (`BatchLogger` checks the tenant when a call is
        logged: its writer task writes every tenant's calls)."""
        if not records:
            return 0
        stored: list[tuple[int, AICallRecord, Decimal | None]] | None = (
            [] if self.cost_events is not None else None
        )
        written: int = await self._run(self._log_many, records, stored)
        self._count_written(written)
        if self.alerts is not None and written:
            self.alerts.batch_logged(records)
        if stored:
            self._tell_costs(stored)
        return written

    async def ingest(
        self,
        calls: Iterable[AICallRecord | Mapping[str, Any]],
        *,
        batch_size: int = 5000,
        concurrency: int = 2,
    ) -> int:
        """Bulk-load `calls` as `log_batch`es of `batch_size`, up to `concurrency` at once on
        separate connections (while one batch's rows are written, the next is priced and sent).

        Returns the number of new rows. Each batch is atomic, the whole load is not: on an error,
        the batches already committed stay, and the error is raised once the batches in flight
        have ended. Keys make a re-run of the same load add only what is missing.
        """
        batch_size = positive_int("batch_size", batch_size)
        concurrency = positive_int("concurrency", concurrency)
        calls = _iterable_of_calls(calls)
        written = 0
        running: set[asyncio.Task[int]] = set()
        failed: list[BaseException] = []

        async def settle(until: int) -> None:
            nonlocal written, running
            while len(running) > until:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                failed.extend(e for e in (t.exception() for t in done) if e is not None)
                written += sum(t.result() for t in done if t.exception() is None)
                if failed:
                    raise failed[0]

        try:
            batch: list[AICallRecord | Mapping[str, Any]] = []
            for call in calls:
                batch.append(call)
                if len(batch) == batch_size:
                    await settle(concurrency - 1)
                    running.add(asyncio.create_task(self.log_batch(batch)))
                    batch = []
            if batch:
                await settle(concurrency - 1)
                running.add(asyncio.create_task(self.log_batch(batch)))
            await settle(0)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: stop the batches in flight too
                for task in running:
                    task.cancel()
            outcomes = await asyncio.gather(*running, return_exceptions=True)
            if isinstance(exc, Exception):
                written += sum(o for o in outcomes if isinstance(o, int))
                others = len(failed) - (exc in failed) + sum(isinstance(o, Exception) for o in outcomes)
                exc.add_note(
                    f"ingest: {written} new rows of other batches were committed and stay (re-running "
                    f"the load adds only what is missing); {others} other batch(es) failed too"
                )
            raise
        return written

    async def _log_many(
        self,
        raw: asyncpg.Connection,
        records: list[AICallRecord],
        stored: list[tuple[int, AICallRecord, Decimal | None]] | None = None,
    ) -> int:
        """COPY the batch; `stored` (if given) receives (id, record, cost) of each new call.

        Where row-level security binds the login, PostgreSQL refuses COPY FROM: the batch is written
        by `_log_as_tenants` instead (INSERTs per organization, each acting as its tenant)."""
        rls = await row_security_binds(raw)  # the owner: one cached lookup per batch
        if rls:
            self._rls = True
            _refuse_no_tenant(records)
        if self._sequence is None:
            self._sequence = await raw.fetchval(_SEQUENCE)
        await self._fresh_prices(raw)
        tenants = {tenant_of(r) for r in records} if rls else set()
        await self._tenant_prices(raw, tenants)
        quotes, missing = self._quotes(records)  # no await since the prices were loaded
        if missing and self._may_reload():
            self.prices.replace_versioned(await raw.fetch(LOAD_PRICES_VERSIONED))
            await self._tenant_prices(raw, tenants)
            quotes, missing = self._quotes(records)
        ids: list[int] = await raw.fetchval(_NEXT_IDS, self._sequence, len(records), _IDS_LOCK)
        if rls:
            return await self._log_as_tenants(raw, records, ids, quotes, stored)
        try:
            async with raw.transaction():
                # Generators, not lists: each row tuple dies as soon as it is encoded, so a batch
                # leaves nothing for the garbage collector to walk (it took ~10% of the client's CPU).
                await raw.copy_records_to_table(
                    "ai_call_keys", records=_key_rows(records, ids), columns=_KEY_COLUMNS
                )
                await raw.copy_records_to_table(
                    "ai_calls", records=_call_rows(records, ids, quotes), columns=_CALL_COLUMNS
                )
                await raw.execute(RECORD_PENDING, *id_runs(ids))
            if stored is not None:
                stored.extend(zip(ids, records, (q[0] for q in quotes), strict=True))
            return len(records)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "pk_ai_call_keys":
                raise
        # Some keys exist already: add only the calls that are new, check that the others match.
        # The ids were never committed (the transaction rolled back), so they are still ours.
        async with raw.transaction():
            new_stored = await _insert_new(raw, records, ids, quotes, copy=True)
            if new_stored:
                await raw.execute(RECORD_PENDING, *id_runs([i for i, _, _ in new_stored]))
        if stored is not None:  # only once committed
            stored.extend(new_stored)
        return len(new_stored)

    async def _log_as_tenants(
        self,
        raw: asyncpg.Connection,
        records: list[AICallRecord],
        ids: list[int],
        quotes: list[Cost],
        stored: list[tuple[int, AICallRecord, Decimal | None]] | None,
    ) -> int:
        """The batch under row-level security, in one transaction: per organization, set it as the
        tenant, then the key-first INSERT path (new keys, payload check of the others, the new calls
        as one INSERT); the pending range of every new id at the end, as the COPY path records it."""
        groups: dict[str, list[int]] = {}
        for n, r in enumerate(records):
            groups.setdefault(tenant_of(r), []).append(n)
        new_stored: list[tuple[int, AICallRecord, Decimal | None]] = []
        async with raw.transaction():
            for tenant_id, members in groups.items():
                await raw.execute(SET_TENANT_SQL, tenant_id)
                new_stored += await _insert_new(
                    raw,
                    [records[n] for n in members],
                    [ids[n] for n in members],
                    [quotes[n] for n in members],
                    copy=False,
                )
            if new_stored:
                await raw.execute(RECORD_PENDING, *id_runs([i for i, _, _ in new_stored]))
        if stored is not None:  # only once committed
            stored.extend(new_stored)
        return len(new_stored)

    def _quotes(self, records: list[AICallRecord]) -> tuple[list[Cost], bool]:
        """The cost fields of every record (`UNPRICED` where no price is in force and no cost was
        given), and whether any was unpriced."""
        quote = self.prices.quote
        quotes: list[Cost] = []
        missing = False
        for r in records:
            q = quote(r)
            if q is None:
                missing = True
                quotes.append(UNPRICED)
            else:
                quotes.append(q)
        return quotes, missing

    # -- rollups --------------------------------------------------------------------------------

    def _count_written(self, rows: int) -> None:
        # Under row-level security a fold would claim other tenants' pending batches and see none of
        # their calls: folds are the owner's (platform) work, never a service's.
        if self.fold_every is None or rows == 0 or self._rls:
            return
        self._since_fold += rows
        due = self._since_fold >= self.fold_every or time.monotonic() - self._folded_at >= self.fold_interval
        if due and (self._fold_task is None or self._fold_task.done()):
            self._since_fold = 0
            self._folded_at = time.monotonic()
            self._fold_task = asyncio.get_running_loop().create_task(self._background_fold())

    async def _background_fold(self) -> int:
        try:
            return await self.fold_rollups()
        except (PersistenceError, asyncpg.PostgresError, *_LOST) as exc:
            # A failed fold loses nothing (the deltas stay for the next one), but it must be seen.
            _log.warning("background rollup fold failed", error=type(exc).__name__,
                         sqlstate=getattr(exc, "sqlstate", None))  # fmt: skip
            return 0

    async def fold_rollups(self) -> int:
        """Fold pending batches and deltas into the hourly rollups now; returns the calls folded."""
        self._folded_at = time.monotonic()
        result: int = await self._run(fold_rollups_raw)
        return result

    async def get_tenant_daily_cost(
        self, tenant_id: str, day: date | None = None, *, time_zone: str = "UTC"
    ) -> Decimal:
        """Seed 004's: `tenant_id`'s (`organization_id`) cost on `day` (default today) in `time_zone`,
        exact, from the rollups (`persistence.ai_calls.tenant_cost`)."""
        return await get_tenant_daily_cost(self.engine, tenant_id, day, time_zone=time_zone)

    # -- get_stats ------------------------------------------------------------------------------

    async def get_stats(self, start_date: datetime, end_date: datetime) -> Stats:
        """Seed 000's statistics for [start_date, end_date): exact, money as Decimal.

        `{'total_calls': int, 'total_cost_usd': Decimal, 'total_tokens': int,
        'avg_latency_ms': float, 'unpriced_calls': int, 'unpriced_tokens': int,
        'by_provider': {provider: {'calls', 'cost', 'tokens', 'unpriced_calls', 'unpriced_tokens'}}}`
        Unpriced calls (stored with no price) count in calls and tokens, and add nothing to the cost.
        """
        start = _utc("start_date", start_date)
        end = _utc("end_date", end_date)
        if end < start:
            raise ValidationError("invalid period: end_date is before start_date")
        first, last = hour_ceil(start), hour_floor(end)
        if last < first:  # inside one hour: no whole hour, all from the ledger
            first = last = end
        rows = await self._run(_fetch_stats, start, end, first, last)
        by_provider: dict[str, dict[str, Any]] = {}
        calls = tokens = latency_sum = latency_count = unpriced_calls = unpriced_tokens = 0
        cost = Decimal(0)
        for provider, n, c, t, ls, lc, un, ut in rows:
            by_provider[provider] = {
                "calls": int(n),
                "cost": Decimal(c),
                "tokens": int(t),
                "unpriced_calls": int(un),
                "unpriced_tokens": int(ut),
            }
            unpriced_calls += int(un)
            unpriced_tokens += int(ut)
            calls += int(n)
            cost += Decimal(c)
            tokens += int(t)
            latency_sum += int(ls)
            latency_count += int(lc)
        return {
            "total_calls": calls,
            "total_cost_usd": cost,
            "total_tokens": tokens,
            "avg_latency_ms": float(Decimal(latency_sum) / Decimal(latency_count)) if latency_count else 0.0,
            "unpriced_calls": unpriced_calls,
            "unpriced_tokens": unpriced_tokens,
            "by_provider": by_provider,
        }


async def _fetch(raw: asyncpg.Connection, sql: str, *args: Any) -> list[asyncpg.Record]:
    return await raw.fetch(sql, *args)


async def _fetch_stats(raw: asyncpg.Connection, *args: Any) -> list[asyncpg.Record]:
    """`get_stats` reads every organization (and the per-model rollup, a platform table): platform
    work, refused where row-level security binds the login rather than answering with a mix."""
    if await row_security_binds(raw):
        raise TenantIsolationError(
            "get_stats reads across organizations: platform work, run it as the owner or an operator"
        )
    return await raw.fetch(_STATS, *args)


def _refuse_no_tenant(records: Sequence[AICallRecord]) -> None:
    """A call without an organization is stored under '' (`tenant_of`), which belongs to no tenant:
    the policy compares with `nullif(setting, '')`, so no service role can write it. Refused with
    a typed error before any statement (the owner still logs such calls)."""
    if any(not tenant_of(r) for r in records):
        raise TenantIsolationError(
            "an AI call without organization_id belongs to no tenant: a service role under row-level "
            "security cannot log it (give organization_id, or log it as the owner)"
        )


async def _insert_new(
    raw: asyncpg.Connection,
    records: list[AICallRecord],
    ids: list[int],
    quotes: list[Cost],
    *,
    copy: bool,
) -> list[tuple[int, AICallRecord, Decimal | None]]:
    """Inside the caller's transaction: insert the batch's keys, skipping stored ones, check that
    each stored key has the same payload (else `ConflictError`), and write the new calls (COPY, or
    one INSERT where COPY is refused); returns (id, record, cost) of each new call. Keys are per
    organization: (organization, key) pairs throughout."""
    tenants = [tenant_of(r) for r in records]
    new = {
        (row[0], row[1])
        for row in await raw.fetch(
            _INSERT_KEYS,
            tenants,
            [r.idempotency_key for r in records],
            ids,
            [r.created_at for r in records],
            [r.payload_hash for r in records],
        )
    }
    keep = [(t, r.idempotency_key) in new for t, r in zip(tenants, records, strict=True)]
    old = [(t, r) for t, r, kept in zip(tenants, records, keep, strict=True) if not kept]
    if old:
        stored_hashes = await raw.fetch(_KEY_HASHES, [t for t, _ in old], [r.idempotency_key for _, r in old])
        hashes = {(t, k): bytes(h) for t, k, h in stored_hashes}
        differ = [
            r.idempotency_key
            for t, r in old
            if hashes.get((t, r.idempotency_key), r.payload_hash) != r.payload_hash
        ]
        if differ:
            raise _key_conflict(differ)
    new_ids = list(compress(ids, keep))
    if not new_ids:
        return []
    new_records, new_quotes = list(compress(records, keep)), list(compress(quotes, keep))
    rows = _call_rows(new_records, new_ids, new_quotes)
    if copy:
        await raw.copy_records_to_table("ai_calls", records=rows, columns=_CALL_COLUMNS)
    else:
        await raw.execute(_INSERT_CALLS, *(list(column) for column in zip(*rows, strict=True)))
    return list(zip(new_ids, new_records, (q[0] for q in new_quotes), strict=True))


def _iterable_of_calls(calls: object) -> Iterable[AICallRecord | Mapping[str, Any]]:
    """`calls` of `log_batch`/`ingest`: an iterable of calls, not one call, a string or None."""
    if isinstance(calls, str | bytes | Mapping | AICallRecord) or not isinstance(calls, Iterable):
        raise ValidationError(f"calls must be an iterable of AI calls, got {type(calls).__name__}")
    return calls


def _key_conflict(keys: Sequence[str]) -> ConflictError:
    shown = ", ".join(repr(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
    return ConflictError(
        f"idempotency key reused for a different call: {shown} (same key, different payload)",
        constraint="pk_ai_call_keys",
        table="ai_call_keys",
    )


def _unique(records: list[AICallRecord]) -> list[AICallRecord]:
    """Drop exact repeats inside one batch; a key repeated (in one organization) with another
    payload is a conflict."""
    seen: dict[tuple[str | None, str], AICallRecord] = {}
    out = []
    for r in records:
        key = (r.organization_id, r.idempotency_key)
        first = seen.get(key)
        if first is None:
            seen[key] = r
            out.append(r)
        elif first.payload_hash != r.payload_hash:
            raise _key_conflict([r.idempotency_key])
    return out
