"""Default prices from `genai-prices` (Pydantic's maintained price database) into `vendor_prices`.

`vendor_prices` stays the authority (a call records the row that priced it); genai-prices is where
the default rows come from. How its data maps to our rows:

- One global row (tenant '') per genai-prices model id of the imported providers (`DEFAULT_PROVIDERS`,
  whose ids are the ledger's provider names). The many names a model answers to (its match rules:
  dated snapshots, aliases) are not rows: `PriceBook` resolves a call's model name to the model id
  through the same rules (`resolve_model`), so a tenant override of `gpt-5` also prices
  `gpt-5-2025-08-07`.
- Historical prices: the first period starts at `EPOCH` (genai-prices gives it no start); each later
  start date (a UTC day) starts a new row and closes the previous one.
- Buckets, as genai-prices itself charges them: `cache_read` / `cache_write` are the model's cache
  prices, else its input price; `reasoning` is its reasoning price, else its output price; a missing
  output price is 0 (embedding models). `cache_write_1h` only where genai-prices has a 1-hour price
  (NULL otherwise: a call with 1-hour writes is then unpriced rather than priced at the 5-minute rate).
- Tiered prices (by prompt length, revision 0016): one row per tier, `min_input_tokens` its start
  (0: the base tier); each tier of a model is its own effective-dated key, planned like a model
  (a changed tier is a new row from the sync's time; a tier genai-prices no longer has is closed).
  On a table without the column (revision 0010 running before 0016) only base tiers are imported.
- `source` is 'genai-prices' (the package's version is in the sync report, not in the rows, so an
  upgrade of the package that changes no price changes no row).
- Service-tier and batch variants (priority, flex, batch) are not imported: rows are standard prices.
- Models priced only in units the ledger does not count (audio hours, characters, images only) and
  prices with more than 6 decimal places (NUMERIC(14, 6) would round them) are skipped.

`sync_prices` never touches a tenant's row, nor a key (provider, model) that has a global row someone
entered (any source other than genai-prices or revision 0003's superseded defaults). It never
rewrites what was in force before it ran: a changed price is a new row from the sync's time (or from
genai-prices' own start date, when that is later), closing the previous one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.advisory import advisory_key
from persistence.ai_calls.price_catalog import (
    DEFAULT_PROVIDERS,
    EPOCH,
    GENAI_SOURCE,
    Buckets,
    PriceChange,
    PriceRow,
    genai_rows,
    installed_source,
    resolve_model,
)
from persistence.errors import PersistenceError, ValidationError, translate

if TYPE_CHECKING:
    from genai_prices.types import Provider

__all__ = [
    "DEFAULT_PROVIDERS",
    "EPOCH",
    "GENAI_SOURCE",
    "PriceChange",
    "PriceRow",
    "PriceSyncReport",
    "genai_rows",
    "resolve_model",
    "sync_prices",
    "sync_prices_on",
]

# Defaults the package loaded before genai-prices: the sync supersedes them like its own rows.
SUPERSEDED_SOURCES = ("migration 0003",)
_SYNC_LOCK = advisory_key("persistence.ai_calls.price_sync")


@dataclass(frozen=True, slots=True)
class PriceSyncReport:
    """Per (provider, model): added (no global row before), changed (new rows), unchanged, or
    skipped because someone owns its global price (a row not from genai-prices)."""

    source: str
    dry_run: bool
    added: int
    changed: int
    unchanged: int
    skipped_manual: int
    rows_inserted: int
    rows_closed: int
    rows_deleted: int
    changes: tuple[PriceChange, ...] = field(default=())
    # genai-prices models not imported, with why (time-of-day prices, no token prices, > 6 places).
    unsupported: tuple[PriceChange, ...] = field(default=())

    @property
    def total_changes(self) -> int:
        return self.added + self.changed

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "added": self.added,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "skipped_manual": self.skipped_manual,
            "rows_inserted": self.rows_inserted,
            "rows_closed": self.rows_closed,
            "rows_deleted": self.rows_deleted,
            "changes": [
                {
                    "provider": c.provider,
                    "model": c.model,
                    "kind": c.kind,
                    "effective_from": None if c.effective_from is None else c.effective_from.isoformat(),
                    "reason": c.reason,
                }
                for c in self.changes
            ],
            "unsupported": [
                {"provider": c.provider, "model": c.model, "reason": c.reason} for c in self.unsupported
            ],
        }


# -- the sync plan -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Existing:
    id: int
    provider: str
    model: str
    buckets: Buckets
    effective_from: datetime
    effective_to: datetime | None
    source: str | None
    min_input_tokens: int = 0


@dataclass
class _Plan:
    inserts: list[PriceRow] = field(default_factory=list)
    closes: list[tuple[int, datetime | None]] = field(default_factory=list)  # (id, new effective_to)
    deletes: list[int] = field(default_factory=list)
    changes: list[PriceChange] = field(default_factory=list)
    unchanged: int = 0


def _ours(source: str | None) -> bool:
    return source is not None and (
        source == GENAI_SOURCE or source.startswith(GENAI_SOURCE + " ") or source in SUPERSEDED_SOURCES
    )


def _timeline_from(rows: Sequence[PriceRow], at: datetime) -> list[tuple[datetime, Buckets]]:
    """The desired prices from `at` on, as (start, buckets) with `at` as the first start."""
    out: list[tuple[datetime, Buckets]] = []
    for row in rows:
        if row.effective_to is not None and row.effective_to <= at:
            continue
        start = max(row.effective_from, at)
        if out and out[-1][1] == row.buckets:
            continue
        out.append((start, row.buckets))
    return out


def _existing_from(rows: Sequence[_Existing], at: datetime) -> list[tuple[datetime, Buckets | None]]:
    out: list[tuple[datetime, Buckets | None]] = []
    cursor = at
    for row in rows:
        if row.effective_to is not None and row.effective_to <= at:
            continue
        start = max(row.effective_from, at)
        if start > cursor:
            out.append((cursor, None))  # a gap
        if not out or out[-1][1] != row.buckets:
            out.append((start, row.buckets))
        if row.effective_to is None:
            return out
        cursor = row.effective_to
    if not out or out[-1][1] is not None:
        out.append((cursor, None))
    return out


def _plan_model(existing: list[_Existing], desired: list[PriceRow], now: datetime, plan: _Plan) -> None:
    """One (provider, model): every tier of it planned as its own key; reported once per model."""
    provider, model = desired[0].provider, desired[0].model
    if not existing:
        plan.inserts.extend(desired)
        plan.changes.append(PriceChange(provider, model, "added", min(r.effective_from for r in desired)))
        return
    foreign = next((r for r in existing if not _ours(r.source)), None)
    if foreign is not None:  # someone owns this model's global price (any tier): all its tiers are left
        plan.changes.append(
            PriceChange(
                provider,
                model,
                "skipped",
                None,
                f"row {foreign.id} (source {foreign.source!r}) is not genai-prices'",
            )
        )
        return
    have: dict[int, list[_Existing]] = {}
    for row in existing:
        have.setdefault(row.min_input_tokens, []).append(row)
    want: dict[int, list[PriceRow]] = {}
    for d in desired:
        want.setdefault(d.min_input_tokens, []).append(d)
    cuts = [
        cut
        for level in sorted(have.keys() | want.keys())
        if (cut := _plan_tier(have.get(level, []), want.get(level, []), now, plan)) is not None
    ]
    if not cuts:
        plan.unchanged += 1
        return
    plan.changes.append(PriceChange(provider, model, "changed", min(cuts)))


def _plan_tier(
    existing: list[_Existing], desired: list[PriceRow], now: datetime, plan: _Plan
) -> datetime | None:
    """One tier's rows (sorted by start) follow `desired` (empty: the tier is gone, closed from
    `now`); returns where they start to change, None if they do not. A tier new to a model gets
    genai-prices' whole history: no row of it ever priced a call."""
    if not existing:
        if not desired:
            return None
        plan.inserts.extend(desired)
        return desired[0].effective_from
    # What was in force before `now` stays; from `now` on the table must say what genai-prices says.
    want = _timeline_from(desired, now)
    have = _existing_from(existing, now)
    edges = sorted({s for s, _ in have} | {s for s, _ in want} | {now})
    cut = next((e for e in edges if _value_at(have, e) != _value_at(want, e)), None)
    if cut is None:
        return None
    for row in existing:
        if row.effective_from >= cut:
            plan.deletes.append(row.id)  # starts later than the sync: it never applied
        elif row.effective_to is None or row.effective_to > cut:
            plan.closes.append((row.id, cut))
    new = _timeline_from(desired, cut)
    plan.inserts.extend(
        PriceRow(
            existing[0].provider,
            existing[0].model,
            *buckets,
            start,
            new[i + 1][0] if i + 1 < len(new) else None,
            GENAI_SOURCE,
            existing[0].min_input_tokens,
        )
        for i, (start, buckets) in enumerate(new)
    )
    return cut


def _value_at(timeline: Sequence[tuple[datetime, Buckets | None]], at: datetime) -> Buckets | None:
    found: Buckets | None = None
    for start, value in timeline:
        if start <= at:
            found = value
    return found


def plan_sync(existing: Iterable[_Existing], desired: Iterable[PriceRow], now: datetime) -> _Plan:
    """What to insert, close and delete so the global rows of genai-prices' keys follow `desired`."""
    by_key: dict[tuple[str, str], list[_Existing]] = {}
    for row in existing:
        by_key.setdefault((row.provider, row.model), []).append(row)
    for rows in by_key.values():
        rows.sort(key=lambda r: (r.min_input_tokens, r.effective_from))
    wanted: dict[tuple[str, str], list[PriceRow]] = {}
    for d in desired:
        wanted.setdefault((d.provider, d.model), []).append(d)
    plan = _Plan()
    for key in sorted(wanted):
        wanted_rows = sorted(wanted[key], key=lambda r: (r.min_input_tokens, r.effective_from))
        _plan_model(by_key.get(key, []), wanted_rows, now, plan)
    return plan


# -- SQL -------------------------------------------------------------------------------------------

_PRICES = sa.table(
    "vendor_prices",
    sa.column("id", sa.BigInteger()),
    sa.column("provider", sa.String()),
    sa.column("model", sa.String()),
    sa.column("tenant_id", sa.String()),
    sa.column("input_per_mtok", sa.Numeric()),
    sa.column("output_per_mtok", sa.Numeric()),
    sa.column("cache_read_per_mtok", sa.Numeric()),
    sa.column("cache_write_per_mtok", sa.Numeric()),
    sa.column("reasoning_per_mtok", sa.Numeric()),
    sa.column("cache_write_1h_per_mtok", sa.Numeric()),
    sa.column("effective_from", sa.DateTime(timezone=True)),
    sa.column("effective_to", sa.DateTime(timezone=True)),
    sa.column("source", sa.String()),
    sa.column("min_input_tokens", sa.BigInteger()),
)
_BUCKET_COLUMNS = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "reasoning_per_mtok",
    "cache_write_1h_per_mtok",
)
_ROW_COLUMNS = ("provider", "model", *_BUCKET_COLUMNS, "effective_from", "effective_to", "source")
_ARRAY_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "provider": postgresql.ARRAY(sa.String()),
    "model": postgresql.ARRAY(sa.String()),
    **{c: postgresql.ARRAY(sa.Numeric()) for c in _BUCKET_COLUMNS},
    "effective_from": postgresql.ARRAY(sa.DateTime(timezone=True)),
    "effective_to": postgresql.ARRAY(sa.DateTime(timezone=True)),
    "source": postgresql.ARRAY(sa.String()),
    "min_input_tokens": postgresql.ARRAY(sa.BigInteger()),
}
_TIER = "min_input_tokens"


def _select_existing(providers: Collection[str], tiers: bool) -> sa.Select[Any]:
    p = _PRICES.c
    return (
        sa.select(
            p.id,
            p.provider,
            p.model,
            *(p[c] for c in _BUCKET_COLUMNS),
            p.effective_from,
            p.effective_to,
            p.source,
            p.min_input_tokens if tiers else sa.literal(0, sa.BigInteger()),
        )
        .where(p.tenant_id == "", p.provider.in_(sorted(providers)))
        .order_by(p.provider, p.model, p.effective_from)
    )


def _existing(rows: Iterable[Any]) -> list[_Existing]:
    return [_Existing(r[0], r[1], r[2], tuple(r[3:9]), r[9], r[10], r[11], r[12]) for r in rows]


def _statements(plan: _Plan, tiers: bool) -> list[sa.Executable]:
    out: list[sa.Executable] = []
    if plan.deletes:
        out.append(_PRICES.delete().where(_PRICES.c.id.in_(plan.deletes)))
    if plan.closes:
        v = (
            sa.func.unnest(
                sa.bindparam("ids", [i for i, _ in plan.closes], type_=postgresql.ARRAY(sa.BigInteger())),
                sa.bindparam(
                    "tos", [t for _, t in plan.closes], type_=postgresql.ARRAY(sa.DateTime(timezone=True))
                ),
            )
            .table_valued("id", "effective_to")
            .render_derived(name="v")
        )
        out.append(_PRICES.update().where(_PRICES.c.id == v.c.id).values(effective_to=v.c.effective_to))
    if plan.inserts:
        names = (*_ROW_COLUMNS, _TIER) if tiers else _ROW_COLUMNS
        columns = list(zip(*(tuple(getattr(r, c) for c in names) for r in plan.inserts), strict=True))
        rows = (
            sa.func.unnest(
                *(
                    sa.bindparam(f"v_{c}", list(values), type_=_ARRAY_TYPES[c])
                    for c, values in zip(names, columns, strict=True)
                )
            )
            .table_valued(*names)
            .render_derived(name="v")
        )
        key = ["provider", "model", "tenant_id", *([_TIER] if tiers else []), "effective_from"]
        out.append(
            postgresql.insert(_PRICES)
            .from_select(list(names), sa.select(*(rows.c[c] for c in names)))
            .on_conflict_do_nothing(index_elements=key)
        )
    return out


def _report(plan: _Plan, unsupported: list[PriceChange], *, dry_run: bool) -> PriceSyncReport:
    kinds = [c.kind for c in plan.changes]
    return PriceSyncReport(
        source=installed_source(),
        dry_run=dry_run,
        added=kinds.count("added"),
        changed=kinds.count("changed"),
        unchanged=plan.unchanged,
        skipped_manual=kinds.count("skipped"),
        rows_inserted=len(plan.inserts),
        rows_closed=len(plan.closes),
        rows_deleted=len(plan.deletes),
        changes=tuple(plan.changes),
        unsupported=tuple(unsupported),
    )


# The lock, the sync's time, and whether `vendor_prices` has tiers (revision 0016; revision 0010
# runs this code before that column exists).
_NOW = sa.text(
    "SELECT pg_advisory_xact_lock(:k), now(), EXISTS (SELECT 1 FROM pg_attribute "
    "WHERE attrelid = 'vendor_prices'::regclass AND attname = 'min_input_tokens' AND NOT attisdropped)"
).bindparams(k=_SYNC_LOCK)


def sync_prices_on(
    connection: sa.Connection,
    *,
    dry_run: bool = False,
    source: Sequence[Provider] | None = None,
    providers: Collection[str] = DEFAULT_PROVIDERS,
) -> PriceSyncReport:
    """`sync_prices` on a synchronous connection inside the caller's transaction (Alembic's)."""
    _, now, tiers = connection.execute(_NOW).one()
    desired, unsupported = genai_rows(source, providers=providers, tiers=tiers)
    plan = plan_sync(_existing(connection.execute(_select_existing(providers, tiers))), desired, now)
    if not dry_run:
        for statement in _statements(plan, tiers):
            connection.execute(statement)
    return _report(plan, unsupported, dry_run=dry_run)


async def sync_prices(
    engine: AsyncEngine,
    *,
    dry_run: bool = False,
    source: Sequence[Provider] | None = None,
    providers: Collection[str] = DEFAULT_PROVIDERS,
) -> PriceSyncReport:
    """Import what the installed genai-prices knows (or `source`, a list of its `Provider`s) into
    `vendor_prices`, in one transaction; idempotent (a second run changes nothing and reports no
    change). See the module docstring for what is never touched. `dry_run` writes nothing."""
    if not isinstance(engine, AsyncEngine):
        raise ValidationError(f"engine must be an AsyncEngine, got {type(engine).__name__}")
    try:
        async with engine.begin() as conn:
            _, now, tiers = (await conn.execute(_NOW)).one()
            desired, unsupported = genai_rows(source, providers=providers, tiers=tiers)
            existing = _existing((await conn.execute(_select_existing(providers, tiers))).all())
            plan = plan_sync(existing, desired, now)
            if not dry_run:
                for statement in _statements(plan, tiers):
                    await conn.execute(statement)
    except PersistenceError:
        raise
    except Exception as exc:
        err = translate(exc)
        if err is None:
            raise
        raise err from exc
    return _report(plan, unsupported, dry_run=dry_run)
