"""Vendor prices in memory: the price in force for a call, and the call's exact cost.

The logger keeps a `PriceBook` loaded from `vendor_prices` and refreshes it every `ttl` seconds (and
at most once per `miss_interval` when a call finds no price), so computing a cost costs no round
trip. Prices are effective-dated: enter a change before it takes effect and every call is priced
by the row in force at its `created_at`; a row entered late is applied by the next refresh.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from persistence.ai_calls.record import MICRO, AICallRecord
from persistence.errors import ValidationError

__all__ = ["Price", "PriceBook", "PricedCost", "UnpricedCallError"]

_MILLION = Decimal(1_000_000)
LOAD_PRICES = (
    "SELECT id, provider, model, tenant_id, input_per_mtok, output_per_mtok, cache_read_per_mtok, "
    "cache_write_per_mtok, reasoning_per_mtok, effective_from, effective_to FROM vendor_prices "
    "ORDER BY provider, model, tenant_id, effective_from"
)


@dataclass(frozen=True, slots=True)
class Price:
    """One `vendor_prices` row: USD per million tokens for each bucket, in force [from, to)."""

    id: int
    provider: str
    model: str
    tenant_id: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal
    cache_write_per_mtok: Decimal
    reasoning_per_mtok: Decimal
    effective_from: datetime
    effective_to: datetime | None

    def covers(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)

    def cost(self, record: AICallRecord) -> Decimal:
        """The exact cost (12 decimal places at most: per-Mtok prices have 6)."""
        return (
            record.input_tokens * self.input_per_mtok
            + record.output_tokens * self.output_per_mtok
            + record.cache_read_tokens * self.cache_read_per_mtok
            + record.cache_write_tokens * self.cache_write_per_mtok
            + record.reasoning_tokens * self.reasoning_per_mtok
        ) / _MILLION


@dataclass(frozen=True, slots=True)
class PricedCost:
    """What the ledger stores about a call's cost."""

    cost_usd: Decimal  # counted: the caller's figure, else ours rounded half-up to 6 places
    computed_cost_usd: Decimal | None  # ours, exact; None without a price
    cost_source: str  # 'provided' or 'computed'
    price_id: int | None


class PriceBook:
    """Prices by (provider, model, tenant), each list sorted by `effective_from`."""

    def __init__(self, rows: Iterable[Any] = (), *, ttl: float = 60.0, miss_interval: float = 5.0):
        self.ttl = ttl
        self.miss_interval = miss_interval
        self.loaded_at = float("-inf")
        self.missed_at = float("-inf")
        self._by_key: dict[tuple[str, str, str], list[Price]] = {}
        self._starts: dict[tuple[str, str, str], list[datetime]] = {}
        self.replace(rows)

    def replace(self, rows: Iterable[Any]) -> None:
        by_key: dict[tuple[str, str, str], list[Price]] = {}
        for row in rows:
            price = Price(*row)
            by_key.setdefault((price.provider, price.model, price.tenant_id), []).append(price)
        for prices in by_key.values():
            prices.sort(key=lambda p: p.effective_from)
        self._by_key = by_key
        self._starts = {key: [p.effective_from for p in prices] for key, prices in by_key.items()}
        self.loaded_at = time.monotonic()

    def __len__(self) -> int:
        return sum(len(p) for p in self._by_key.values())

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.loaded_at >= self.ttl

    def lookup(self, provider: str, model: str, tenant: str | None, at: datetime) -> Price | None:
        """The tenant's price in force at `at`, else the global one, else None."""
        for tenant_id in (tenant, "") if tenant else ("",):
            key = (provider, model, tenant_id)
            starts = self._starts.get(key)
            if not starts:
                continue
            i = bisect.bisect_right(starts, at) - 1
            if i >= 0 and self._by_key[key][i].covers(at):
                return self._by_key[key][i]
        return None

    def price(self, record: AICallRecord) -> PricedCost | None:
        """Cost fields for `record`; None when it gives no cost and no price is in force."""
        found = self.lookup(record.provider, record.model, record.organization_id, record.created_at)
        computed = found.cost(record) if found is not None else None
        if record.cost_usd is not None:
            return PricedCost(record.cost_usd, computed, "provided", found.id if found else None)
        if computed is None or found is None:
            return None
        return PricedCost(computed.quantize(MICRO, rounding=ROUND_HALF_UP), computed, "computed", found.id)


class UnpricedCallError(ValidationError):
    """A call without `cost_usd` whose provider/model has no price in force at its time."""
