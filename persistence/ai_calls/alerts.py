"""Cost alerts: rules over calendar windows in a time zone, evaluated from the rollups, fired once.

- A `CostAlertRule` watches the spend of one scope (everything, an organization, customer, product,
  provider or model) over a daily, weekly or monthly window that starts at local midnight in a named
  IANA time zone (DST-aware: a window is the UTC interval between two local midnights, so a DST day
  lasts 23 or 25 hours). Thresholds are USD amounts or percentages of `budget_usd`, all `Decimal`.
- `AlertEvaluator.evaluate()` reads each window's spend in ONE statement (so one snapshot) from the
  rollups, the unfolded deltas and pending batches, and the ledger for partial hours at the edges
  (zones such as Asia/Kolkata start days at :30) — exact, like `get_stats`, without a counter. For
  every threshold at or below the spend it inserts a firing row; the UNIQUE (alert, window start,
  threshold) key makes exactly one insert win, across threads and processes, and the same statement
  writes the winner's notifications into the outbox (`cost_alerts_log`). After commit the dispatcher
  (if any) is woken to deliver them.
- Evaluation as calls are logged: `AICallLogger(engine, alerts=evaluator)` tells the evaluator
  about every committed call (`call_logged`: a set insertion, no I/O, no shared row); a background
  task evaluates the windows those calls touched, at most once per `interval` seconds (and at
  most 5% of the time, however much unfolded usage an evaluation has to read), so concurrent
  writers share one evaluation instead of each reading the window's total. A failed
  evaluation is logged and retried at the next tick; nothing is lost, because a later evaluation
  sees the same total (thresholds are compared with the window's total, not with an increment).

Over 500 lines on purpose: rules, windows and their evaluation are one concept (what fires when);
delivery is apart, in `alert_delivery.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from types import TracebackType
from typing import TYPE_CHECKING, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.record import _utc, hour_ceil, hour_floor, positive_seconds
from persistence.ai_calls.rollups import _on_raw
from persistence.errors import PersistenceError, ValidationError
from persistence.observe.loggers import get_logger

if TYPE_CHECKING:
    from persistence.ai_calls.alert_delivery import AlertDispatcher
    from persistence.ai_calls.record import AICallRecord

__all__ = [
    "AlertEvaluator",
    "AlertFiring",
    "AlertPeriod",
    "AlertScope",
    "AlertWindow",
    "CostAlertRule",
    "ThresholdKind",
]

_log = get_logger("persistence.ai_calls.alerts")

AlertScope = Literal["all", "organization", "customer", "product", "provider", "model"]
AlertPeriod = Literal["daily", "weekly", "monthly"]
ThresholdKind = Literal["amount", "percent"]

_SCOPES: tuple[str, ...] = get_args(AlertScope)
_PERIODS: tuple[str, ...] = get_args(AlertPeriod)
_KINDS: tuple[str, ...] = get_args(ThresholdKind)
_MICRO = Decimal("0.000001")
_MAX_AMOUNT = Decimal(10) ** 14  # NUMERIC(20, 6)


@dataclass(frozen=True, slots=True)
class AlertWindow:
    """A rule's window as UTC instants: [start, end)."""

    start: datetime
    end: datetime


def _decimal(name: str, value: object) -> Decimal:
    """An exact money/percent value: Decimal, int or str; never a float (it is not what was meant)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ValidationError(f"{name} must be a Decimal, int or str, got {type(value).__name__}")
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise ValidationError(f"{name} is not a number: {value!r}") from exc
    if not number.is_finite() or number <= 0 or number >= _MAX_AMOUNT:
        raise ValidationError(f"{name} must be a finite number above 0 and below 10^14, got {value!r}")
    if number != number.quantize(_MICRO):
        raise ValidationError(f"{name} has more than 6 decimal places: {value!r}")
    return number


def _text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValidationError(
            f"{name} must be a non-empty string of at most {limit} characters, got {value!r}"
        )
    return value


def _load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(_text("time_zone", name, 64))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(
            f"time_zone must be an IANA time zone name such as 'Europe/Paris', got {name!r}"
        ) from exc


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of `day` in `zone`, in UTC. Where midnight does not exist (a DST gap at
    00:00) `fold=0` gives the pre-transition offset, which is exactly the day's first instant."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class CostAlertRule:
    """An alert rule. `thresholds` are USD amounts (`threshold_kind="amount"`) or percentages of
    `budget_usd` (`"percent"`); each fires at most once per window. `channels` name the
    dispatcher's sinks. Validated on construction (`ValidationError`); `id` is set once saved."""

    name: str
    scope: AlertScope
    period: AlertPeriod
    thresholds: tuple[Decimal, ...]
    scope_value: str | None = None
    threshold_kind: ThresholdKind = "amount"
    budget_usd: Decimal | None = None
    time_zone: str = "UTC"
    channels: tuple[str, ...] = ("default",)
    enabled: bool = True
    id: int | None = None
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _text("name", self.name, 200)
        if self.scope not in _SCOPES:
            raise ValidationError(f"scope must be one of {', '.join(_SCOPES)}, got {self.scope!r}")
        if self.scope == "all":
            if self.scope_value is not None:
                raise ValidationError("scope 'all' takes no scope_value")
        else:
            _text("scope_value", self.scope_value, 100)
        if self.period not in _PERIODS:
            raise ValidationError(f"period must be one of {', '.join(_PERIODS)}, got {self.period!r}")
        if self.threshold_kind not in _KINDS:
            raise ValidationError(
                f"threshold_kind must be 'amount' or 'percent', got {self.threshold_kind!r}"
            )
        if isinstance(self.thresholds, str | bytes) or not isinstance(self.thresholds, Iterable):
            raise ValidationError("thresholds must be a sequence of Decimal values")
        thresholds = tuple(sorted({_decimal("threshold", t) for t in self.thresholds}))
        if not thresholds:
            raise ValidationError("a rule needs at least one threshold")
        budget = None if self.budget_usd is None else _decimal("budget_usd", self.budget_usd)
        if self.threshold_kind == "percent" and budget is None:
            raise ValidationError("percentage thresholds need a budget_usd")
        if isinstance(self.channels, str) or not isinstance(self.channels, Iterable):
            raise ValidationError("channels must be a sequence of sink names")
        channels = tuple(dict.fromkeys(_text("channel", c, 100) for c in self.channels))
        if not channels:
            raise ValidationError("a rule needs at least one channel")
        if not isinstance(self.enabled, bool):
            raise ValidationError(f"enabled must be a bool, got {type(self.enabled).__name__}")
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "budget_usd", budget)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "_zone", _load_zone(self.time_zone))

    def window_at(self, at: datetime) -> AlertWindow:
        """The window containing `at`: local midnight to local midnight in `time_zone`, as UTC."""
        local = _utc("at", at).astimezone(self._zone)
        day = local.date()
        if self.period == "daily":
            first, after = day, day + timedelta(days=1)
        elif self.period == "weekly":  # ISO weeks: Monday to Monday
            first = day - timedelta(days=day.weekday())
            after = first + timedelta(days=7)
        else:
            first = day.replace(day=1)
            after = (first + timedelta(days=32)).replace(day=1)
        return AlertWindow(_local_midnight(first, self._zone), _local_midnight(after, self._zone))

    def threshold_usd(self, threshold: Decimal) -> Decimal:
        """The spend at which `threshold` is crossed, in USD (exact; a percentage of the budget)."""
        if self.threshold_kind == "amount":
            return threshold
        assert self.budget_usd is not None
        return self.budget_usd * threshold / 100


@dataclass(frozen=True, slots=True)
class AlertFiring:
    """A threshold crossed in a window: returned only to the evaluation whose insert won."""

    id: int
    alert_id: int
    window: AlertWindow
    threshold: Decimal
    threshold_usd: Decimal
    spend_usd: Decimal
    fired_at: datetime


# -- SQL ------------------------------------------------------------------------------------------

_RULE_COLUMNS = (
    "id, name, scope, scope_value, period, time_zone, threshold_kind, thresholds, budget_usd, channels, enabled,"
    " updated_at"
)
_LOAD_RULES = f"SELECT {_RULE_COLUMNS} FROM cost_alerts ORDER BY id"  # noqa: S608 (constant SQL only)
_SAVE_RULE = f"""
INSERT INTO cost_alerts AS a (name, scope, scope_value, period, time_zone, threshold_kind, thresholds,
                              budget_usd, channels, enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7::numeric[], $8, $9::varchar[], $10)
ON CONFLICT ON CONSTRAINT uq_cost_alerts_name DO UPDATE
   SET scope = EXCLUDED.scope, scope_value = EXCLUDED.scope_value, period = EXCLUDED.period,
       time_zone = EXCLUDED.time_zone, threshold_kind = EXCLUDED.threshold_kind,
       thresholds = EXCLUDED.thresholds, budget_usd = EXCLUDED.budget_usd, channels = EXCLUDED.channels,
       enabled = EXCLUDED.enabled, updated_at = now()
RETURNING {_RULE_COLUMNS}
"""  # noqa: S608
_DELETE_RULE = "DELETE FROM cost_alerts WHERE name = $1 RETURNING id"

# The ledger column each scope filters on (constants: the only text spliced into the statements).
_COLUMN: dict[str, str | None] = {
    "all": None,
    "organization": "organization_id",
    "customer": "customer_id",
    "product": "product_id",
    "provider": "provider",
    "model": "model",
}


def _per_scope(template: str) -> str:
    """A CASE over the rule's scope, `template` filled with each scope's filter on alias `x`."""
    branches = []
    for scope, column in _COLUMN.items():
        match = "true" if column is None else f"x.{column} = r.v"
        # provider/model/all need no per-customer detail: the model rollup is a few rows per hour.
        rollup = "ai_call_model_hourly" if column in (None, "provider", "model") else "ai_call_usage_hourly"
        branches.append(f"WHEN '{scope}' THEN " + template.format(match=match, rollup=rollup))
    return "CASE r.scope " + " ".join(branches) + " END"


def _branch(scope: str, source: str, when: str) -> str:
    """Rows of `source` (alias `u`) that count for the windows of `scope` rules: (r.k, u.cost)."""
    column = _COLUMN[scope]
    match = "" if column is None else f" AND u.{column} = r.v"
    return f"SELECT r.k, u.cost FROM r JOIN {source} u ON r.scope = '{scope}'{match} AND {when}"  # noqa: S608


_WHOLE_HOURS = "u.hour >= r.h0 AND u.hour < r.h1"
# The unfolded usage aggregated once per hour and scope value (GROUPING SETS: a few rows per hour
# and value instead of one per combination of all five), labelled with the scope it serves.
_SCOPED = [(scope, column) for scope, column in _COLUMN.items() if column is not None]
_GROUPING_SETS = ", ".join(["(hour)", *(f"(hour, {column})" for _, column in _SCOPED)])
_GROUPED_SCOPE = (
    "CASE "
    + " ".join(f"WHEN GROUPING({column}) = 0 THEN '{scope}'" for scope, column in _SCOPED)
    + " ELSE 'all' END"
)
_GROUPED_VALUE = (
    "CASE " + " ".join(f"WHEN GROUPING({column}) = 0 THEN {column}" for _, column in _SCOPED) + " END"
)
_EDGES = "((u.created_at >= r.ws AND u.created_at < r.h0) OR (u.created_at >= r.h1 AND u.created_at < r.we))"

# The spend of every window ($1 keys, $2 scopes, $3 scope values, $4/$5 window start/end, $6/$7 its
# whole UTC hours, $8/$9 its rule's id and version, $10/$11 the windows' partial edge hours, merged)
# in ONE statement, so one snapshot: a concurrent fold cannot make usage count twice or never.
# Whole hours come from the rollups (an index range per window) plus the usage no fold has reached
# yet (deltas, and pending batches' ledger rows read by id range, batch by batch: OFFSET 0 keeps the
# planner from turning that into a scan of every ledger row of the span, a month for a monthly
# rule), read and aggregated ONCE per evaluation (per hour and scope value) and joined to every
# window; partial hours at the edges (zones such as Asia/Kolkata) come from the ledger, each edge
# interval read once. Per window it also says whether the rule is still the version evaluated
# (`updated_at`) and which thresholds fired in the window already, so a steady-state evaluation
# sends no firing statement. Built from constant names only.
_SPEND = f"""
WITH r AS MATERIALIZED (
    SELECT * FROM unnest($1::int[], $2::varchar[], $3::varchar[], $4::timestamptz[], $5::timestamptz[],
                         $6::timestamptz[], $7::timestamptz[], $8::bigint[], $9::timestamptz[])
                      AS r(k, scope, v, ws, we, h0, h1, rule_id, version)
), span AS (
    SELECT min(h0) AS lo, max(h1) AS hi FROM r
), u AS MATERIALIZED (
    SELECT hour, {_GROUPED_SCOPE} AS scope, coalesce({_GROUPED_VALUE}, '') AS v, sum(cost_usd) AS cost
      FROM (
        SELECT d.hour, d.provider, d.model, d.organization_id, d.customer_id, d.product_id, d.cost_usd
          FROM ai_call_usage_deltas d, span WHERE d.hour >= span.lo AND d.hour < span.hi
        UNION ALL
        SELECT date_trunc('hour', c.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', c.provider, c.model,
               c.organization_id, c.customer_id, c.product_id, c.cost_usd
          FROM span, ai_call_pending_batches b
         CROSS JOIN LATERAL (SELECT * FROM ai_calls x
                              WHERE x.id BETWEEN b.first_id AND b.last_id
                                AND x.created_at >= span.lo AND x.created_at < span.hi OFFSET 0) c
      ) unfolded
     GROUP BY GROUPING SETS ({_GROUPING_SETS})
), e AS MATERIALIZED (
    SELECT c.created_at, c.provider, c.model, c.organization_id, c.customer_id, c.product_id,
           c.cost_usd AS cost
      FROM unnest($10::timestamptz[], $11::timestamptz[]) AS i(lo, hi)
     CROSS JOIN LATERAL (SELECT * FROM ai_calls x WHERE x.created_at >= i.lo AND x.created_at < i.hi OFFSET 0) c
), counted AS (
    SELECT r.k, u.cost FROM r JOIN u ON u.scope = r.scope AND u.v = coalesce(r.v, '') AND {_WHOLE_HOURS}
    UNION ALL
    {" UNION ALL ".join(_branch(scope, "e", _EDGES) for scope in _SCOPES)}
), sums AS MATERIALIZED (
    SELECT k, sum(cost) AS cost FROM counted GROUP BY k
)
SELECT r.k,
       coalesce({
    _per_scope("(SELECT sum(x.cost_usd) FROM {rollup} x WHERE {match} AND x.hour >= r.h0 AND x.hour < r.h1)")
}, 0)
     + coalesce(s.cost, 0),
       EXISTS (SELECT 1 FROM cost_alerts a WHERE a.id = r.rule_id AND a.updated_at = r.version AND a.enabled),
       ARRAY(SELECT f.threshold FROM cost_alert_firings f WHERE f.alert_id = r.rule_id AND f.window_start = r.ws)
  FROM r LEFT JOIN sums s ON s.k = r.k
"""  # noqa: S608 (constant SQL only)


def _edge_intervals(windows: Iterable[AlertWindow]) -> tuple[list[datetime], list[datetime]]:
    """The partial hours at the windows' edges, overlapping ones merged (a ledger row must be read
    once), as (starts, ends)."""
    parts: list[tuple[datetime, datetime]] = []
    for w in windows:
        h0, h1 = hour_ceil(w.start), hour_floor(w.end)
        if w.start < h0:
            parts.append((w.start, min(h0, w.end)))
        if h1 < w.end and h1 >= h0:
            parts.append((h1, w.end))
    merged: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(set(parts)):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return [lo for lo, _ in merged], [hi for _, hi in merged]


def _utc_text(column: str) -> str:
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


# The firing and its notifications in one statement (one transaction): only rows this statement
# inserted get outbox rows, and only for the rule as it was evaluated ($7 its version): a rule
# edited (or disabled) since never fires a threshold or budget it no longer has. NOT EXISTS skips
# thresholds fired long ago without burning identity values; the unique constraint is what decides
# between concurrent evaluations. ORDER BY gives firing ids (and so delivery order) window by
# window, lowest threshold first, whatever plan runs.
_FIRE = f"""
WITH c (alert_id, ws, we, threshold, threshold_usd, spend, version) AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::numeric[], $5::numeric[],
                         $6::numeric[], $7::timestamptz[])
), f AS (
    INSERT INTO cost_alert_firings (alert_id, window_start, window_end, threshold, threshold_usd, spend_usd)
    SELECT c.alert_id, c.ws, c.we, c.threshold, c.threshold_usd, c.spend FROM c
     WHERE NOT EXISTS (SELECT 1 FROM cost_alert_firings x
                        WHERE x.alert_id = c.alert_id AND x.window_start = c.ws AND x.threshold = c.threshold)
       AND EXISTS (SELECT 1 FROM cost_alerts a
                    WHERE a.id = c.alert_id AND a.updated_at = c.version AND a.enabled)
     ORDER BY c.ws, c.alert_id, c.threshold
    ON CONFLICT ON CONSTRAINT uq_cost_alert_firings_alert_id_window_start_threshold DO NOTHING
    RETURNING id, alert_id, window_start, window_end, threshold, threshold_usd, spend_usd, fired_at
), o AS (
    INSERT INTO cost_alerts_log (kind, firing_id, channel, status, idempotency_key, payload, next_attempt_at)
    SELECT 'outbox', f.id, ch.name, 'pending', gen_random_uuid(),
           jsonb_build_object(
               'event', 'cost_alert.threshold_crossed', 'firing_id', f.id, 'alert_id', a.id,
               'alert', a.name, 'scope', a.scope, 'scope_value', a.scope_value, 'period', a.period,
               'time_zone', a.time_zone, 'window_start', {_utc_text("f.window_start")},
               'window_end', {_utc_text("f.window_end")}, 'threshold', f.threshold::text,
               'threshold_kind', a.threshold_kind, 'threshold_usd', f.threshold_usd::text,
               'budget_usd', a.budget_usd::text, 'spend_usd', f.spend_usd::text,
               'fired_at', {_utc_text("f.fired_at")}, 'channel', ch.name),
           now()
      FROM f JOIN cost_alerts a ON a.id = f.alert_id CROSS JOIN LATERAL unnest(a.channels) AS ch(name)
)
SELECT * FROM f ORDER BY alert_id, window_start, threshold
"""  # noqa: S608 (constant SQL only)


def _rule_of(row: asyncpg.Record) -> CostAlertRule:
    return CostAlertRule(
        id=row["id"],
        name=row["name"],
        scope=row["scope"],
        scope_value=row["scope_value"],
        period=row["period"],
        time_zone=row["time_zone"],
        threshold_kind=row["threshold_kind"],
        thresholds=tuple(row["thresholds"]),
        budget_usd=row["budget_usd"],
        channels=tuple(row["channels"]),
        enabled=row["enabled"],
    )


# What a logged call can match: its hour and the five scope values (the `all` scope matches any).
_Touch = tuple[datetime, str | None, str | None, str | None, str, str]
_Work = tuple[CostAlertRule, AlertWindow]
_Versioned = tuple[CostAlertRule, datetime]  # a rule and its `updated_at` when loaded
_BUSY_SHARE = 0.05  # the most of its time the background path spends evaluating


class AlertEvaluator:
    """Evaluates `cost_alerts` rules: on demand (`await evaluate()`), and as calls are logged when
    passed to `AICallLogger(engine, alerts=evaluator)`.

    `interval` bounds the background evaluations to one per `interval` seconds per evaluator
    (0: as soon as the event loop is free), and to 5% of the time: after an evaluation that took
    d seconds the next waits at least 19·d (a big backlog of unfolded usage slows alerts down a
    little instead of the logging); `rules_ttl` is how long the background path reuses the
    rules it loaded (`evaluate()` always reads them); a rule edited meanwhile, here or in another
    process, is noticed by its version (`updated_at`) in the same statement that reads the spend,
    and the evaluation runs again with the rules reloaded. `dispatcher`, when given, is woken after
    a firing commits.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        dispatcher: AlertDispatcher | None = None,
        interval: float = 1.0,
        rules_ttl: float = 10.0,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ValidationError(f"engine must be an AsyncEngine, got {type(engine).__name__}")
        if interval != 0:
            interval = positive_seconds("interval", interval)
        self.engine = engine
        self.dispatcher = dispatcher
        self.interval = float(interval)
        self.rules_ttl = positive_seconds("rules_ttl", rules_ttl)
        self._rules: list[_Versioned] | None = None
        self._rules_at = 0.0
        self._touched: set[_Touch] = set()
        self._batch_hours: set[datetime] = set()
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._sleeping = False
        self._quiet_until = 0.0
        self._closed = False

    async def __aenter__(self) -> AlertEvaluator:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- rules ----------------------------------------------------------------------------------

    async def save_rule(self, rule: CostAlertRule) -> CostAlertRule:
        """Create the rule, or replace the one with the same name; returns it with its id.
        Firings already recorded for the rule stay (a threshold does not fire twice in a window)."""
        if not isinstance(rule, CostAlertRule):
            raise ValidationError(f"rule must be a CostAlertRule, got {type(rule).__name__}")

        async def work(raw: asyncpg.Connection) -> asyncpg.Record | None:
            return await raw.fetchrow(
                _SAVE_RULE, rule.name, rule.scope, rule.scope_value, rule.period, rule.time_zone,
                rule.threshold_kind, list(rule.thresholds), rule.budget_usd, list(rule.channels), rule.enabled,
            )  # fmt: skip

        row = await _on_raw(self.engine, work)
        assert row is not None  # an upsert always returns its row
        self._rules = None  # the background path sees it at its next evaluation
        return _rule_of(row)

    async def rules(self) -> list[CostAlertRule]:
        """Every rule, enabled or not, oldest first."""
        return [rule for rule, _ in await self._load_rules()]

    async def _load_rules(self) -> list[_Versioned]:
        rows = await _on_raw(self.engine, lambda raw: raw.fetch(_LOAD_RULES))
        return [(_rule_of(row), row["updated_at"]) for row in rows]

    async def delete_rule(self, name: str) -> bool:
        """Delete a rule with its firings and log; False if there was none of that name."""
        found = await _on_raw(self.engine, lambda raw: raw.fetchval(_DELETE_RULE, name))
        self._rules = None
        return found is not None

    # -- evaluation -----------------------------------------------------------------------------

    async def evaluate(self, at: datetime | None = None) -> list[AlertFiring]:
        """Evaluate every enabled rule's window containing `at` (default: now); returns the firings
        this call inserted (an empty list when every crossed threshold had fired already)."""
        instant = datetime.now(UTC) if at is None else _utc("at", at)
        return await self._evaluate(
            lambda rules: [(rule, rule.window_at(instant)) for rule in rules], cached=False
        )

    async def _evaluate(
        self, select: Callable[[Sequence[CostAlertRule]], list[_Work]], *, cached: bool
    ) -> list[AlertFiring]:
        """Evaluate the windows `select` picks from the enabled rules. A rule that changed since it
        was loaded (the spend statement says so) is reloaded and the evaluation repeated, so an edit
        in another process is never evaluated with its old thresholds or budget."""
        firings: list[AlertFiring] = []
        for attempt in range(3):
            loaded = await (self._cached_rules() if cached and attempt == 0 else self._fresh_rules())
            versions = {rule.id: version for rule, version in loaded}
            fired, stale = await self._evaluate_once(select([rule for rule, _ in loaded]), versions)
            firings += fired
            if not stale:
                break
            self._rules = None
        if firings:
            _log.info("cost alerts fired", firings=len(firings))
            if self.dispatcher is not None:
                self.dispatcher.wake()  # after commit: the statements ran in autocommit
        return firings

    async def _evaluate_once(
        self, work: Sequence[_Work], versions: Mapping[int | None, datetime]
    ) -> tuple[list[AlertFiring], bool]:
        """(the firings inserted, whether some rule changed since it was loaded)."""
        if not work:
            return [], False

        async def run(raw: asyncpg.Connection) -> tuple[list[asyncpg.Record], bool]:
            windows = [window for _, window in work]
            rows = await raw.fetch(
                _SPEND,
                list(range(len(work))),
                [rule.scope for rule, _ in work],
                [rule.scope_value for rule, _ in work],
                [w.start for w in windows],
                [w.end for w in windows],
                [hour_ceil(w.start) for w in windows],
                [hour_floor(w.end) for w in windows],
                [rule.id for rule, _ in work],
                [versions[rule.id] for rule, _ in work],
                *_edge_intervals(windows),
            )
            spend = {row[0]: Decimal(row[1]) for row in rows}
            current = {row[0] for row in rows if row[2]}
            fired = {row[0]: set(row[3]) for row in rows}
            crossed = [
                (rule.id, window.start, window.end, t, rule.threshold_usd(t).quantize(_MICRO, ROUND_HALF_UP),
                 spend[k], versions[rule.id])
                for k, (rule, window) in enumerate(work)
                if k in current
                for t in rule.thresholds
                if spend[k] >= rule.threshold_usd(t) and t not in fired[k]
            ]  # fmt: skip
            stale = len(current) < len(work)
            if not crossed:
                return [], stale
            return await raw.fetch(_FIRE, *(list(column) for column in zip(*crossed, strict=True))), stale

        rows, stale = await _on_raw(self.engine, run)
        firings = [
            AlertFiring(
                id=row["id"],
                alert_id=row["alert_id"],
                window=AlertWindow(row["window_start"], row["window_end"]),
                threshold=row["threshold"],
                threshold_usd=row["threshold_usd"],
                spend_usd=row["spend_usd"],
                fired_at=row["fired_at"],
            )
            for row in rows
        ]
        return firings, stale

    # -- as calls are logged --------------------------------------------------------------------

    def call_logged(self, record: AICallRecord) -> None:
        """A call was committed: remember its hour and scope values for the next evaluation. No I/O."""
        self._touched.add(
            (record.hour, record.organization_id, record.customer_id, record.product_id, record.provider,
             record.model)
        )  # fmt: skip
        self._schedule()

    def batch_logged(self, records: Sequence[AICallRecord]) -> None:
        """A batch was committed: its hours are evaluated for every rule (no per-row matching)."""
        self._batch_hours.update({r.hour for r in records})
        self._schedule()

    def _schedule(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._background())

    async def _background(self) -> None:
        try:
            while self._touched or self._batch_hours:
                now = time.monotonic()
                self._sleeping = True
                try:
                    await asyncio.sleep(max(self.interval, self._retry_at - now, self._quiet_until - now))
                finally:
                    self._sleeping = False
                started = time.monotonic()
                if not await self._evaluate_touched():
                    break  # the next logged call schedules a retry (no busy loop while the DB is down)
                # Evaluations cost O(unfolded usage + rules): however large that grows, they take
                # at most _BUSY_SHARE of the time (the next waits 19x as long as this one took).
                ended = time.monotonic()
                self._quiet_until = ended + (ended - started) * (1 / _BUSY_SHARE - 1)
        finally:
            self._task = None

    async def _evaluate_touched(self) -> bool:
        """Evaluate the windows touched so far; False (logged, and kept for later) on failure."""
        touched, self._touched = self._touched, set()
        hours, self._batch_hours = self._batch_hours, set()
        try:
            await self._evaluate(lambda rules: _touched_windows(rules, touched, hours), cached=True)
        except (PersistenceError, asyncpg.PostgresError, OSError) as exc:
            # Nothing is lost: a later evaluation of the same windows sees the same totals.
            self._touched |= touched
            self._batch_hours |= hours
            self._retry_at = time.monotonic() + max(self.interval, 1.0)
            _log.warning("cost alert evaluation failed", error=type(exc).__name__,
                         sqlstate=getattr(exc, "sqlstate", None))  # fmt: skip
            return False
        return True

    async def _cached_rules(self) -> list[_Versioned]:
        if self._rules is None or time.monotonic() - self._rules_at >= self.rules_ttl:
            return await self._fresh_rules()
        return self._rules

    async def _fresh_rules(self) -> list[_Versioned]:
        """The enabled rules with their versions, now; kept for the background path."""
        self._rules_at = time.monotonic()
        self._rules = [(rule, version) for rule, version in await self._load_rules() if rule.enabled]
        return self._rules

    async def flush(self) -> bool:
        """Evaluate now whatever logged calls are still waiting for an evaluation; False when that
        failed (logged; the windows stay pending for the next evaluation)."""
        task = self._task
        if task is not None:
            if self._sleeping:
                task.cancel()  # evaluate now instead of after the rest of `interval`
            await asyncio.wait({task})  # its outcome is logged by itself; never raises here
        if self._touched or self._batch_hours:
            return await self._evaluate_touched()
        return True

    async def close(self) -> None:
        """Finish the pending evaluation now (the logger's calls are committed: their alerts are
        due), without waiting for the rest of `interval`."""
        await self.flush()
        self._closed = True


def _touched_windows(
    rules: Sequence[CostAlertRule], touched: Iterable[_Touch], batch_hours: Iterable[datetime]
) -> list[_Work]:
    """The (rule, window) pairs the logged calls can have moved, each once."""
    by_key: dict[tuple[str, str | None], list[CostAlertRule]] = {}
    for rule in rules:
        by_key.setdefault((rule.scope, rule.scope_value), []).append(rule)
    work: dict[tuple[int | None, datetime], _Work] = {}
    seen: set[tuple[int | None, datetime]] = set()  # most touches share their hour: one window each

    def add(rule: CostAlertRule, hour: datetime) -> None:
        if (rule.id, hour) in seen:
            return
        seen.add((rule.id, hour))
        window = rule.window_at(hour)
        work.setdefault((rule.id, window.start), (rule, window))

    for hour, organization, customer, product, provider, model in touched:
        for key in (
            ("all", None), ("organization", organization), ("customer", customer), ("product", product),
            ("provider", provider), ("model", model),
        ):  # fmt: skip
            for rule in by_key.get(key, ()):
                add(rule, hour)
    for hour in batch_hours:
        for rule in rules:
            add(rule, hour)
    return list(work.values())
