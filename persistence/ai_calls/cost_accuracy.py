"""Cost accuracy (seed 002's `cost_accuracy_validations`): provided vs computed cost, per call and per day.

Per call, `cost_calculations` (a view over the ledger, see `models/cost_accuracy.py`) gives the cost
the caller recorded (the provider's figure) beside ours from the price row in force. A validation run
over [start, end) judges every call that has both against a `CostTolerance` and files one row per
provider, model and UTC day, with its verdict and its worst calls.

The whole run is one aggregate statement over the ledger (window-ranked offenders included), written
with `INSERT ... SELECT` after deleting the period's previous rows, in one transaction holding a
transaction-level advisory lock on the period: a re-run replaces, and two concurrent runs of the same
period serialise instead of colliding on the unique key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlalchemy import BigInteger, DateTime, Integer, Numeric, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.advisory import advisory_key
from persistence.ai_calls.sources import check_period
from persistence.errors import InvalidRequestError, raise_translated

Verdict = Literal["ok", "over_tolerance", "no_provided_cost", "unpriced"]
RunVerdict = Literal["ok", "over_tolerance", "no_provided_cost", "unpriced", "no_calls"]

DEFAULT_TOP_N = 5
_MAX_PCT = Decimal("99999999.9999")  # NUMERIC(12, 4)
# Worst first: a run's verdict is that of its worst day.
_SEVERITY: tuple[Verdict, ...] = ("over_tolerance", "ok", "no_provided_cost", "unpriced")


def _decimal(value: Decimal | int | str, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise InvalidRequestError(f"{what} must be a Decimal, int or str, got {type(value).__name__}")
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        raise InvalidRequestError(f"{what} must be a number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise InvalidRequestError(f"{what} must be a finite, non-negative number")
    return number


@dataclass(frozen=True, slots=True)
class CostTolerance:
    """How far a provided cost may be from ours: |provided - computed| <= absolute + relative% of computed.

    The default allows one micro-dollar (both sides round to 6 places) and nothing relative. Either
    part may be zero; both zero demands exact equality.
    """

    absolute_usd: Decimal = Decimal("0.000001")
    relative_pct: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "absolute_usd", _decimal(self.absolute_usd, "absolute_usd"))
        object.__setattr__(self, "relative_pct", _decimal(self.relative_pct, "relative_pct"))
        if self.absolute_usd >= Decimal("1e8") or self.relative_pct >= Decimal("1e5"):
            raise InvalidRequestError("tolerance too large: absolute_usd < 1e8, relative_pct < 1e5")

    def allowed(self, reference: Decimal) -> Decimal:
        """The largest |difference| allowed around `reference` (our figure)."""
        return self.absolute_usd + self.relative_pct * abs(reference) / 100

    def allows(self, figure: Decimal, reference: Decimal) -> bool:
        return abs(figure - reference) <= self.allowed(reference)

    def describe(self) -> str:
        return f"|provided - computed| <= {self.absolute_usd} USD + {self.relative_pct}% of computed"


@dataclass(frozen=True, slots=True)
class WorstCall:
    """One of a day's largest differences between the provided and the computed cost."""

    call_id: int
    created_at: datetime
    provided_cost_usd: Decimal
    computed_cost_usd: Decimal
    abs_variance_usd: Decimal


@dataclass(frozen=True, slots=True)
class CostAccuracyLine:
    """One provider/model/UTC day of a run (a row of `cost_accuracy_validations`)."""

    provider: str
    model: str
    day: date
    calls: int
    compared_calls: int
    computed_only_calls: int
    unpriced_calls: int
    calls_over_tolerance: int
    computed_cost_usd: Decimal
    provided_cost_usd: Decimal
    variance_usd: Decimal
    abs_variance_usd: Decimal
    variance_pct: Decimal | None
    verdict: Verdict
    worst_calls: tuple[WorstCall, ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class CostAccuracyReport:
    """A filed run over [period_start, period_end): its lines by day, provider and model."""

    period_start: datetime
    period_end: datetime
    tolerance: CostTolerance
    validated_at: datetime | None
    lines: tuple[CostAccuracyLine, ...]

    @property
    def verdict(self) -> RunVerdict:
        """The worst line's verdict (`no_calls` for an empty period)."""
        present = {line.verdict for line in self.lines}
        return next((v for v in _SEVERITY if v in present), "no_calls")

    @property
    def passed(self) -> bool:
        return all(line.verdict != "over_tolerance" for line in self.lines)

    @property
    def calls(self) -> int:
        return sum(line.calls for line in self.lines)

    @property
    def calls_over_tolerance(self) -> int:
        return sum(line.calls_over_tolerance for line in self.lines)

    @property
    def abs_variance_usd(self) -> Decimal:
        return sum((line.abs_variance_usd for line in self.lines), Decimal(0))

    def over_tolerance(self) -> list[CostAccuracyLine]:
        return [line for line in self.lines if line.verdict == "over_tolerance"]

    def line(self, provider: str, model: str, day: date) -> CostAccuracyLine | None:
        return next((x for x in self.lines if (x.provider, x.model, x.day) == (provider, model, day)), None)


# The calls of the period ranked per day by |variance|; one aggregate per provider/model/day; the
# verdict in SQL. `:top` bounds the offenders kept; a call without both costs is never one.
_RUN = text(
    """
WITH ranked AS (
    SELECT provider, model, day, call_id, created_at, provided_cost_usd, computed_cost_usd, abs_variance_usd,
           abs_variance_usd > :atol + :rtol * computed_cost_usd / 100 AS over,
           row_number() OVER (PARTITION BY provider, model, day
                              ORDER BY abs_variance_usd DESC NULLS LAST, call_id) AS rank
      FROM cost_calculations
     WHERE created_at >= :start AND created_at < :end
), days AS (
    SELECT provider, model, day,
           count(*) AS calls,
           count(abs_variance_usd) AS compared_calls,
           count(*) FILTER (WHERE computed_cost_usd IS NOT NULL AND abs_variance_usd IS NULL) AS computed_only,
           count(*) FILTER (WHERE computed_cost_usd IS NULL) AS unpriced,
           count(*) FILTER (WHERE over) AS over_tolerance,
           coalesce(sum(computed_cost_usd) FILTER (WHERE abs_variance_usd IS NOT NULL), 0) AS computed,
           coalesce(sum(provided_cost_usd) FILTER (WHERE abs_variance_usd IS NOT NULL), 0) AS provided,
           coalesce(sum(abs_variance_usd), 0) AS abs_variance,
           coalesce(jsonb_agg(jsonb_build_object(
                        'call_id', call_id, 'created_at', created_at,
                        'provided_cost_usd', provided_cost_usd::text, 'computed_cost_usd', computed_cost_usd::text,
                        'abs_variance_usd', abs_variance_usd::text) ORDER BY rank)
                    FILTER (WHERE rank <= :top AND abs_variance_usd > 0), '[]'::jsonb) AS worst
      FROM ranked
     GROUP BY provider, model, day
)
INSERT INTO cost_accuracy_validations (
    period_start, period_end, provider, model, day, calls, compared_calls, computed_only_calls,
    unpriced_calls, calls_over_tolerance, computed_cost_usd, provided_cost_usd, variance_usd,
    abs_variance_usd, variance_pct, absolute_tolerance_usd, relative_tolerance_pct, verdict, worst_calls)
SELECT :start, :end, provider, model, day, calls, compared_calls, computed_only, unpriced, over_tolerance,
       computed, provided, provided - computed, abs_variance,
       CASE WHEN computed > 0 THEN least(round(abs_variance * 100 / computed, 4), :max_pct) END,
       :atol, :rtol,
       CASE WHEN over_tolerance > 0 THEN 'over_tolerance'
            WHEN compared_calls > 0 THEN 'ok'
            WHEN computed_only > 0 THEN 'no_provided_cost'
            ELSE 'unpriced' END,
       worst
  FROM days
"""
).bindparams(
    bindparam("start", type_=DateTime(timezone=True)),
    bindparam("end", type_=DateTime(timezone=True)),
    bindparam("atol", type_=Numeric()),
    bindparam("rtol", type_=Numeric()),
    bindparam("max_pct", type_=Numeric()),
    bindparam("top", type_=Integer()),
)

_DELETE = text(
    "DELETE FROM cost_accuracy_validations WHERE period_start = :start AND period_end = :end"
).bindparams(
    bindparam("start", type_=DateTime(timezone=True)), bindparam("end", type_=DateTime(timezone=True))
)

_LOCK = text("SELECT pg_advisory_xact_lock(:key)").bindparams(bindparam("key", type_=BigInteger()))

_LOAD = text(
    """
SELECT provider, model, day, calls, compared_calls, computed_only_calls, unpriced_calls, calls_over_tolerance,
       computed_cost_usd, provided_cost_usd, variance_usd, abs_variance_usd, variance_pct, verdict, worst_calls,
       absolute_tolerance_usd, relative_tolerance_pct, validated_at
  FROM cost_accuracy_validations
 WHERE period_start = :start AND period_end = :end
 ORDER BY day, provider, model
"""
).bindparams(
    bindparam("start", type_=DateTime(timezone=True)), bindparam("end", type_=DateTime(timezone=True))
)


def _period(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    check_period(start, end)
    return start.astimezone(UTC), end.astimezone(UTC)


def _worst(entries: Sequence[Mapping[str, Any]]) -> tuple[WorstCall, ...]:
    return tuple(
        WorstCall(
            call_id=int(e["call_id"]),
            created_at=datetime.fromisoformat(str(e["created_at"])).astimezone(UTC),
            provided_cost_usd=Decimal(str(e["provided_cost_usd"])),
            computed_cost_usd=Decimal(str(e["computed_cost_usd"])),
            abs_variance_usd=Decimal(str(e["abs_variance_usd"])),
        )
        for e in entries
    )


async def _read(
    conn: AsyncConnection, start: datetime, end: datetime, tolerance: CostTolerance | None
) -> CostAccuracyReport | None:
    rows = (await conn.execute(_LOAD, {"start": start, "end": end})).all()
    if not rows:
        return None
    lines = tuple(
        CostAccuracyLine(
            provider=r.provider,
            model=r.model,
            day=r.day,
            calls=r.calls,
            compared_calls=r.compared_calls,
            computed_only_calls=r.computed_only_calls,
            unpriced_calls=r.unpriced_calls,
            calls_over_tolerance=r.calls_over_tolerance,
            computed_cost_usd=r.computed_cost_usd,
            provided_cost_usd=r.provided_cost_usd,
            variance_usd=r.variance_usd,
            abs_variance_usd=r.abs_variance_usd,
            variance_pct=r.variance_pct,
            verdict=r.verdict,
            worst_calls=_worst(r.worst_calls),
        )
        for r in rows
    )
    first = rows[0]
    tolerance = tolerance or CostTolerance(first.absolute_tolerance_usd, first.relative_tolerance_pct)
    return CostAccuracyReport(start, end, tolerance, first.validated_at, lines)


async def validate_cost_accuracy(
    engine: AsyncEngine,
    *,
    start: datetime,
    end: datetime,
    tolerance: CostTolerance | None = None,
    top: int = DEFAULT_TOP_N,
) -> CostAccuracyReport:
    """Judge every call in [start, end) that has a provided and a computed cost; file and return the run.

    Replaces an earlier run over exactly the same period (its rows are deleted in the same
    transaction). `top` is the number of worst calls kept per provider/model/day.
    """
    start, end = _period(start, end)
    tolerance = tolerance or CostTolerance()
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 1000:
        raise InvalidRequestError("top must be a whole number between 0 and 1000")
    params = {
        "start": start,
        "end": end,
        "atol": tolerance.absolute_usd,
        "rtol": tolerance.relative_pct,
        "max_pct": _MAX_PCT,
        "top": top,
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(
                _LOCK, {"key": advisory_key(f"cost_accuracy:{start.isoformat()}:{end.isoformat()}")}
            )
            await conn.execute(_DELETE, {"start": start, "end": end})
            await conn.execute(_RUN, params)
            report = await _read(conn, start, end, tolerance)
    except Exception as exc:
        raise_translated(exc)
    if report is None:  # nothing in the period: an empty run (its deletion of an older one stands)
        return CostAccuracyReport(start, end, tolerance, None, ())
    return report


async def load_cost_accuracy(
    engine: AsyncEngine, *, start: datetime, end: datetime
) -> CostAccuracyReport | None:
    """The filed run over exactly [start, end), or None when none was filed (or it found no calls)."""
    start, end = _period(start, end)
    try:
        async with engine.connect() as conn:
            return await _read(conn, start, end, None)
    except Exception as exc:
        raise_translated(exc)
