"""Writing the generated rows: inserts that skip what is there, the ledger's keys and pending rollups,
the weekly reports, the seed-run record, and `seed_database`, which runs it all in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Insert,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    Text,
    bindparam,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from persistence.advisory import advisory_key
from persistence.models import (
    AgentExecutionRow,
    AICall,
    AuditLog,
    Claim,
    ConsensusDecision,
    ModelCheckpoint,
    PlatformEventRow,
    ReconciliationReport,
    ServiceHealth,
    TenantCostEventRow,
    TrainingData,
    VerificationResult,
)
from persistence.seeding import calls, events, generate
from persistence.seeding.generate import SEED_USER, seed_uuid
from persistence.seeding.plan import ProgressCallback, SeedPlan, SeedReport, check_as_of, utc_now

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from persistence.events.records import CostEvent, Event

__all__ = ["LEDGER_DERIVED_TABLES", "REFERENCE_TABLES", "SEEDED_TABLES", "seed_database", "table_counts"]

_CLAIMS: Table = Claim.__table__  # type: ignore[assignment]
_VERIFICATIONS: Table = VerificationResult.__table__  # type: ignore[assignment]
_CONSENSUS: Table = ConsensusDecision.__table__  # type: ignore[assignment]
_TRAINING: Table = TrainingData.__table__  # type: ignore[assignment]
_CHECKPOINTS: Table = ModelCheckpoint.__table__  # type: ignore[assignment]
_SERVICES: Table = ServiceHealth.__table__  # type: ignore[assignment]
_AUDIT: Table = AuditLog.__table__  # type: ignore[assignment]
_AI_CALLS: Table = AICall.__table__  # type: ignore[assignment]
_REPORTS: Table = ReconciliationReport.__table__  # type: ignore[assignment]
_PLATFORM_EVENTS: Table = PlatformEventRow.__table__  # type: ignore[assignment]
_COST_EVENTS: Table = TenantCostEventRow.__table__  # type: ignore[assignment]
_AGENT_EXECUTIONS: Table = AgentExecutionRow.__table__  # type: ignore[assignment]

_TABLES_IN_ORDER: tuple[Table, ...] = (
    _CLAIMS,
    _VERIFICATIONS,
    _CONSENSUS,
    _TRAINING,
    _CHECKPOINTS,
    _SERVICES,
    _AUDIT,
    _AI_CALLS,
    _REPORTS,
    _PLATFORM_EVENTS,
    _COST_EVENTS,
    _AGENT_EXECUTIONS,
)
# Schema-qualified where the table has a schema (seed 004's events are in `analytics`).
SEEDED_TABLES: tuple[str, ...] = tuple(t.fullname for t in _TABLES_IN_ORDER)
# Kept in step with ai_calls by seeding (keys of the seeded calls, their hourly rollups) and emptied
# with it by a reset; not counted as seeded tables. Rate-limiter state (GCRA counters, concurrency
# slots) is soft state of the same kind: never seeded, and a reset may forget it.
LEDGER_DERIVED_TABLES: tuple[str, ...] = (
    "ai_call_keys",
    "ai_call_pending_batches",
    "ai_call_usage_deltas",
    "ai_call_usage_hourly",
    "ai_call_model_hourly",
    "rate_limit_state",
    "rate_limit_slots",
    # The event tables' hourly rollups and their deltas (revision 0022), kept by triggers on the
    # events: emptied with them by a reset, folded after seeding.
    "analytics.tenant_cost_hourly",
    "analytics.tenant_cost_hourly_deltas",
    "analytics.agent_execution_hourly",
    "analytics.agent_execution_hourly_deltas",
)
# Reference data loaded by migrations (vendor prices, default rate limits) and the operator's own
# configuration and its history (cost alert rules, their firings and notification log; limits and
# quotas, their usage counters, reservations, holds and manual resets; vendor bills, billing periods
# and their validations; cost-accuracy runs): never seeded, never reset.
REFERENCE_TABLES: tuple[str, ...] = (
    "vendor_prices",
    "cost_alerts",
    "cost_alert_firings",
    "cost_alerts_log",
    "rate_limit_configs",
    "company_quotas",
    "billing_periods",
    "billing_data",
    "billing_validations",
    "cost_accuracy_validations",
    "vendor_prices_version",  # the change counter of vendor_prices (revision 0010)
    # Subjects and their API keys (revision 0013): the operator's own tenants, never seeded yet.
    "companies",
    "users",
    "api_keys",
    "quotas",
    "quota_counters",
    "quota_reservations",
    "quota_holds",
    "rate_limit_resets",
    "usage",  # billing usage, written by quota settlements (revision 0017): never reset
    # Inference requests (revision 0018): the application's own traffic, never seeded yet.
    "request_inflight",
    "request_history",
    "request_stats_daily",
    "request_stats_deltas",
    "request_transitions",  # their audit of status changes (revision 0021)
    # Results of requests and their deduplication cache (revision 0019): never seeded, never reset.
    "results",
    "result_chunks",
    "result_cache",
)

_BATCH = 1000
# Key of the transaction-scoped advisory lock that serialises seeders (any stable 64-bit value).
_LOCK_KEY = advisory_key("persistence.seeding")
_MICRO = Decimal("0.000001")
_CENT = Decimal("0.01")


def _batches(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), _BATCH):
        yield rows[start : start + _BATCH]


async def _insert_missing(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], progress: ProgressCallback
) -> None:
    """Insert rows whose keys are not there yet: any unique violation (pk or natural key) skips the row."""
    # One statement for every batch (compiled once), sent as a pipelined executemany.
    stmt = pg_insert(table).on_conflict_do_nothing()
    done = 0
    if not rows:
        progress(table.name, 0, 0)
    for batch in _batches(rows):
        await conn.execute(stmt, list(batch))
        done += len(batch)
        progress(table.name, done, len(rows))


_AI_CALL_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("created_at", DateTime(timezone=True)),
    ("provider", String()),
    ("model", String()),
    ("input_tokens", Integer()),
    ("output_tokens", Integer()),
    ("cache_read_tokens", Integer()),
    ("cache_write_tokens", Integer()),
    ("usage", Text()),  # JSON text, cast to JSONB in the statement
    ("cost_usd", Numeric(10, 6)),
    ("latency_ms", Integer()),
    ("status", String()),
    ("error_class", String()),
    ("customer_id", String()),
    ("organization_id", String()),
    ("product_id", String()),
    ("environment", String()),
    ("request_id", String()),
    ("trace_id", String()),
)


def _ai_calls_statement() -> Insert:
    """INSERT ... SELECT FROM unnest(<one array per column>) WHERE NOT EXISTS (same request_id).

    One bound array per column keeps the statement identical for every batch size. ORDER BY the
    arrays' ordinal so ids follow the plan's order whatever join the planner picks: the same seed
    gives the same ids (PostgreSQL 18's hashed anti-join reorders the rows otherwise).
    """
    names = [name for name, _ in _AI_CALL_COLUMNS]
    incoming = (
        func.unnest(*(bindparam(name, type_=ARRAY(type_)) for name, type_ in _AI_CALL_COLUMNS))
        .table_valued(*(column(name, type_) for name, type_ in _AI_CALL_COLUMNS), with_ordinality="ordinal")
        .render_derived(name="incoming")
    )
    present = select(literal(1)).select_from(_AI_CALLS).where(_AI_CALLS.c.request_id == incoming.c.request_id)
    return (
        insert(_AI_CALLS)
        .from_select(
            names,
            select(*(cast(incoming.c[n], JSONB) if n == "usage" else incoming.c[n] for n in names))
            .where(~exists(present))
            .order_by(incoming.c.ordinal),
        )
        .returning(_AI_CALLS.c.id, _AI_CALLS.c.request_id, _AI_CALLS.c.created_at)
    )


_KEYS_STATEMENT = text(
    "INSERT INTO ai_call_keys (organization_id, idempotency_key, call_id, call_created_at, payload_hash) "
    "SELECT * FROM unnest(:tenants, :keys, :ids, :ats, :hashes) ON CONFLICT DO NOTHING"
).bindparams(
    bindparam("tenants", type_=ARRAY(String())),
    bindparam("keys", type_=ARRAY(String())),
    bindparam("ids", type_=ARRAY(BigInteger())),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
    bindparam("hashes", type_=ARRAY(LargeBinary())),
)


async def _insert_keys(conn: AsyncConnection, rows: Sequence[dict[str, Any]], inserted: list[Any]) -> None:
    """Idempotency keys of the calls just inserted, exactly as `AICallLogger` makes them, so
    logging a seeded call again is recognised as a retry."""
    from persistence.ai_calls.record import AICallRecord, tenant_of

    by_request = {row["request_id"]: row for row in rows}
    tenants, keys, ids, ats, hashes = [], [], [], [], []
    for call_id, request_id, created_at in inserted:
        record = AICallRecord.coerce(by_request[request_id])
        tenants.append(tenant_of(record))
        keys.append(record.idempotency_key)
        ids.append(call_id)
        ats.append(created_at)
        hashes.append(record.payload_hash)
    if keys:
        params = {"tenants": tenants, "keys": keys, "ids": ids, "ats": ats, "hashes": hashes}
        await conn.execute(_KEYS_STATEMENT, params)


async def _record_pending(conn: AsyncConnection, ids: Sequence[int]) -> None:
    """Mark the calls just inserted for the rollups' next fold, as `AICallLogger.log_batch` does:
    exact whoever else writes or folds meanwhile."""
    from persistence.ai_calls.rollups import RECORD_PENDING, id_runs

    if ids:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute(RECORD_PENDING, *id_runs(ids))


async def _insert_missing_ai_calls(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], progress: ProgressCallback
) -> None:
    """The ledger has no unique key: skip calls whose seeded request_id is already there."""
    stmt = _ai_calls_statement()
    done = 0
    if not rows:
        progress(_AI_CALLS.name, 0, 0)
    for batch in _batches(rows):
        params = {name: [row[name] for row in batch] for name, _ in _AI_CALL_COLUMNS}
        params["usage"] = [json.dumps(u, sort_keys=True) for u in params["usage"]]
        result = await conn.execute(stmt, params)
        inserted = list(result)
        await _insert_keys(conn, batch, inserted)
        await _record_pending(conn, [row[0] for row in inserted])
        done += len(batch)
        progress(_AI_CALLS.name, done, len(rows))


async def _upsert_reports(
    conn: AsyncConnection, plan: SeedPlan, as_of: datetime, progress: ProgressCallback
) -> None:
    """One report per week, totals aggregated from the ledger as it now stands.

    A report whose totals no longer match the ledger for the same period (a larger plan added calls
    to its week) is regenerated, as the weekly reconciliation job does; anything else is left alone.
    """
    weeks = calls.report_weeks(plan, as_of)
    rows = []
    for week_start, week_end in weeks:
        stats = await conn.execute(
            select(
                _AI_CALLS.c.provider,
                func.count(),
                func.coalesce(func.sum(_AI_CALLS.c.cost_usd), 0),
                func.coalesce(func.sum(_AI_CALLS.c.total_tokens), 0),
            )
            .where(_AI_CALLS.c.created_at >= week_start, _AI_CALLS.c.created_at < week_end)
            .group_by(_AI_CALLS.c.provider)
            .order_by(_AI_CALLS.c.provider)
        )
        per_provider = [(str(p), int(n), Decimal(cost), int(tokens)) for p, n, cost, tokens in stats]
        total_calls = sum(n for _, n, _, _ in per_provider)
        total_cost = sum((cost for _, _, cost, _ in per_provider), Decimal(0))
        total_tokens = sum(tokens for _, _, _, tokens in per_provider)
        # Money as strings: JSON numbers would go through float.
        by_provider = {
            p: {"calls": n, "cost_usd": str(cost.quantize(_MICRO)), "tokens": tokens}
            for p, n, cost, tokens in per_provider
        }
        rng = generate.row_rng(plan.seed, "reconciliation_reports", week_end.date().isoformat())
        # The metering vendor drops a handful of events and rounds differently: well inside the 2% gate.
        missing = total_calls * rng.randint(0, 40) // 10_000
        revenium_cost = (total_cost * (1 - Decimal(rng.randint(0, 40)) / 10_000)).quantize(
            _CENT, ROUND_HALF_UP
        )
        variance = (
            (Decimal(missing) * 100 / Decimal(total_calls)).quantize(_CENT, ROUND_HALF_UP)
            if total_calls
            else Decimal(0)
        )
        rows.append(
            {
                "report_date": week_end.date(),
                "period_start": week_start,
                "period_end": week_end,
                "total_calls": total_calls,
                "total_cost_usd": total_cost.quantize(_CENT, ROUND_HALF_UP),
                "total_tokens": total_tokens,
                "provider_stats": by_provider,
                "revenium_calls": total_calls - missing,
                "revenium_cost_usd": revenium_cost,
                "variance_pct": variance,
                "status": "PASS" if variance < 2 else "FAIL",
                "generated_at": week_end + timedelta(minutes=rng.randint(2, 15)),
            }
        )
    if not rows:
        progress(_REPORTS.name, 0, 0)
        return
    stmt = pg_insert(_REPORTS).values(rows)
    refreshed = ("total_calls", "total_cost_usd", "total_tokens", "provider_stats", "revenium_calls",
                 "revenium_cost_usd", "variance_pct", "status", "generated_at")  # fmt: skip
    stmt = stmt.on_conflict_do_update(
        index_elements=[_REPORTS.c.period_start, _REPORTS.c.period_end, _REPORTS.c.source],
        set_={name: stmt.excluded[name] for name in refreshed},
        where=or_(
            *(
                _REPORTS.c[name].is_distinct_from(stmt.excluded[name])
                for name in ("total_calls", "total_cost_usd", "total_tokens")
            )
        ),
    )
    await conn.execute(stmt)
    progress(_REPORTS.name, len(rows), len(rows))


_EVENT_BATCH = 5000
# Daily platform-event partitions are made for at most this many days back from as_of (a longer
# window's older events go to the default partition, which the maintenance command reports).
_DAILY_PARTITIONS = 366
_ENSURE_PARTITION = text("SELECT analytics.ensure_partition(CAST(:parent AS regclass), :part, :lo, :hi)")


async def _ensure_event_partitions(conn: AsyncConnection, start: datetime, end: datetime) -> None:
    """The event tables' partitions for the seeded window, named as `maintain_event_partitions`
    names them (days for platform events, months for the other two): seeded events land where
    live ones would, not in the default partitions. Existing partitions are left alone."""
    first_day = max(start, end - timedelta(days=_DAILY_PARTITIONS)).date()
    last_day = (end - timedelta(microseconds=1)).date()
    parts: list[dict[str, Any]] = []
    day = first_day
    while day <= last_day:
        lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
        parts.append({"parent": "analytics.platform_events", "part": f"platform_events_p{day:%Y_%m_%d}",
                      "lo": lo, "hi": lo + timedelta(days=1)})  # fmt: skip
        day += timedelta(days=1)
    month = datetime(start.year, start.month, 1, tzinfo=UTC)
    while month < end:
        following = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
        for table in ("tenant_cost_events", "agent_executions"):
            parts.append({"parent": f"analytics.{table}", "part": f"{table}_p{month:%Y_%m}",
                          "lo": month, "hi": following})  # fmt: skip
        month = following
    for part in parts:
        await conn.execute(_ENSURE_PARTITION, part)


async def _write_events(
    conn: AsyncConnection, table: Table, rows: Sequence[Event], progress: ProgressCallback
) -> None:
    """COPY the events a batch at a time through the recorder's own write (`write_events`): a batch
    holding an event that is there already falls back to its `INSERT ... ON CONFLICT DO NOTHING`,
    so a re-run adds only the missing events. Runs in the seeding transaction (savepoints)."""
    from persistence.events.writer import write_events

    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    if not rows:
        progress(table.fullname, 0, 0)
    for start in range(0, len(rows), _EVENT_BATCH):
        batch = rows[start : start + _EVENT_BATCH]
        await write_events(raw, batch)
        progress(table.fullname, start + len(batch), len(rows))


# The seeded calls of the window, for their cost events (the link `AICallLogger(cost_events=...)` makes).
_SEEDED_CALLS = text(
    "SELECT id, created_at, organization_id, customer_id, provider, model, cost_usd, total_tokens, "
    "input_tokens, output_tokens FROM ai_calls WHERE created_at >= :start AND created_at < :end "
    "AND request_id LIKE 'seed-call-%' ORDER BY created_at, id"
)


async def _call_cost_events(conn: AsyncConnection, start: datetime, end: datetime) -> list[CostEvent]:
    """One cost event per seeded AI call, exactly as the ledger link emits it (same event id, time and
    cost), so a tenant's daily cost from the events' LLM rows equals the ledger's."""
    from persistence.events.ledger_link import call_cost_event

    out = []
    for row in await conn.execute(_SEEDED_CALLS, {"start": start, "end": end}):
        call_id, created_at, org, customer, provider, model, cost, total, inp, out_tokens = row
        event = call_cost_event(
            call_id,
            created_at=created_at,
            organization_id=org,
            customer_id=customer,
            provider=provider,
            model=model,
            cost_usd=None if cost is None else Decimal(cost),
            total_tokens=total,
            input_tokens=inp,
            output_tokens=out_tokens,
        )
        if event is not None:
            out.append(event)
    return out


async def _counts(conn: AsyncConnection) -> dict[str, int]:
    row = (
        await conn.execute(
            select(
                *(
                    select(func.count()).select_from(t).scalar_subquery().label(t.fullname)
                    for t in _TABLES_IN_ORDER
                )
            )
        )
    ).one()
    return {name: int(row._mapping[name]) for name in SEEDED_TABLES}


async def table_counts(engine: AsyncEngine) -> dict[str, int]:
    """Row counts of every seeded table, in `SEEDED_TABLES` order."""
    async with engine.connect() as conn:
        return await _counts(conn)


_FOREIGN_KEYS_INTO = text(
    "SELECT c.conrelid::regclass::text, c.conname, c.confrelid::regclass::text FROM pg_constraint c "
    "WHERE c.contype = 'f' AND c.confrelid = ANY(CAST(:ours AS regclass[])) "
    "AND NOT c.conrelid = ANY(CAST(:ours AS regclass[])) ORDER BY 1, 2"
).bindparams(bindparam("ours", type_=ARRAY(String())))


async def _reset(conn: AsyncConnection) -> None:
    """Empty every table of the package; refuse (ValueError) when another table references one.

    No CASCADE: that would silently empty the referencing tables too, which are not ours.
    """
    names = [conn.dialect.identifier_preparer.format_table(t) for t in _TABLES_IN_ORDER]
    quote = conn.dialect.identifier_preparer.quote
    names += [".".join(quote(part) for part in name.split(".")) for name in LEDGER_DERIVED_TABLES]
    blockers = (await conn.execute(_FOREIGN_KEYS_INTO, {"ours": names})).all()
    if blockers:
        listed = "; ".join(f"{src} references {dst} (foreign key {name})" for src, name, dst in blockers)
        raise ValueError(
            f"cannot reset: {listed}. Emptying the seeded tables would have to empty those tables "
            "too; empty or drop them (or the foreign keys) first"
        )
    await conn.execute(text(f"TRUNCATE TABLE {', '.join(names)} RESTART IDENTITY"))


# The record of the first seeding: an audit fact (who filled this database, and how) that later
# runs read to keep seeding the same data whatever the day.
_RUN_ID = seed_uuid("audit_log", "seed-run")
_RUN_ENTITY_TYPE = "seed_run"
_RUN_ENTITY_ID = "persistence.seeding"


def _describe(as_of: datetime) -> str:
    return as_of.date().isoformat() if as_of.timetz() == time(tzinfo=UTC) else as_of.isoformat()


async def _recorded_anchor(conn: AsyncConnection) -> tuple[int, datetime] | None:
    """(seed, as_of) of the database's first seeding, or None when it has no seeded data."""
    metadata = await conn.scalar(select(_AUDIT.c["metadata"]).where(_AUDIT.c.id == _RUN_ID))
    if metadata is not None:
        try:
            seed, as_of = metadata["seed"], datetime.fromisoformat(metadata["as_of"]).astimezone(UTC)
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(seed)
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"the seed-run record in audit_log (id {_RUN_ID}) is unreadable: {metadata!r}; "
                "pass --reset to reseed"
            ) from None
        return seed, as_of
    # Seeded rows without the record (seeded before it existed, or the record was deleted): their
    # seed and as_of are unknown, so seeding on could add overlapping data.
    probes = [
        select(literal(1)).select_from(table).where(table.c.id == key)
        for table, key in (
            (_CLAIMS, seed_uuid("claims", 0)),
            (_CHECKPOINTS, seed_uuid("model_checkpoints", 0, 0)),
            (_SERVICES, seed_uuid("service_health", 0, 0)),
            (_AUDIT, seed_uuid("audit_log", "claim:0")),
        )
    ]
    if await conn.scalar(select(or_(*(exists(probe) for probe in probes)))):
        raise ValueError(
            "database holds seeded rows but no seed-run record in audit_log, so the seed and as_of "
            "they were made with are unknown; pass --reset to reseed"
        )
    return None


def _run_record(plan: SeedPlan, as_of: datetime, at: datetime) -> dict[str, Any]:
    return {
        "id": _RUN_ID,
        "entity_type": _RUN_ENTITY_TYPE,
        "entity_id": _RUN_ENTITY_ID,
        "action": "seed",
        "user_id": SEED_USER,
        "changes": None,
        "metadata": {"seed": plan.seed, "as_of": as_of.isoformat(), "plan": plan.sizes()},
        "created_at": at,
    }


_DEFAULT_PLAN = SeedPlan()  # frozen


def _ignore_progress(table: str, done: int, total: int) -> None:
    return None


async def seed_database(
    engine: AsyncEngine,
    plan: SeedPlan = _DEFAULT_PLAN,
    *,
    reset: bool = False,
    progress: ProgressCallback | None = None,
    now: Callable[[], datetime] | None = None,
) -> SeedReport:
    """Seed every table per `plan`, inserting only missing rows, in one transaction.

    The first run records its seed and as_of (and plan) as one audit_log row. Later runs seed with
    that as_of when `plan.as_of` is None, and raise ValueError before writing anything when
    `plan.seed` or an explicit `plan.as_of` differs from the recorded one. `reset=True` first
    empties every table of the package (identities restart) in that same transaction, so the run
    records a new anchor. `progress(table, done, total)` is called after each batch. `now` (a
    timezone-aware clock, default the wall clock) gives "today" and the record's time.
    """
    plan.validate()
    report_progress = progress if progress is not None else _ignore_progress
    clock_now = now if now is not None else utc_now

    async with engine.begin() as conn:
        await conn.execute(select(func.pg_advisory_xact_lock(literal(_LOCK_KEY, BigInteger))))
        if reset:
            await _reset(conn)
        recorded = await _recorded_anchor(conn)
        run_record: list[dict[str, Any]] = []
        if recorded is None:
            at = check_as_of(clock_now(), "now()")
            as_of = plan.resolved_as_of(lambda: at)
            run_record.append(_run_record(plan, as_of, at))
        else:
            recorded_seed, as_of = recorded
            wanted = plan.resolved_as_of() if plan.as_of is not None else as_of
            if (plan.seed, wanted) != (recorded_seed, as_of):
                asked = f"seed={plan.seed}" + (f" as_of={_describe(wanted)}" if wanted != as_of else "")
                raise ValueError(
                    f"database was seeded with seed={recorded_seed} as_of={_describe(as_of)}; "
                    f"pass --reset to reseed with {asked}"
                )
        before = await _counts(conn)

        clock = generate.Clock(as_of, plan.days)
        claims = generate.make_claims(plan, clock)
        verifications = generate.make_verifications(plan, claims)
        consensus = generate.make_consensus(plan, claims, verifications)

        await _insert_missing(conn, _CLAIMS, [c.row for c in claims], report_progress)
        await _insert_missing(
            conn, _VERIFICATIONS, [row for c in claims for row in verifications[c.index]], report_progress
        )
        await _insert_missing(conn, _CONSENSUS, consensus, report_progress)
        await _insert_missing(conn, _TRAINING, generate.make_training(plan, claims, as_of), report_progress)
        # Read under the lock: a pair that already has a live checkpoint gets only inactive new versions.
        active = await conn.execute(
            select(_CHECKPOINTS.c.model_name, _CHECKPOINTS.c.framework).where(_CHECKPOINTS.c.is_active)
        )
        already_active = {(name, framework) for name, framework in active}
        await _insert_missing(
            conn, _CHECKPOINTS, generate.make_checkpoints(plan, as_of, already_active), report_progress
        )
        await _insert_missing(conn, _SERVICES, generate.make_service_health(plan, as_of), report_progress)
        audit = run_record + generate.make_audit(plan.seed, claims, verifications, consensus)
        await _insert_missing(conn, _AUDIT, audit, report_progress)
        await _insert_missing_ai_calls(conn, calls.make_ai_calls(plan, clock), report_progress)
        await _upsert_reports(conn, plan, as_of, report_progress)

        await _ensure_event_partitions(conn, clock.start, clock.end)
        await _write_events(conn, _PLATFORM_EVENTS, events.make_platform_events(plan, clock), report_progress)
        costs = events.make_cost_events(plan, clock) + await _call_cost_events(conn, clock.start, clock.end)
        costs.sort(key=lambda e: (e.time, e.event_id))
        await _write_events(conn, _COST_EVENTS, costs, report_progress)
        await _write_events(
            conn, _AGENT_EXECUTIONS, events.make_agent_executions(plan, clock), report_progress
        )

        after = await _counts(conn)
    from persistence.ai_calls.rollups import fold_rollups
    from persistence.events.rollups import fold_event_rollups

    await fold_rollups(engine)  # the seeded calls' usage into the hourly rollups
    await fold_event_rollups(engine)  # and the seeded events' (their triggers appended the deltas)
    return SeedReport(before=before, after=after, seed=plan.seed, as_of=as_of)
