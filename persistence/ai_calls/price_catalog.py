"""genai-prices' data as `vendor_prices` rows: the mapping `persistence prices sync` and revision
0010 import (see `price_sync` for the rules), and how a call's model name resolves to a genai-prices
model id. Pure: reads the installed package's bundled data (no network), writes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal
from functools import cache, lru_cache
from importlib.metadata import version as _package_version
from typing import TYPE_CHECKING, Literal

from persistence.errors import ValidationError

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice, Provider

__all__ = [
    "DEFAULT_PROVIDERS",
    "EPOCH",
    "GENAI_SOURCE",
    "Buckets",
    "PriceChange",
    "PriceRow",
    "genai_rows",
    "installed_source",
    "resolve_model",
]

GENAI_SOURCE = "genai-prices"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_PROVIDERS: tuple[str, ...] = ("anthropic", "cohere", "deepseek", "google", "mistral", "openai")
_MICRO = Decimal("0.000001")
_MAX_PRICE = Decimal("99999999.999999")  # NUMERIC(14, 6)

Buckets = tuple[Decimal, Decimal, Decimal, Decimal, Decimal, Decimal | None]


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One `vendor_prices` row as genai-prices would have it (global, USD per million tokens)."""

    provider: str
    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal
    cache_write_per_mtok: Decimal
    reasoning_per_mtok: Decimal
    cache_write_1h_per_mtok: Decimal | None
    effective_from: datetime
    effective_to: datetime | None
    source: str
    # The tier: the row prices calls whose input (all input tokens, cached ones included, as
    # genai-prices counts them) exceeds this many tokens, the whole call at its rates; 0: the base tier.
    min_input_tokens: int = 0

    @property
    def buckets(self) -> Buckets:
        return (
            self.input_per_mtok,
            self.output_per_mtok,
            self.cache_read_per_mtok,
            self.cache_write_per_mtok,
            self.reasoning_per_mtok,
            self.cache_write_1h_per_mtok,
        )


@dataclass(frozen=True, slots=True)
class PriceChange:
    """What a sync did (or would do) to one (provider, model)."""

    provider: str
    model: str
    kind: Literal["added", "changed", "skipped"]
    effective_from: datetime | None  # of the first new row; None when skipped
    reason: str = ""


def installed_source() -> str:
    """`genai-prices <version>`: the `source` of rows imported from the installed package."""
    return f"{GENAI_SOURCE} {_package_version('genai-prices')}"


def _bundled() -> list[Provider]:
    from genai_prices.data import providers

    return providers


_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "output_reasoning_mtok",
         "cache_write_1h_mtok")  # fmt: skip


def _plain(value: object, level: int) -> Decimal | None:
    """A price as a Decimal for calls above `level` input tokens: genai-prices charges the whole
    call at the highest tier whose start the call's input exceeds (`calc_unit_price`), so the rate
    for tier level `level` is that of the highest tier starting at or below it, else the base."""
    from genai_prices.types import TieredPrices

    if value is None:
        return None
    if isinstance(value, TieredPrices):
        rate = value.base
        for tier in sorted(value.tiers, key=lambda t: t.start):
            if tier.start <= level:
                rate = tier.price
        return rate
    if isinstance(value, Decimal):
        return value
    raise ValidationError(f"genai-prices price of unexpected type {type(value).__name__}")


def _levels(prices: ModelPrice) -> set[int]:
    """The tier starts (input tokens) of a period's prices."""
    from genai_prices.types import TieredPrices

    get = prices.__dict__.get
    return {t.start for key in _KEYS if isinstance(v := get(key), TieredPrices) for t in v.tiers}


def _buckets(prices: ModelPrice, level: int = 0) -> Buckets | None:
    get = prices.__dict__.get
    inp = _plain(get("input_mtok"), level)
    out = _plain(get("output_mtok"), level)
    if inp is None and out is None:
        return None  # priced in units the ledger does not count (audio hours, characters) or free
    inp = inp if inp is not None else Decimal(0)
    out = out if out is not None else Decimal(0)
    read = _plain(get("cache_read_mtok"), level)
    write = _plain(get("cache_write_mtok"), level)
    reasoning = _plain(get("output_reasoning_mtok"), level)
    long = _plain(get("cache_write_1h_mtok"), level)
    return (
        inp,
        out,
        read if read is not None else inp,
        write if write is not None else inp,
        reasoning if reasoning is not None else out,
        long,
    )


def _representable(buckets: Buckets) -> bool:
    return all(b is None or (b == b.quantize(_MICRO) and Decimal(0) <= b <= _MAX_PRICE) for b in buckets)


def _periods(model: ModelInfo) -> list[tuple[datetime, ModelPrice]]:
    """(start, prices) in order; genai-prices' last active conditional price wins, so a period runs
    until the next start date. Time-of-day prices (off-peak) are not periods: refused by the caller."""
    from genai_prices.types import ModelPrice, StartDateConstraint

    if isinstance(model.prices, ModelPrice):
        return [(EPOCH, model.prices)]
    periods: list[tuple[datetime, ModelPrice]] = []
    for conditional in model.prices:
        constraint = conditional.constraint
        if constraint is None:
            start = EPOCH
        elif isinstance(constraint, StartDateConstraint):
            start = datetime.combine(constraint.start_date, time(0), tzinfo=UTC)
        else:
            return []
        periods.append((start, conditional.prices))
    periods.sort(key=lambda p: p[0])
    return periods


def genai_rows(
    data: Sequence[Provider] | None = None,
    *,
    providers: Collection[str] = DEFAULT_PROVIDERS,
    tiers: bool = False,
) -> tuple[list[PriceRow], list[PriceChange]]:
    """The rows genai-prices' `data` (default: the installed package's) gives, and the models it
    skips with why. Deterministic for a given `data`.

    `tiers`: also a row per tier of a tiered price (`min_input_tokens` its start), for every
    period of the model (a period without that tier gets the rates that apply above it there, so
    each tier's timeline has no gap); without it only the base tier (a table without the column).
    """
    rows: list[PriceRow] = []
    skipped: list[PriceChange] = []
    for provider in data if data is not None else _bundled():
        if provider.id not in providers:
            continue
        seen: set[str] = set()
        for model in provider.models:
            name = model.id
            if name in seen or len(name) > 100:
                continue
            seen.add(name)
            problem = ""
            periods = _periods(model)
            if not periods:
                problem = "time-of-day prices are not modelled"
            levels = {0}
            if tiers:
                for _, prices in periods:
                    levels |= _levels(prices)
            timelines: dict[int, list[tuple[datetime, Buckets]]] = {level: [] for level in sorted(levels)}
            for start, prices in periods:
                for level, timeline in timelines.items():
                    buckets = _buckets(prices, level)
                    if buckets is None:
                        problem = "no token prices"
                        break
                    if not _representable(buckets):
                        problem = "a price with more than 6 decimal places"
                        break
                    if timeline and timeline[-1][1] == buckets:
                        continue  # the same prices again: one period
                    timeline.append((start, buckets))
                if problem:
                    break
            if problem:
                skipped.append(PriceChange(provider.id, name, "skipped", None, problem))
                continue
            for level, timeline in timelines.items():
                for i, (start, buckets) in enumerate(timeline):
                    end = timeline[i + 1][0] if i + 1 < len(timeline) else None
                    rows.append(PriceRow(provider.id, name, *buckets, start, end, GENAI_SOURCE, level))
    return rows, skipped


@cache
def _genai_provider(provider: str) -> Provider | None:
    return next((p for p in _bundled() if p.id == provider), None)


@lru_cache(maxsize=4096)
def resolve_model(provider: str, model: str) -> str | None:
    """The genai-prices model id `model` is a name of, for the same provider (`claude-sonnet-4-5-20250929`
    -> `claude-sonnet-4-5`); None when genai-prices does not know it or the provider."""
    found = _genai_provider(provider)
    if found is None:
        return None
    info = found.find_model(model)
    return None if info is None else info.id
