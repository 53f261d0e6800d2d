"""`reprice_calls`: price the calls the ledger stored unpriced, once a price exists, rollups included.

A call with no price in force and no cost given is stored unpriced (`cost_source` 'unpriced', cost
NULL). Once `vendor_prices` has a row in force at its `created_at`, `reprice_calls` sets its cost with
the logger's own `PriceBook` arithmetic (exact Decimal, rounded half-up to the micro-dollar) and the
rollups follow exactly.

Bounded batches, each its own short transaction (never one giant one): the unpriced calls are read
a page at a time in (created_at, id) order through the partial index on them, priced in Python, and
written by ONE statement per batch: an `UPDATE ... FROM unnest(...) WHERE cost_source = 'unpriced'
RETURNING` (a call priced meanwhile by another run is skipped, so a run is idempotent) whose CTE also
appends a correction delta (-1 unpriced call, + its cost) per hour and attribution for the calls the
rollups already counted as unpriced. Calls still in a pending batch get no delta: the fold reads them
from the ledger, priced by then. Which of the two holds is only stable while no fold runs, so each
batch takes the rollup lock (transaction-level, a statement of its own before the update so the
update's snapshot sees every fold that finished before it), as folds and rebuilds do. Loggers never
wait for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.prices import LOAD_PRICES, PriceBook
from persistence.ai_calls.record import AICallRecord, _utc, organization_of, positive_int
from persistence.ai_calls.rollups import ROLLUP_LOCK, _on_raw
from persistence.errors import ValidationError
from persistence.models.rollups import DIMENSIONS

__all__ = ["RepriceProgress", "RepriceReport", "reprice_calls"]

_DIMS = ", ".join(DIMENSIONS)

# One page of unpriced calls after the cursor ($1 at, $2 id), $3 page size; optional filters appended.
# `created_at >= $1` (implied by the row comparison) lets the planner skip earlier partitions.
_PAGE = (
    "SELECT id, created_at, provider, model, organization_id, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, reasoning_tokens, cache_write_1h_tokens, total_tokens "
    "FROM ai_calls WHERE cost_source = 'unpriced' AND created_at >= $1 AND (created_at, id) > ($1, $2)"
)

# $1 ids, $2 created_at, $3 cost_usd, $4 computed_cost_usd, $5 price ids (one element per call); $6, $7
# the batch's first and last created_at, so the update reads only that stretch of the unpriced index.
_REPRICE = f"""
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::numeric[], $4::numeric[], $5::bigint[])
        AS v(id, created_at, cost_usd, computed_cost_usd, price_id)
), priced AS (
    UPDATE ai_calls c
       SET cost_usd = v.cost_usd, computed_cost_usd = v.computed_cost_usd, price_id = v.price_id,
           cost_source = 'computed'
      FROM v
     WHERE c.id = v.id AND c.created_at = v.created_at AND c.cost_source = 'unpriced'
       AND c.created_at >= $6 AND c.created_at <= $7
    RETURNING c.id, c.created_at, {", ".join(f"c.{d}" for d in DIMENSIONS)}, c.total_tokens, c.cost_usd,
              c.computed_cost_usd
), counted AS (
    -- Priced calls the rollups (or their unfolded deltas) counted as unpriced: every call but those
    -- of a pending batch, which the next fold reads from the ledger as they are now.
    SELECT * FROM priced p
     WHERE NOT coalesce((SELECT b.last_id >= p.id FROM ai_call_pending_batches b
                          WHERE b.first_id <= p.id ORDER BY b.first_id DESC LIMIT 1), false)
), corrections AS (
    INSERT INTO ai_call_usage_deltas (hour, {_DIMS}, calls, error_calls, input_tokens, output_tokens,
                                      cache_read_tokens, cache_write_tokens, cache_write_1h_tokens,
                                      reasoning_tokens, total_tokens, cost_usd, computed_cost_usd,
                                      latency_ms_sum, latency_count, unpriced_calls, unpriced_tokens)
    SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', {_DIMS},
           0, 0, 0, 0, 0, 0, 0, 0, 0, sum(cost_usd), sum(computed_cost_usd), 0, 0, -count(*), -sum(total_tokens)
      FROM counted
     GROUP BY 1, {_DIMS}
)
SELECT count(*), coalesce(sum(total_tokens), 0)::bigint, coalesce(sum(cost_usd), 0) FROM priced
"""  # noqa: S608 (constant SQL only)


@dataclass(frozen=True, slots=True)
class RepriceReport:
    """What a `reprice_calls` run did over [since, until) (until None: open-ended).

    `repriced` calls (with `repriced_tokens`) now carry a cost, `cost_usd` in total; `still_unpriced`
    calls (`still_unpriced_tokens`) of the window have no price in force yet. A second run over the
    same window reprices 0.
    """

    since: datetime
    until: datetime | None
    provider: str | None
    model: str | None
    repriced: int = 0
    repriced_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    still_unpriced: int = 0
    still_unpriced_tokens: int = 0
    batches: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; money as an exact string."""
        return {
            "since": self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "provider": self.provider,
            "model": self.model,
            "repriced": self.repriced,
            "repriced_tokens": self.repriced_tokens,
            "cost_usd": str(self.cost_usd),
            "still_unpriced": self.still_unpriced,
            "still_unpriced_tokens": self.still_unpriced_tokens,
            "batches": self.batches,
        }


# Called after every committed batch with the report so far.
RepriceProgress = Callable[[RepriceReport], None]


async def reprice_calls(
    engine: AsyncEngine,
    *,
    since: datetime,
    until: datetime | None = None,
    provider: str | None = None,
    model: str | None = None,
    batch_size: int = 1000,
    progress: RepriceProgress | None = None,
) -> RepriceReport:
    """Price the unpriced calls of [since, until) (optionally one provider / model) with the price
    in force at each call's `created_at`; the rollups follow. Idempotent; `ValidationError` for a
    naive or inverted window."""
    since = _utc("since", since)
    if until is not None:
        until = _utc("until", until)
        if until <= since:
            raise ValidationError("invalid window: until must be after since")
    batch_size = positive_int("batch_size", batch_size)
    filters, args = _filters(until, provider, model)
    page_sql = f"{_PAGE}{filters} ORDER BY created_at, id LIMIT $3"
    report = RepriceReport(since, until, provider.lower() if provider else None, model)

    async def run(raw: asyncpg.Connection) -> RepriceReport:
        nonlocal report
        book = PriceBook(await raw.fetch(LOAD_PRICES), ttl=float("inf"))
        # Just before `since` in (created_at, id) order: ids are positive.
        at, last_id = since, 0
        while True:
            rows = await raw.fetch(page_sql, at, last_id, batch_size, *args)
            if not rows:
                return report
            at, last_id = rows[-1]["created_at"], rows[-1]["id"]
            priced, left, left_tokens = _price(book, rows)
            count, tokens, cost = 0, 0, Decimal(0)
            if priced:
                async with raw.transaction():
                    await raw.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_LOCK)
                    done = await raw.fetchrow(_REPRICE, *priced)
                    assert done is not None  # an aggregate always returns its row
                    count, tokens, cost = done
            report = RepriceReport(
                report.since,
                report.until,
                report.provider,
                report.model,
                repriced=report.repriced + int(count),
                repriced_tokens=report.repriced_tokens + int(tokens),
                cost_usd=report.cost_usd + Decimal(cost),
                still_unpriced=report.still_unpriced + left,
                still_unpriced_tokens=report.still_unpriced_tokens + left_tokens,
                batches=report.batches + 1,
            )
            if progress is not None:
                progress(report)

    return await _on_raw(engine, run)


def _filters(
    until: datetime | None, provider: str | None, model: str | None
) -> tuple[str, list[datetime | str]]:
    """The optional conditions of a page (bound parameters from $4 on)."""
    sql = ""
    args: list[datetime | str] = []
    for column, op, value in (("created_at", "<", until), ("provider", "=", provider), ("model", "=", model)):
        if value is not None:
            args.append(value.lower() if column == "provider" and isinstance(value, str) else value)
            sql += f" AND {column} {op} ${len(args) + 3}"
    return sql, args


_Arrays = tuple[
    list[int], list[datetime], list[Decimal], list[Decimal | None], list[int | None], datetime, datetime
]


def _price(book: PriceBook, rows: list[asyncpg.Record]) -> tuple[_Arrays | None, int, int]:
    """The update's arrays for the rows a price now covers (None if none), and the count and tokens
    of those still without a price."""
    ids: list[int] = []
    ats: list[datetime] = []
    costs: list[Decimal] = []
    computed: list[Decimal | None] = []
    price_ids: list[int | None] = []
    left = left_tokens = 0
    for row in rows:
        record = AICallRecord(
            provider=row["provider"],
            model=row["model"],
            organization_id=organization_of(row["organization_id"]),
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cache_read_tokens=row["cache_read_tokens"],
            cache_write_tokens=row["cache_write_tokens"],
            reasoning_tokens=row["reasoning_tokens"],
            cache_write_1h_tokens=row["cache_write_1h_tokens"],
            created_at=row["created_at"],
            event_id=f"reprice:{row['id']}",  # no random key: only the price is wanted
        )
        quote = book.quote(record)
        if quote is None:
            left += 1
            left_tokens += row["total_tokens"]
            continue
        ids.append(row["id"])
        ats.append(row["created_at"])
        costs.append(quote[0])
        computed.append(quote[1])
        price_ids.append(quote[3])
    return ((ids, ats, costs, computed, price_ids, ats[0], ats[-1]) if ids else None), left, left_tokens
