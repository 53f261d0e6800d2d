"""Reconciliation (seed 000): the ledger against a metering vendor, in total, per provider, per model and day.

Variance of a line is `|ours - vendor| / ours * 100` (seed 000; over the vendor's figure when we have
none). A line is *matched* when its call and cost variances are both below the threshold (or zero),
*ours_only* / *vendor_only* when one side has nothing, else *amount_mismatch*. The report FAILs when
the total line or any provider line is not matched; model/day lines locate the difference.

Coverage is the share of the vendor's calls our ledger also has, counted at the finest level the source
gives: the sum over lines of `min(ours, vendor)` calls over the vendor's total.

Calls the ledger stored without a price count in our calls but add nothing to our cost; the report
states how many there were (`unpriced_calls`, `unpriced_tokens`, per line `ours_unpriced_calls`), so a
cost variance they cause is explained rather than hidden (`persistence prices reprice` prices them).

The report is saved with one `INSERT ... ON CONFLICT DO UPDATE` on (period, source), so a re-run
replaces it; the alert hook runs after the commit, on FAIL only.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from sqlalchemy import Date, Table, cast, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.sources import UsageAmount, UsageSource, VendorUsage, check_period
from persistence.errors import InvalidRequestError, raise_translated
from persistence.models import AICall, ReconciliationReport

Status = Literal["PASS", "FAIL"]
LineStatus = Literal["matched", "ours_only", "vendor_only", "amount_mismatch"]
Level = Literal["total", "provider", "model_day"]
AlertHook = Callable[["ReconciliationResult"], Awaitable[None] | None]

DEFAULT_THRESHOLD_PCT = Decimal(2)
_PCT = Decimal("0.0001")
_COVERAGE = Decimal("0.001")
_MAX_PCT = Decimal("99999999.9999")  # NUMERIC(12, 4)
_AI_CALLS: Table = AICall.__table__  # type: ignore[assignment]
_REPORTS: Table = ReconciliationReport.__table__  # type: ignore[assignment]
_REPORT_KEY = "uq_reconciliation_reports_period_start_period_end_source"


def variance_pct(ours: Decimal | int, vendor: Decimal | int) -> Decimal:
    """`|ours - vendor| / ours` in percent (over `vendor` when ours is zero), to 4 places, capped."""
    if ours == vendor:
        return Decimal(0)
    base = Decimal(ours) if ours else Decimal(vendor)
    pct = (abs(Decimal(ours) - Decimal(vendor)) * 100 / base).quantize(_PCT, ROUND_HALF_UP)
    return min(pct, _MAX_PCT)


@dataclass(frozen=True, slots=True)
class ReconciliationLine:
    """One compared slice: the total, a provider, or a provider's model on one UTC day."""

    level: Level
    provider: str | None
    model: str | None
    day: date | None
    ours_calls: int
    vendor_calls: int
    ours_cost_usd: Decimal
    vendor_cost_usd: Decimal
    calls_variance_pct: Decimal
    cost_variance_pct: Decimal
    status: LineStatus
    ours_unpriced_calls: int = 0  # of ours_calls, those stored without a price (no cost counted)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; money and percentages as exact strings."""
        return {
            "level": self.level,
            "provider": self.provider,
            "model": self.model,
            "day": self.day.isoformat() if self.day else None,
            "ours_calls": self.ours_calls,
            "vendor_calls": self.vendor_calls,
            "ours_cost_usd": str(self.ours_cost_usd),
            "vendor_cost_usd": str(self.vendor_cost_usd),
            "calls_variance_pct": str(self.calls_variance_pct),
            "cost_variance_pct": str(self.cost_variance_pct),
            "status": self.status,
            "ours_unpriced_calls": self.ours_unpriced_calls,
        }


@dataclass(frozen=True, slots=True)
class ReconciliationResult:
    """A saved report. `lines` starts with the total, then providers, then model/day lines."""

    id: int
    source: str
    period_start: datetime
    period_end: datetime
    status: Status
    threshold_pct: Decimal
    ours_calls: int
    ours_cost_usd: Decimal
    ours_tokens: int
    vendor_calls: int
    vendor_cost_usd: Decimal
    variance_pct: Decimal
    cost_variance_pct: Decimal
    coverage_pct: Decimal
    generated_at: datetime
    lines: tuple[ReconciliationLine, ...] = field(repr=False)
    by_provider: Mapping[str, Mapping[str, Any]] = field(repr=False)
    # Of ours_calls / ours_tokens, those the ledger could not price (their cost is not in ours_cost_usd).
    unpriced_calls: int = 0
    unpriced_tokens: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    @property
    def missing_calls(self) -> int:
        """Seed 000's figure: our calls minus the vendor's (positive: the vendor missed some)."""
        return self.ours_calls - self.vendor_calls

    def problems(self) -> list[ReconciliationLine]:
        return [line for line in self.lines if line.status != "matched"]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "status": self.status,
            "threshold_pct": str(self.threshold_pct),
            "ours": {
                "total_calls": self.ours_calls,
                "total_cost_usd": str(self.ours_cost_usd),
                "total_tokens": self.ours_tokens,
                "unpriced_calls": self.unpriced_calls,
                "unpriced_tokens": self.unpriced_tokens,
                "by_provider": dict(self.by_provider),
            },
            "vendor": {"total_calls": self.vendor_calls, "total_cost_usd": str(self.vendor_cost_usd)},
            "variance_pct": str(self.variance_pct),
            "cost_variance_pct": str(self.cost_variance_pct),
            "coverage_pct": str(self.coverage_pct),
            "missing_calls": self.missing_calls,
            "generated_at": self.generated_at.isoformat(),
            "lines": [line.to_json() for line in self.lines],
        }


@dataclass(slots=True)
class _Ours:
    calls: int = 0
    cost: Decimal = field(default_factory=Decimal)
    tokens: int = 0
    unpriced_calls: int = 0
    unpriced_tokens: int = 0

    def add(self, other: _Ours) -> None:
        self.calls += other.calls
        self.cost += other.cost
        self.tokens += other.tokens
        self.unpriced_calls += other.unpriced_calls
        self.unpriced_tokens += other.unpriced_tokens


def _threshold(value: Decimal | int | str) -> Decimal:
    try:
        threshold = Decimal(value)
    except (ArithmeticError, ValueError, TypeError):
        raise InvalidRequestError(f"threshold_pct must be a number, got {value!r}") from None
    if not threshold.is_finite() or threshold < 0 or threshold > 1000:
        raise InvalidRequestError("threshold_pct must be between 0 and 1000")
    return threshold


class Reconciler:
    """Compares the ledger with one usage source and files the report.

    `threshold_pct` (default 2) is a percentage; `alert` is called with the result on FAIL, after the
    report is committed; it may be a plain function or a coroutine function, and its errors propagate.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        source: UsageSource,
        *,
        threshold_pct: Decimal | int | str = DEFAULT_THRESHOLD_PCT,
        alert: AlertHook | None = None,
    ) -> None:
        if not isinstance(source, UsageSource):
            raise InvalidRequestError(f"source must be a UsageSource, got {type(source).__name__}")
        self.engine = engine
        self.source = source
        self.threshold_pct = _threshold(threshold_pct)
        self.alert = alert

    async def reconcile(self, start: datetime, end: datetime) -> ReconciliationResult:
        check_period(start, end)
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        vendor = await self.source.fetch(start, end)
        ours = await self._ours(start, end)
        lines = _compare(ours, vendor, self.threshold_pct)
        result = await self._save(start, end, ours, vendor, lines)
        if result.status == "FAIL" and self.alert is not None:
            outcome = self.alert(result)
            if inspect.isawaitable(outcome):
                await outcome
        return result

    async def _ours(self, start: datetime, end: datetime) -> dict[tuple[str, str, date], _Ours]:
        """Calls, cost, tokens and unpriced calls per provider, model and UTC day, in one scan of the period."""
        calls = _AI_CALLS.c
        inner = (
            select(
                calls.provider,
                calls.model,
                cast(func.timezone(literal("UTC"), calls.created_at), Date).label("day"),
                calls.cost_usd,
                calls.total_tokens,
                (calls.cost_source == "unpriced").label("unpriced"),
            )
            .where(calls.created_at >= start, calls.created_at < end)
            .subquery("period")
        )
        stmt = select(
            inner.c.provider,
            inner.c.model,
            inner.c.day,
            func.count(),
            func.coalesce(func.sum(inner.c.cost_usd), 0),
            func.coalesce(func.sum(inner.c.total_tokens), 0),
            func.count().filter(inner.c.unpriced),
            func.coalesce(func.sum(inner.c.total_tokens).filter(inner.c.unpriced), 0),
        ).group_by(inner.c.provider, inner.c.model, inner.c.day)
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        except Exception as exc:
            raise_translated(exc)
        return {
            (str(p), str(m), d): _Ours(int(n), Decimal(cost), int(tokens), int(un), int(ut))
            for p, m, d, n, cost, tokens, un, ut in rows
        }

    async def _save(
        self,
        start: datetime,
        end: datetime,
        ours: Mapping[tuple[str, str, date], _Ours],
        vendor: VendorUsage,
        lines: list[ReconciliationLine],
    ) -> ReconciliationResult:
        total = lines[0]
        providers: dict[str, _Ours] = {}
        for (provider, _, _), amount in ours.items():
            providers.setdefault(provider, _Ours()).add(amount)
        by_provider = {
            p: {
                "calls": a.calls,
                "cost_usd": str(a.cost),
                "tokens": a.tokens,
                "unpriced_calls": a.unpriced_calls,
                "unpriced_tokens": a.unpriced_tokens,
            }
            for p, a in sorted(providers.items())
        }
        tokens = sum(a.tokens for a in providers.values())
        unpriced_calls = sum(a.unpriced_calls for a in providers.values())
        unpriced_tokens = sum(a.unpriced_tokens for a in providers.values())
        status: Status = (
            "PASS" if all(line.status == "matched" for line in lines if line.level != "model_day") else "FAIL"
        )
        coverage = _coverage(lines, vendor)
        values = {
            "report_date": datetime.now(UTC).date(),
            "period_start": start,
            "period_end": end,
            "source": self.source.name,
            "total_calls": total.ours_calls,
            "total_cost_usd": total.ours_cost_usd,
            "total_tokens": tokens,
            "provider_stats": by_provider,
            "unpriced_calls": unpriced_calls,
            "unpriced_tokens": unpriced_tokens,
            "revenium_calls": total.vendor_calls,
            "revenium_cost_usd": total.vendor_cost_usd,
            "variance_pct": total.calls_variance_pct,
            "cost_variance_pct": total.cost_variance_pct,
            "coverage_pct": coverage,
            "threshold_pct": self.threshold_pct,
            "status": status,
            "lines": [line.to_json() for line in lines],
        }
        insert = pg_insert(_REPORTS).values(values)
        replaced = {
            name: insert.excluded[name]
            for name in values
            if name not in ("period_start", "period_end", "source")
        }
        stmt = insert.on_conflict_do_update(
            constraint=_REPORT_KEY, set_={**replaced, "generated_at": func.now()}
        ).returning(_REPORTS.c.id, _REPORTS.c.generated_at)
        try:
            async with self.engine.begin() as conn:
                report_id, generated_at = (await conn.execute(stmt)).one()
        except Exception as exc:
            raise_translated(exc)
        return ReconciliationResult(
            id=int(report_id),
            source=self.source.name,
            period_start=start,
            period_end=end,
            status=status,
            threshold_pct=self.threshold_pct,
            ours_calls=total.ours_calls,
            ours_cost_usd=total.ours_cost_usd,
            ours_tokens=tokens,
            vendor_calls=total.vendor_calls,
            vendor_cost_usd=total.vendor_cost_usd,
            variance_pct=total.calls_variance_pct,
            cost_variance_pct=total.cost_variance_pct,
            coverage_pct=coverage,
            generated_at=generated_at,
            lines=tuple(lines),
            by_provider=by_provider,
            unpriced_calls=unpriced_calls,
            unpriced_tokens=unpriced_tokens,
        )


def _line(
    level: Level,
    key: tuple[str | None, str | None, date | None],
    ours_calls: int,
    ours_cost: Decimal,
    vendor: UsageAmount | None,
    threshold: Decimal,
    ours_unpriced: int = 0,
) -> ReconciliationLine:
    vendor_calls = vendor.calls if vendor else 0
    vendor_cost = vendor.cost_usd if vendor else Decimal(0)
    calls_var = variance_pct(ours_calls, vendor_calls)
    cost_var = variance_pct(ours_cost, vendor_cost)
    status: LineStatus
    ours_empty = ours_calls == 0 and ours_cost == 0
    vendor_empty = vendor_calls == 0 and vendor_cost == 0
    if ours_empty and vendor_empty:
        status = "matched"
    elif vendor_empty:
        status = "ours_only"
    elif ours_empty:
        status = "vendor_only"
    elif any(v > 0 and v >= threshold for v in (calls_var, cost_var)):
        status = "amount_mismatch"
    else:
        status = "matched"
    provider, model, day = key
    return ReconciliationLine(
        level,
        provider,
        model,
        day,
        ours_calls,
        vendor_calls,
        ours_cost,
        vendor_cost,
        calls_var,
        cost_var,
        status,
        ours_unpriced,
    )


def _compare(
    ours: Mapping[tuple[str, str, date], _Ours], vendor: VendorUsage, threshold: Decimal
) -> list[ReconciliationLine]:
    total_calls = sum(a.calls for a in ours.values())
    total_cost = sum((a.cost for a in ours.values()), Decimal(0))
    total_unpriced = sum(a.unpriced_calls for a in ours.values())
    lines = [
        _line(
            "total",
            (None, None, None),
            total_calls,
            total_cost,
            UsageAmount(vendor.total_calls, vendor.total_cost_usd),
            threshold,
            total_unpriced,
        )
    ]
    if vendor.by_provider is not None:
        per_provider: dict[str, _Ours] = {}
        for (provider, _, _), amount in ours.items():
            per_provider.setdefault(provider, _Ours()).add(amount)
        for provider in sorted(per_provider.keys() | vendor.by_provider.keys()):
            mine = per_provider.get(provider, _Ours())
            lines.append(
                _line(
                    "provider",
                    (provider, None, None),
                    mine.calls,
                    mine.cost,
                    vendor.by_provider.get(provider),
                    threshold,
                    mine.unpriced_calls,
                )
            )
    if vendor.lines is not None:
        theirs: dict[tuple[str, str, date], UsageAmount] = {}
        for line in vendor.lines:
            key = (line.provider, line.model, line.day)
            seen = theirs.get(key)
            theirs[key] = UsageAmount(
                line.calls + (seen.calls if seen else 0), line.cost_usd + (seen.cost_usd if seen else 0)
            )
        for key in sorted(ours.keys() | theirs.keys(), key=lambda k: (k[2], k[0], k[1])):
            mine = ours.get(key, _Ours())
            lines.append(
                _line(
                    "model_day", key, mine.calls, mine.cost, theirs.get(key), threshold, mine.unpriced_calls
                )
            )
    return lines


def _coverage(lines: list[ReconciliationLine], vendor: VendorUsage) -> Decimal:
    if vendor.total_calls == 0:
        return Decimal(100)
    finest: Level = "model_day" if vendor.lines is not None else "provider" if vendor.by_provider else "total"
    covered = sum(min(line.ours_calls, line.vendor_calls) for line in lines if line.level == finest)
    pct = (Decimal(covered) * 100 / Decimal(vendor.total_calls)).quantize(_COVERAGE, ROUND_HALF_UP)
    return min(pct, Decimal(100))


async def reconcile(
    engine: AsyncEngine,
    source: UsageSource,
    start: datetime,
    end: datetime,
    *,
    threshold_pct: Decimal | int | str = DEFAULT_THRESHOLD_PCT,
    alert: AlertHook | None = None,
) -> ReconciliationResult:
    """One-shot `Reconciler(engine, source, ...).reconcile(start, end)`."""
    return await Reconciler(engine, source, threshold_pct=threshold_pct, alert=alert).reconcile(start, end)
