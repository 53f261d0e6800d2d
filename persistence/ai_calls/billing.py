"""Billing validation (seed 002's `billing_data`): vendor invoices and usage exports against our ledger.

Billed lines come from three places, all ending in `record_billing_rows`: the typed API (`BillingRow`),
a CSV/JSON file (`load_billing_file`, errors name the line and field), or the metering vendor's usage
source the reconciliation already reads (`import_usage_source` over `sources.UsageSource`).

A period is one provider's UTC calendar month, `open -> grace -> closed` (`close_due_periods`, driven
by the caller's clock: conditional UPDATEs, so concurrent closers cannot skip or repeat a step). Grace
lasts the provider's late-data window (`BillingPolicy`; 35 days by default, Stripe's limit for late
usage). A row is filed against its period's state *at insert time*: the insert takes a share lock on
the period row, so it is ordered against a concurrent close; a row for a closed period becomes an
`adjustment`, never part of the period.

`validate_billing` compares billed USD with the ledger's `cost_usd` per model and UTC day (per model
for the period when a vendor bills a model for the whole period), files the result (one row per
period, replaced by each run) and returns it. Once the period is closed, its filed result is final:
a later run returns it unchanged, with the adjustments recorded since.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.ai_calls.cost_accuracy import CostTolerance
from persistence.ai_calls.reconciliation import variance_pct
from persistence.ai_calls.sources import UsageSource, check_period
from persistence.errors import InvalidRequestError, NotFoundError, UsageSourceError, raise_translated

PeriodState = Literal["open", "grace", "closed"]
BillingVerdict = Literal["ok", "mismatch"]
LineStatus = Literal["matched", "ours_only", "billed_only", "amount_mismatch"]

DEFAULT_LATE_WINDOW = timedelta(days=35)  # Stripe accepts meter events up to 35 days old
# Invoices are in cents: a line within one cent of the ledger matches.
DEFAULT_BILLING_TOLERANCE = CostTolerance(absolute_usd=Decimal("0.01"), relative_pct=Decimal(0))
_PROVIDER_LEN, _MODEL_LEN, _SOURCE_LEN, _EXTERNAL_LEN = 50, 100, 200, 300
_MAX_AMOUNT = Decimal("1e12")  # NUMERIC(24, 12)


class BillingFileError(UsageSourceError):
    """A billing file could not be read, or one of its rows is malformed: `line` and `field` say where."""

    def __init__(
        self, message: str, *, path: Path, line: int | None = None, field: str | None = None
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = (
            path.name + (f" line {line}" if line is not None else "") + (f", field {field}" if field else "")
        )
        super().__init__(f"{where}: {message}")


class BillingRowError(InvalidRequestError):
    """A `BillingRow` field holds something it cannot: `field` names it, `problem` says what is wrong."""

    def __init__(self, field: str, problem: str, external_id: object = None) -> None:
        self.field = field
        self.problem = problem
        row = f"billing row {external_id!r}: " if isinstance(external_id, str) else ""
        super().__init__(f"{row}{field}: {problem}")


_FieldError = BillingRowError  # what the field parsers raise; BillingRow adds its external id


def _month(d: date) -> date:
    return d.replace(day=1)


def _next_month(d: date) -> date:
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    """Each provider's late-data window (how long after a month ends its bill may still change)."""

    late_windows: Mapping[str, timedelta] = field(default_factory=dict)
    default_late_window: timedelta = DEFAULT_LATE_WINDOW

    def __post_init__(self) -> None:
        windows = {str(p).lower(): w for p, w in self.late_windows.items()}
        for provider, window in [*windows.items(), ("default", self.default_late_window)]:
            if not isinstance(window, timedelta) or window < timedelta(0):
                raise InvalidRequestError(f"late window of {provider!r} must be a non-negative timedelta")
        object.__setattr__(self, "late_windows", windows)

    def late_window(self, provider: str) -> timedelta:
        return self.late_windows.get(provider.lower(), self.default_late_window)


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > limit:
        raise _FieldError(name, f"expected a non-empty string of at most {limit} characters")
    return value.strip()


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise _FieldError(
            "amount_usd", f"expected an amount (Decimal, int or str), got {type(value).__name__}"
        )
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise _FieldError("amount_usd", f"not a number: {value!r}") from None
    if not amount.is_finite() or abs(amount) >= _MAX_AMOUNT:
        raise _FieldError("amount_usd", "expected a finite amount below 1e12")
    return amount


def _count(value: object, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise _FieldError(name, f"expected a whole number, got {type(value).__name__}")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise _FieldError(name, f"not a number: {value!r}") from None
    if not number.is_finite() or number != number.to_integral_value() or number < 0:
        raise _FieldError(name, "expected a non-negative whole number")
    return int(number)


def _date(value: object, name: str) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo else value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        raw = value.strip()
        try:
            return date.fromisoformat(raw + "-01" if len(raw) == 7 else raw)  # YYYY-MM for a period
        except ValueError:
            pass
    raise _FieldError(name, f"expected a date (YYYY-MM-DD), got {value!r}")


@dataclass(frozen=True, slots=True)
class BillingRow:
    """One billed line. `day` (UTC) for a daily line, else `period` (any date of the billed month).

    `provider` is compared in lower case, as the ledger's are. `amount_usd` may be negative (a
    credit). `(source, external_id)` identifies the line: recording it twice adds it once.
    """

    provider: str
    model: str
    amount_usd: Decimal
    source: str
    external_id: str
    day: date | None = None
    period: date | None = None
    calls: int | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        try:
            self._check()
        except BillingRowError as exc:
            raise BillingRowError(exc.field, exc.problem, self.external_id) from None

    def _check(self) -> None:
        set_ = object.__setattr__
        set_(self, "provider", _text(self.provider, "provider", _PROVIDER_LEN).lower())
        set_(self, "model", _text(self.model, "model", _MODEL_LEN))
        set_(self, "source", _text(self.source, "source", _SOURCE_LEN))
        set_(self, "external_id", _text(self.external_id, "external_id", _EXTERNAL_LEN))
        set_(self, "amount_usd", _amount(self.amount_usd))
        set_(self, "day", _date(self.day, "day"))
        set_(self, "period", _date(self.period, "period"))
        set_(self, "calls", _count(self.calls, "calls"))
        set_(self, "tokens", _count(self.tokens, "tokens"))
        if self.day is None and self.period is None:
            raise _FieldError("day", "a row needs a day or a period")
        if self.day is not None and self.period is not None and _month(self.day) != _month(self.period):
            raise _FieldError("period", f"day {self.day} is not in the period {self.period:%Y-%m}")

    @property
    def month(self) -> date:
        """The first day of the billed month."""
        when = self.day if self.day is not None else self.period
        assert when is not None  # checked in __post_init__
        return _month(when)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

_ALIASES = {
    "provider": ("provider", "vendor"),
    "model": ("model",),
    "day": ("day", "date"),
    "period": ("period", "month"),
    "amount_usd": ("amount_usd", "amount", "cost_usd", "cost"),
    "calls": ("calls", "requests"),
    "tokens": ("tokens", "total_tokens"),
    "external_id": ("external_id", "id", "line_id", "invoice_line_id"),
    "source": ("source",),
}


def _row(entry: Mapping[str, Any], default_source: str) -> BillingRow:
    values: dict[str, Any] = {}
    for name, aliases in _ALIASES.items():
        values[name] = next((entry[a] for a in aliases if a in entry and entry[a] not in (None, "")), None)
    for required in ("provider", "model", "amount_usd", "external_id"):
        if values[required] is None:
            raise _FieldError(required, "missing")
    if values["source"] is None:
        values["source"] = default_source
    return BillingRow(**values)


def load_billing_file(path: Path | str, *, source: str | None = None) -> list[BillingRow]:
    """Billing rows from a CSV (header row; columns as `BillingRow`'s fields, common aliases accepted)
    or JSON file (a list of objects, or `{"rows": [...]}`; numbers read as Decimal).

    `source` (default `file:<name>`) fills rows without a `source` column. A malformed row raises
    `BillingFileError` naming its line (CSV: the file line; JSON: the 1-based item) and field.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise BillingFileError("a billing file must be .csv or .json", path=path)
    default_source = source or f"file:{path.name}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BillingFileError(f"cannot read the file ({exc.strerror})", path=path) from None
    try:
        body = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BillingFileError("not UTF-8", path=path) from None
    entries: Iterable[tuple[int, Mapping[str, Any]]]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(body))
        if not reader.fieldnames:
            raise BillingFileError("no header row", path=path, line=1)
        entries = (
            (reader.line_num, {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()})
            for row in reader
        )
    else:
        try:
            payload = json.loads(body, parse_float=Decimal)
        except ValueError as exc:
            raise BillingFileError(f"not valid JSON ({type(exc).__name__})", path=path) from None
        items = payload.get("rows") if isinstance(payload, dict) else payload
        if not isinstance(items, list):
            raise BillingFileError('expected a list of rows, or {"rows": [...]}', path=path)
        entries = ((i, item) for i, item in enumerate(items, start=1))
    rows = []
    for line, entry in entries:
        if not isinstance(entry, Mapping):
            raise BillingFileError("expected an object", path=path, line=line)
        try:
            rows.append(_row({str(k).lower(): v for k, v in entry.items()}, default_source))
        except BillingRowError as exc:
            raise BillingFileError(exc.problem, path=path, line=line, field=exc.field) from None
    return rows


# --------------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BillingImport:
    """What one recording did: rows filed into open/grace periods, as adjustments, or already known."""

    recorded: int
    adjustments: int
    duplicates: int


_ENSURE_PERIODS = text(
    """
INSERT INTO billing_periods (provider, period_start, period_end, grace_ends_at)
SELECT * FROM unnest(CAST(:provider AS text[]), CAST(:start AS timestamptz[]), CAST(:end AS timestamptz[]),
                     CAST(:grace AS timestamptz[]))
ON CONFLICT (provider, period_start) DO NOTHING
"""
)

# The share lock orders each row against a concurrent close: a row is filed by the state it saw last.
_INSERT_ROWS = text(
    """
WITH input AS (
    SELECT * FROM unnest(CAST(:provider AS text[]), CAST(:model AS text[]), CAST(:day AS date[]),
                         CAST(:month AS timestamptz[]), CAST(:amount AS numeric[]), CAST(:calls AS integer[]),
                         CAST(:tokens AS bigint[]), CAST(:source AS text[]), CAST(:external_id AS text[]))
           WITH ORDINALITY AS i(provider, model, day, month, amount, calls, tokens, source, external_id, n)
), periods AS (
    SELECT p.id, p.provider, p.period_start, p.state
      FROM billing_periods p
     WHERE (p.provider, p.period_start) IN (SELECT provider, month FROM input)
       FOR SHARE
)
INSERT INTO billing_data (period_id, kind, provider, model, day, amount_usd, calls, tokens, source, external_id)
SELECT p.id, CASE WHEN p.state = 'closed' THEN 'adjustment' ELSE 'usage' END,
       i.provider, i.model, i.day, i.amount, i.calls, i.tokens, i.source, i.external_id
  FROM input i JOIN periods p ON p.provider = i.provider AND p.period_start = i.month
 ORDER BY i.n
ON CONFLICT (source, external_id) DO NOTHING
RETURNING kind
"""
)


async def record_billing_rows(
    engine: AsyncEngine, rows: Iterable[BillingRow], *, policy: BillingPolicy | None = None
) -> BillingImport:
    """File `rows` (one transaction), creating their periods (state `open`) as needed.

    A row whose period is closed is filed as an `adjustment` of that period; a row whose
    `(source, external_id)` is already filed is skipped (counted in `duplicates`).
    """
    policy = policy or BillingPolicy()
    batch = list(rows)
    for i, row in enumerate(batch):
        if not isinstance(row, BillingRow):
            raise InvalidRequestError(f"rows[{i}] must be a BillingRow, got {type(row).__name__}")
    if not batch:
        return BillingImport(0, 0, 0)
    periods = sorted({(row.provider, row.month) for row in batch})
    period_params = {
        "provider": [p for p, _ in periods],
        "start": [_midnight(m) for _, m in periods],
        "end": [_midnight(_next_month(m)) for _, m in periods],
        "grace": [_midnight(_next_month(m)) + policy.late_window(p) for p, m in periods],
    }
    row_params = {
        "provider": [r.provider for r in batch],
        "model": [r.model for r in batch],
        "day": [r.day for r in batch],
        "month": [_midnight(r.month) for r in batch],
        "amount": [r.amount_usd for r in batch],
        "calls": [r.calls for r in batch],
        "tokens": [r.tokens for r in batch],
        "source": [r.source for r in batch],
        "external_id": [r.external_id for r in batch],
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(_ENSURE_PERIODS, period_params)
            kinds = [k for (k,) in (await conn.execute(_INSERT_ROWS, row_params)).all()]
    except Exception as exc:
        raise_translated(exc)
    adjustments = kinds.count("adjustment")
    return BillingImport(len(kinds) - adjustments, adjustments, len(batch) - len(kinds))


async def import_billing_file(
    engine: AsyncEngine, path: Path | str, *, source: str | None = None, policy: BillingPolicy | None = None
) -> BillingImport:
    """`load_billing_file` then `record_billing_rows`: a malformed file records nothing."""
    return await record_billing_rows(engine, load_billing_file(path, source=source), policy=policy)


_SOURCE_TOTALS = text(
    """
SELECT provider, model, day, sum(amount_usd), count(*)
  FROM billing_data
 WHERE source = :source AND day >= :first AND day <= :last AND day IS NOT NULL
 GROUP BY provider, model, day
"""
)


async def import_usage_source(
    engine: AsyncEngine,
    source: UsageSource,
    *,
    start: datetime,
    end: datetime,
    policy: BillingPolicy | None = None,
) -> BillingImport:
    """Record what a usage source (the metering vendor's API or export, `sources.py`) reports for
    [start, end), one row per provider/model/day, as billed usage under `source.name`.

    A source restates a day's total when late usage arrives, so each import records only the change
    since the last one (idempotent: an unchanged day adds nothing); a change to a closed period's
    day becomes an adjustment of it. The source must give per-model/day lines.
    """
    check_period(start, end)
    usage = await source.fetch(start, end)
    if usage.lines is None:
        raise UsageSourceError(f"{source.name}: the usage report has no per-model/day lines to bill")
    if not usage.lines:
        return BillingImport(0, 0, 0)
    days = [line.day for line in usage.lines]
    try:
        async with engine.connect() as conn:
            known = {
                (str(p), str(m), d): (Decimal(total), int(n))
                for p, m, d, total, n in (
                    await conn.execute(
                        _SOURCE_TOTALS, {"source": source.name, "first": min(days), "last": max(days)}
                    )
                ).all()
            }
    except Exception as exc:
        raise_translated(exc)
    totals: dict[tuple[str, str, date], tuple[Decimal, int]] = {}
    for line in usage.lines:
        cost, calls = totals.get((line.provider, line.model, line.day), (Decimal(0), 0))
        totals[(line.provider, line.model, line.day)] = (cost + line.cost_usd, calls + line.calls)
    rows = []
    for (provider, model, day), (cost, calls) in sorted(totals.items()):
        billed, n = known.get((provider, model, day), (Decimal(0), 0))
        if n and cost == billed:
            continue
        rows.append(
            BillingRow(
                provider=provider,
                model=model,
                day=day,
                amount_usd=cost - billed,
                calls=calls if n == 0 else None,  # a restatement changes the amount; calls stay on the first
                source=source.name,
                external_id=f"{provider}/{model}/{day.isoformat()}#{n}",
            )
        )
    return await record_billing_rows(engine, rows, policy=policy)


# --------------------------------------------------------------------------------------------------
# Periods
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BillingPeriodInfo:
    """A provider's billing month and its state (a row of `billing_periods`)."""

    id: int
    provider: str
    period_start: datetime
    period_end: datetime
    grace_ends_at: datetime
    state: PeriodState
    grace_at: datetime | None
    closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class PeriodTransition:
    period: BillingPeriodInfo
    previous: PeriodState


_PERIOD_COLUMNS = "id, provider, period_start, period_end, grace_ends_at, state, grace_at, closed_at"

_TO_GRACE = text(
    "UPDATE billing_periods SET state = 'grace', grace_at = :now WHERE state = 'open' AND period_end <= :now "
    "RETURNING id, provider, period_start, period_end, grace_ends_at, state, grace_at, closed_at"
)
_TO_CLOSED = text(
    "UPDATE billing_periods SET state = 'closed', closed_at = :now WHERE state = 'grace' AND grace_ends_at <= :now "
    "RETURNING id, provider, period_start, period_end, grace_ends_at, state, grace_at, closed_at"
)


def _period_of(row: Sequence[Any]) -> BillingPeriodInfo:
    return BillingPeriodInfo(*row)


def _aware(now: datetime, name: str = "now") -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InvalidRequestError(f"{name} must be a timezone-aware datetime (UTC), got {now!r}")
    return now.astimezone(UTC)


async def close_due_periods(engine: AsyncEngine, *, now: datetime) -> list[PeriodTransition]:
    """Move every period whose time has come: open -> grace at its end, grace -> closed at `grace_ends_at`
    (both in one call when both are due). Each step is `UPDATE ... WHERE state = <previous>`, so a
    period is moved once however many closers run."""
    now = _aware(now)
    try:
        async with engine.begin() as conn:
            graced = [_period_of(r) for r in (await conn.execute(_TO_GRACE, {"now": now})).all()]
            closed = [_period_of(r) for r in (await conn.execute(_TO_CLOSED, {"now": now})).all()]
    except Exception as exc:
        raise_translated(exc)
    closed_ids = {p.id for p in closed}
    graced_ids = {p.id for p in graced}
    # A period that went open -> grace -> closed in this call reports `open` as where it came from.
    return [PeriodTransition(p, "open") for p in graced if p.id not in closed_ids] + [
        PeriodTransition(p, "open" if p.id in graced_ids else "grace") for p in closed
    ]


async def get_billing_period(engine: AsyncEngine, provider: str, month: date) -> BillingPeriodInfo:
    """The period of `provider` for the month of `month`, or `NotFoundError`."""
    stmt = text(
        f"SELECT {_PERIOD_COLUMNS} FROM billing_periods WHERE provider = :provider AND period_start = :start"  # noqa: S608
    )
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(stmt, {"provider": provider.lower(), "start": _midnight(_month(month))})
            ).first()
    except Exception as exc:
        raise_translated(exc)
    if row is None:
        raise NotFoundError("billing period", (provider, f"{month:%Y-%m}"))
    return _period_of(row)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BillingLine:
    """Billed vs ledger for one model on one UTC day (`day` None: the whole period)."""

    model: str
    day: date | None
    billed_usd: Decimal
    ledger_usd: Decimal
    ledger_calls: int
    variance_usd: Decimal  # billed - ledger
    variance_pct: Decimal
    status: LineStatus

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "day": self.day.isoformat() if self.day else None,
            "billed_usd": str(self.billed_usd),
            "ledger_usd": str(self.ledger_usd),
            "ledger_calls": self.ledger_calls,
            "variance_usd": str(self.variance_usd),
            "variance_pct": str(self.variance_pct),
            "status": self.status,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BillingLine:
        return cls(
            model=str(data["model"]),
            day=date.fromisoformat(data["day"]) if data.get("day") else None,
            billed_usd=Decimal(data["billed_usd"]),
            ledger_usd=Decimal(data["ledger_usd"]),
            ledger_calls=int(data["ledger_calls"]),
            variance_usd=Decimal(data["variance_usd"]),
            variance_pct=Decimal(data["variance_pct"]),
            status=data["status"],
        )


@dataclass(frozen=True, slots=True)
class BillingValidationReport:
    """A period's filed validation. `final`: the period is closed, so this result no longer changes;
    `adjustments_usd` / `adjustment_rows` are what arrived after it closed (live, not part of it)."""

    period: BillingPeriodInfo
    verdict: BillingVerdict
    validated_in_state: PeriodState
    billed_usd: Decimal
    ledger_usd: Decimal
    ledger_calls: int
    variance_usd: Decimal
    tolerance: CostTolerance
    validated_at: datetime
    lines: tuple[BillingLine, ...] = field(repr=False)
    adjustments_usd: Decimal
    adjustment_rows: int

    @property
    def final(self) -> bool:
        return self.period.state == "closed"

    def problems(self) -> list[BillingLine]:
        return [line for line in self.lines if line.status != "matched"]


_LOCK_PERIOD = text(f"SELECT {_PERIOD_COLUMNS} FROM billing_periods WHERE id = :id FOR SHARE")  # noqa: S608
_BILLED = text(
    "SELECT model, day, sum(amount_usd) FROM billing_data WHERE period_id = :id AND kind = 'usage' GROUP BY model, day"
)
_ADJUSTMENTS = text(
    "SELECT count(*), coalesce(sum(amount_usd), 0) FROM billing_data WHERE period_id = :id AND kind = 'adjustment'"
)
_LEDGER = text(
    """
SELECT model, (created_at AT TIME ZONE 'UTC')::date AS day, count(*), coalesce(sum(cost_usd), 0)
  FROM ai_calls
 WHERE provider = :provider AND created_at >= :start AND created_at < :end
 GROUP BY 1, 2
"""
)
_STORED = text(
    """
SELECT period_state, billed_usd, ledger_usd, ledger_calls, variance_usd, absolute_tolerance_usd,
       relative_tolerance_pct, verdict, lines, validated_at
  FROM billing_validations WHERE period_id = :id
"""
)
_SAVE = text(
    """
INSERT INTO billing_validations (period_id, period_state, billed_usd, ledger_usd, ledger_calls, variance_usd,
                                 absolute_tolerance_usd, relative_tolerance_pct, verdict, lines, validated_at)
VALUES (:id, :state, :billed, :ledger, :calls, :variance, :atol, :rtol, :verdict, CAST(:lines AS jsonb),
        clock_timestamp())
ON CONFLICT (period_id) DO UPDATE
   SET period_state = excluded.period_state, billed_usd = excluded.billed_usd, ledger_usd = excluded.ledger_usd,
       ledger_calls = excluded.ledger_calls, variance_usd = excluded.variance_usd,
       absolute_tolerance_usd = excluded.absolute_tolerance_usd,
       relative_tolerance_pct = excluded.relative_tolerance_pct, verdict = excluded.verdict,
       lines = excluded.lines, validated_at = excluded.validated_at
"""
)


def _compare(
    billed: Mapping[tuple[str, date | None], Decimal],
    ledger: Mapping[tuple[str, date], tuple[int, Decimal]],
    tolerance: CostTolerance,
) -> list[BillingLine]:
    # A model billed for the whole period (any row without a day) is compared for the whole period.
    whole = {model for model, day in billed if day is None}
    ours: dict[tuple[str, date | None], tuple[int, Decimal]] = {}
    for (model, ledger_day), (calls, cost) in ledger.items():
        ours_key = (model, None if model in whole else ledger_day)
        n, c = ours.get(ours_key, (0, Decimal(0)))
        ours[ours_key] = (n + calls, c + cost)
    theirs: dict[tuple[str, date | None], Decimal] = {}
    for (model, billed_day), billed_amount in billed.items():
        their_key = (model, None if model in whole else billed_day)
        theirs[their_key] = theirs.get(their_key, Decimal(0)) + billed_amount
    lines = []
    for key in sorted(ours.keys() | theirs.keys(), key=lambda k: (k[0], k[1] or date.min)):
        calls, cost = ours.get(key, (0, Decimal(0)))
        amount: Decimal | None = theirs.get(key)
        status: LineStatus
        if amount is None:
            status = "matched" if cost == 0 else "ours_only"
        elif key not in ours:
            status = "matched" if amount == 0 else "billed_only"
        else:
            status = "matched" if tolerance.allows(amount, cost) else "amount_mismatch"
        total = amount if amount is not None else Decimal(0)
        lines.append(
            BillingLine(
                model=key[0],
                day=key[1],
                billed_usd=total,
                ledger_usd=cost,
                ledger_calls=calls,
                variance_usd=total - cost,
                variance_pct=variance_pct(cost, total) if total >= 0 else Decimal(0),
                status=status,
            )
        )
    return lines


async def _validate(
    conn: AsyncConnection, period_id: int, tolerance: CostTolerance
) -> BillingValidationReport:
    row = (await conn.execute(_LOCK_PERIOD, {"id": period_id})).first()
    if row is None:
        raise NotFoundError("billing period", period_id)
    period = _period_of(row)
    adjustment_rows, adjustments = (await conn.execute(_ADJUSTMENTS, {"id": period_id})).one()
    stored = (await conn.execute(_STORED, {"id": period_id})).first()
    if period.state != "closed" or stored is None:
        billed = {
            (str(m), d): Decimal(a) for m, d, a in (await conn.execute(_BILLED, {"id": period_id})).all()
        }
        ledger = {
            (str(m), d): (int(n), Decimal(c))
            for m, d, n, c in (
                await conn.execute(
                    _LEDGER,
                    {"provider": period.provider, "start": period.period_start, "end": period.period_end},
                )
            ).all()
        }
        lines = _compare(billed, ledger, tolerance)
        billed_total = sum((line.billed_usd for line in lines), Decimal(0))
        ledger_total = sum((line.ledger_usd for line in lines), Decimal(0))
        await conn.execute(
            _SAVE,
            {
                "id": period_id,
                "state": period.state,
                "billed": billed_total,
                "ledger": ledger_total,
                "calls": sum(line.ledger_calls for line in lines),
                "variance": billed_total - ledger_total,
                "atol": tolerance.absolute_usd,
                "rtol": tolerance.relative_pct,
                "verdict": "ok" if all(line.status == "matched" for line in lines) else "mismatch",
                "lines": json.dumps([line.to_json() for line in lines]),
            },
        )
        stored = (await conn.execute(_STORED, {"id": period_id})).one()
    state, billed_usd, ledger_usd, calls, variance, atol, rtol, verdict, lines_json, validated_at = stored
    return BillingValidationReport(
        period=period,
        verdict=verdict,
        validated_in_state=state,
        billed_usd=billed_usd,
        ledger_usd=ledger_usd,
        ledger_calls=calls,
        variance_usd=variance,
        tolerance=CostTolerance(atol, rtol),
        validated_at=validated_at,
        lines=tuple(BillingLine.from_json(x) for x in lines_json),
        adjustments_usd=Decimal(adjustments),
        adjustment_rows=int(adjustment_rows),
    )


async def validate_billing(
    engine: AsyncEngine, period: BillingPeriodInfo | int, *, tolerance: CostTolerance | None = None
) -> BillingValidationReport:
    """Compare a period's billed usage with the ledger and file the result (replacing the previous one).

    A closed period's filed result is final: it is returned unchanged (with the adjustments recorded
    since); a period closed before any validation is validated once, then frozen the same way. The
    period row is share-locked for the run, so a concurrent close waits for it.
    """
    period_id = period.id if isinstance(period, BillingPeriodInfo) else period
    if isinstance(period_id, bool) or not isinstance(period_id, int):
        raise InvalidRequestError(
            f"period must be a BillingPeriodInfo or its id, got {type(period).__name__}"
        )
    try:
        async with engine.begin() as conn:
            return await _validate(conn, period_id, tolerance or DEFAULT_BILLING_TOLERANCE)
    except NotFoundError:
        raise
    except Exception as exc:
        raise_translated(exc)
