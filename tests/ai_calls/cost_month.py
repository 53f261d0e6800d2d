"""A seeded month for cost-accuracy and billing tests: November 2026, logged through `AICallLogger`.

- `acme-large` (priced): two calls a day with the provider's cost given, equal to ours, except on the
  10th (one call $0.25 over: over tolerance) and the 20th (one call one micro-dollar over: within it).
- `acme-small` (priced): one call a day with no cost given (the ledger computes it).
- `mystery-1` (no price): one call on the 5th with a cost given (nothing to compare it with).
- One call on 31 Oct and one on 1 Dec, outside the month.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger

PROVIDER = "acme-ai"
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC)
DAYS = 30
MICRO = Decimal("0.000001")
OFF_DAY = date(2026, 11, 10)
OFF_BY = Decimal("0.25")
NEAR_DAY = date(2026, 11, 20)
# USD per million tokens: input, output.
PRICES = {"acme-large": (Decimal(3), Decimal(15)), "acme-small": (Decimal("0.5"), Decimal(2))}


def ours(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    price_in, price_out = PRICES[model]
    return (input_tokens * price_in + output_tokens * price_out) / 1_000_000


@dataclass(frozen=True)
class Month:
    calls: list[dict[str, Any]]
    off_request_id: str
    # Ledger cost (cost_usd as recorded) per (model, day) inside the month.
    ledger: dict[tuple[str, date], Decimal]


def month_calls() -> Month:
    calls: list[dict[str, Any]] = []
    off = ""
    for d in range(DAYS):
        day = MONTH_START + timedelta(days=d)
        for i in range(2):
            tokens_in, tokens_out = 100_000 + 1_000 * d + i, 20_000 + 7 * i
            cost = ours("acme-large", tokens_in, tokens_out)
            request_id = f"large-{d}-{i}"
            if day.date() == OFF_DAY and i == 1:
                cost += OFF_BY
                off = request_id
            if day.date() == NEAR_DAY and i == 0:
                cost += Decimal("0.000001")
            calls.append(
                _call("acme-large", tokens_in, tokens_out, day + timedelta(hours=3 + 8 * i), request_id, cost)
            )
        calls.append(_call("acme-small", 40_000 + d, 8_000, day + timedelta(hours=12), f"small-{d}", None))
    calls.append(
        _call("mystery-1", 5_000, 1_000, datetime(2026, 11, 5, 9, tzinfo=UTC), "mystery-0", Decimal("0.4"))
    )
    inside = list(calls)
    calls.append(_call("acme-large", 1_000, 100, MONTH_START - timedelta(seconds=1), "before", Decimal(7)))
    calls.append(_call("acme-large", 1_000, 100, MONTH_END, "after", Decimal(9)))
    ledger: dict[tuple[str, date], Decimal] = {}
    for call in inside:
        key = (call["model"], call["created_at"].date())
        given: Decimal | None = call.get("cost_usd")
        if given is not None:
            cost = given
        else:  # the ledger rounds its own figure half-up to the micro-dollar
            cost = ours(call["model"], call["input_tokens"], call["output_tokens"]).quantize(
                MICRO, ROUND_HALF_UP
            )
        ledger[key] = ledger.get(key, Decimal(0)) + cost
    return Month(calls, off, ledger)


def _call(
    model: str, tokens_in: int, tokens_out: int, at: datetime, request_id: str, cost: Decimal | None
) -> dict[str, Any]:
    call: dict[str, Any] = {
        "provider": PROVIDER,
        "model": model,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "created_at": at,
        "request_id": request_id,
        "organization_id": "acme-corp",
    }
    if cost is not None:
        call["cost_usd"] = cost
    return call


async def seed_month(engine: AsyncEngine) -> Month:
    """Enter the two prices by hand, then log the month's calls in one batch."""
    async with engine.begin() as conn:
        for model, (price_in, price_out) in PRICES.items():
            await conn.execute(
                text(
                    "INSERT INTO vendor_prices (provider, model, input_per_mtok, output_per_mtok, "
                    "cache_read_per_mtok, cache_write_per_mtok, reasoning_per_mtok, effective_from, source) "
                    "VALUES (:p, :m, :i, :o, 0, 0, 0, :f, 'manual')"
                ),
                {
                    "p": PROVIDER,
                    "m": model,
                    "i": price_in,
                    "o": price_out,
                    "f": datetime(2026, 1, 1, tzinfo=UTC),
                },
            )
    month = month_calls()
    async with AICallLogger(engine) as log:
        assert await log.log_batch(month.calls) == len(month.calls)
    return month
