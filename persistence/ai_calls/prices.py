"""Vendor prices in memory: the price in force for a call, and the call's exact cost.

The logger keeps a `PriceBook` loaded from `vendor_prices` together with the table's version
(`vendor_prices_version`, bumped by a trigger on every change, revision 0010). The logger's own
statement compares that version with the book's, so a price entered while it runs prices the very
next call, and computing a cost costs no round trip. A book loaded without a version (the table
missing) refreshes every `ttl` seconds instead. Prices are effective-dated: every call is priced by
the row in force at its `created_at`.

A call's model name is looked up as given, then as the model it is a dated snapshot of
(`gpt-4o-2024-08-06` -> `gpt-4o`), then as the genai-prices model id it is a name of
(`claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`, `price_catalog.resolve_model`), the first name
that has a row winning.

Tiered prices (by context length, revision 0016): a row with `min_input_tokens` N prices the whole
call when the call's input (`threshold_tokens`: uncached input plus cache reads and writes, as
genai-prices counts `input_tokens`) exceeds N; 0 is the base tier. For a call, each tier in force
is the tenant's row of that tier, else the global one, and the highest tier below the call's input
prices it. The tiers in force are precomputed per key and time window (`_memo`), highest first.
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from persistence.ai_calls.record import MICRO, AICallRecord
from persistence.errors import ValidationError

__all__ = [
    "LOAD_PRICES",
    "LOAD_PRICES_VERSIONED",
    "LOAD_TENANT_PRICES",
    "Price",
    "PriceBook",
    "PricedCost",
    "Quote",
    "Tiers",
    "UnpricedCallError",
    "threshold_tokens",
]

_MILLION = Decimal(1_000_000)
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
_MEMO_LIMIT = 10_000
# A dated or numbered snapshot of a model, as providers report it in responses: OpenAI's
# `gpt-4o-2024-08-06`, Cohere's `command-r-08-2024`, Google's `gemini-1.5-pro-002`, `-latest`.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{2}-\d{4}|\d{3}|latest)$")

# (cost_usd, computed_cost_usd, cost_source, price_id): what the ledger stores about a call's cost.
Quote = tuple[Decimal, Decimal | None, str, int | None]
LOAD_PRICES = (
    "SELECT id, provider, model, tenant_id, input_per_mtok, output_per_mtok, cache_read_per_mtok, "
    "cache_write_per_mtok, reasoning_per_mtok, effective_from, effective_to, cache_write_1h_per_mtok, "
    "source, min_input_tokens "
    "FROM vendor_prices "
    "ORDER BY provider, model, tenant_id, min_input_tokens, effective_from"
)
# The same rows and the table's version in one statement (one snapshot): the first column is the
# version (NULL without the counter table), the rest a price row (all NULL when there is none).
LOAD_PRICES_VERSIONED = (
    "SELECT (SELECT version FROM vendor_prices_version) AS version, p.id, p.provider, p.model, p.tenant_id, "
    "p.input_per_mtok, p.output_per_mtok, p.cache_read_per_mtok, p.cache_write_per_mtok, p.reasoning_per_mtok, "
    "p.effective_from, p.effective_to, p.cache_write_1h_per_mtok, p.source, p.min_input_tokens "
    "FROM (SELECT 1) one LEFT JOIN vendor_prices p ON true "
    "ORDER BY p.provider, p.model, p.tenant_id, p.min_input_tokens, p.effective_from"
)
PRICES_VERSION = "SELECT version FROM vendor_prices_version"
# One tenant's overrides ($1), read as that tenant where row-level security hides the others', with
# the table's version in the same snapshot (shaped as LOAD_PRICES_VERSIONED: one row even without any).
LOAD_TENANT_PRICES = (
    "SELECT (SELECT version FROM vendor_prices_version) AS version, p.id, p.provider, p.model, p.tenant_id, "
    "p.input_per_mtok, p.output_per_mtok, p.cache_read_per_mtok, p.cache_write_per_mtok, p.reasoning_per_mtok, "
    "p.effective_from, p.effective_to, p.cache_write_1h_per_mtok, p.source, p.min_input_tokens "
    "FROM (SELECT 1) one LEFT JOIN vendor_prices p ON p.tenant_id = $1 "
    "ORDER BY p.provider, p.model, p.min_input_tokens, p.effective_from"
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
    # Anthropic's 1-hour cache writes; None: this row prices none (a call with some is unpriced by it).
    cache_write_1h_per_mtok: Decimal | None = None
    source: str | None = None  # who entered the row: 'manual', 'genai-prices <version>', ...
    # The tier: prices calls whose `threshold_tokens` exceed this (the whole call); 0: the base tier.
    min_input_tokens: int = 0
    # The five per-Mtok prices as integers of 1e-6 USD (None if one has more than 6 places), so a
    # cost is exact integer arithmetic in units of 1e-12 USD: no Decimal per bucket on the hot path.
    micros: tuple[int, int, int, int, int] | None = field(init=False, repr=False, compare=False)
    micros_1h: int | None = field(init=False, repr=False, compare=False)  # None: no (or a >6-place) price

    def __post_init__(self) -> None:
        scaled = []
        for value in (self.input_per_mtok, self.output_per_mtok, self.cache_read_per_mtok,
                      self.cache_write_per_mtok, self.reasoning_per_mtok):  # fmt: skip
            micro = Decimal(value).scaleb(6)
            scaled.append(int(micro) if micro == micro.to_integral_value() else None)
        ints = tuple(x for x in scaled if x is not None)
        object.__setattr__(self, "micros", ints if len(ints) == 5 else None)
        long = (
            None if self.cache_write_1h_per_mtok is None else Decimal(self.cache_write_1h_per_mtok).scaleb(6)
        )
        object.__setattr__(
            self, "micros_1h", int(long) if long is not None and long == long.to_integral_value() else None
        )

    def covers(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)

    def cost(self, record: AICallRecord) -> Decimal:
        """The exact cost (12 decimal places at most: per-Mtok prices have 6)."""
        long = self.cache_write_1h_per_mtok
        if record.cache_write_1h_tokens and long is None:
            raise ValidationError(f"price {self.id} has no 1-hour cache-write price")
        return (
            record.input_tokens * self.input_per_mtok
            + record.output_tokens * self.output_per_mtok
            + record.cache_read_tokens * self.cache_read_per_mtok
            + record.cache_write_tokens * self.cache_write_per_mtok
            + record.reasoning_tokens * self.reasoning_per_mtok
            + (record.cache_write_1h_tokens * long if long is not None else 0)
        ) / _MILLION


def threshold_tokens(record: AICallRecord) -> int:
    """The tokens a tier threshold is compared with: all input, cached included (genai-prices'
    `input_tokens`, of which cache reads and writes are parts; our buckets are disjoint)."""
    return (
        record.input_tokens
        + record.cache_read_tokens
        + record.cache_write_tokens
        + record.cache_write_1h_tokens
    )


# The tiers in force for a key at a time: (min_input_tokens, price), highest tier first.
Tiers = tuple[tuple[int, Price], ...]


def _pick(tiers: Tiers, tokens: int) -> Price | None:
    """The highest tier `tokens` exceeds (the base tier, 0, for any call)."""
    for floor, price in tiers:
        if tokens > floor or floor == 0:
            return price
    return None


@dataclass(frozen=True, slots=True)
class PricedCost:
    """What the ledger stores about a call's cost."""

    cost_usd: Decimal  # counted: the caller's figure, else ours rounded half-up to 6 places
    computed_cost_usd: Decimal | None  # ours, exact; None without a price
    cost_source: str  # 'provided' or 'computed'
    price_id: int | None


class PriceBook:
    """Prices by (provider, model, tenant) and tier, each list sorted by `effective_from`."""

    def __init__(self, rows: Iterable[Any] | None = None, *, ttl: float = 60.0, miss_interval: float = 5.0):
        """`rows`: a `LOAD_PRICES` result; None: not loaded yet (`stale` until `replace`), so a
        logger's first call loads the table even when it gives its own cost (the computed cost
        beside it needs the price)."""
        self.ttl = ttl
        self.miss_interval = miss_interval
        self.loaded_at = float("-inf")
        self.missed_at = float("-inf")
        # `vendor_prices_version` when the rows were read; None: unknown (refreshed by `ttl`).
        self.version: int | None = None
        # (provider, model, tenant) -> tier -> rows of that tier by start, and their starts.
        self._by_key: dict[tuple[str, str, str], dict[int, list[Price]]] = {}
        self._starts: dict[tuple[str, str, str], dict[int, list[datetime]]] = {}
        self._models: set[tuple[str, str]] = set()
        # (provider, model, tenant) -> (from, to, tiers): the tiers in force for every time in
        # [from, to), so pricing a call is a dict get, a range compare and a walk over its tiers.
        self._memo: dict[tuple[str, str, str | None], tuple[datetime, datetime, Tiers]] = {}
        # Tenants whose overrides were added one by one (`add_tenant`: a login under row-level
        # security loads the list prices, then each tenant's overrides as that tenant).
        self.tenants: set[str] = set()
        # Bumped by every `replace`: a caller that awaited while loading tenants' overrides can tell
        # whether the book it loaded them for is still the one in use.
        self.generation = 0
        if rows is not None:
            self.replace(rows)

    def replace(self, rows: Iterable[Any], version: int | None = None) -> None:
        by_key: dict[tuple[str, str, str], dict[int, list[Price]]] = {}
        _add(by_key, rows)
        self._index(by_key)
        self.tenants = set()
        self.generation += 1
        self.version = version
        self.loaded_at = time.monotonic()

    def add_tenant(self, tenant_id: str, rows: Iterable[Any]) -> None:
        """Add one tenant's override rows (`LOAD_TENANT_PRICES` without its version column) to a book
        whose rows did not include them; `replace` forgets them again, with the rest of the old book."""
        by_key = {key: tiers for key, tiers in self._by_key.items() if key[2] != tenant_id}
        _add(by_key, rows)
        self._index(by_key)
        self.tenants.add(tenant_id)

    def _index(self, by_key: dict[tuple[str, str, str], dict[int, list[Price]]]) -> None:
        for tiers in by_key.values():
            for prices in tiers.values():
                prices.sort(key=lambda p: p.effective_from)
        self._by_key = by_key
        self._starts = {
            key: {tier: [p.effective_from for p in prices] for tier, prices in tiers.items()}
            for key, tiers in by_key.items()
        }
        self._models = {(provider, model) for provider, model, _ in by_key}
        self._memo = {}

    def replace_versioned(self, rows: Sequence[Any]) -> None:
        """Load the result of `LOAD_PRICES_VERSIONED` (the version, then a price row, per row)."""
        version = rows[0][0] if rows else None
        self.replace((tuple(row)[1:] for row in rows if row[1] is not None), version)

    def __len__(self) -> int:
        return sum(len(p) for tiers in self._by_key.values() for p in tiers.values())

    @property
    def stale(self) -> bool:
        """Never loaded, or loaded without a version and older than `ttl` (with a version, the
        logger's statements tell it when the table changed)."""
        if self.loaded_at == float("-inf"):
            return True
        return self.version is None and time.monotonic() - self.loaded_at >= self.ttl

    def _models_to_try(self, provider: str, model: str) -> tuple[str, ...]:
        """`model`, then the model it is a snapshot of (`gpt-4o-2024-08-06` -> `gpt-4o`), each if
        priced; for a name with neither priced, the genai-prices model id it is a name of.

        Only a date, a 3-digit version or `-latest` is stripped, and genai-prices maps a name only to
        its own model, so `gpt-4o-mini` never falls back to `gpt-4o`'s price.
        """
        names = [model]
        base = _SNAPSHOT.sub("", model)
        if base != model and (provider, base) in self._models:
            names.append(base)
        # Only for a name with no row of its own or of its base (the first resolve loads genai-prices).
        if len(names) == 1 and (provider, model) not in self._models:
            alias = _resolve(provider, model)
            if alias is not None and alias != model and (provider, alias) in self._models:
                names.append(alias)
        return tuple(names)

    def _in_force(self, key: tuple[str, str, str], tier: int, at: datetime) -> Price | None:
        starts = self._starts[key][tier]
        i = bisect.bisect_right(starts, at) - 1
        if i >= 0:
            found = self._by_key[key][tier][i]
            if found.covers(at):
                return found
        return None

    def tiers(self, provider: str, model: str, tenant: str | None, at: datetime) -> Tiers:
        """The tiers in force at `at`, highest first: per tier the tenant's row, else the global
        one, of the first model name (`_models_to_try`) that has any."""
        for name in self._models_to_try(provider, model):
            found: dict[int, Price] = {}
            for tenant_id in ("", tenant) if tenant else ("",):  # the tenant's rows last: they win
                key = (provider, name, tenant_id)
                for tier in self._by_key.get(key, ()):
                    price = self._in_force(key, tier, at)
                    if price is not None:
                        found[tier] = price
            if found:
                return tuple(sorted(found.items(), key=lambda item: -item[0]))
        return ()

    def lookup(
        self, provider: str, model: str, tenant: str | None, at: datetime, input_tokens: int = 0
    ) -> Price | None:
        """The price of a call with `input_tokens` (`threshold_tokens`) at `at`: the highest tier
        in force it exceeds (tenant's row of a tier, else the global one), else None; for a
        snapshot with no price in force at `at`, the same for the model it is a snapshot of."""
        return _pick(self.tiers(provider, model, tenant, at), input_tokens)

    def _window(
        self, provider: str, model: str, tenant: str | None, at: datetime
    ) -> tuple[datetime, datetime, Tiers]:
        """`tiers`' answer at `at` and the period around `at` in which that answer holds."""
        lo, hi = _EARLIEST, _LATEST
        for name in self._models_to_try(provider, model):
            for tenant_id in (tenant, "") if tenant else ("",):
                for prices in self._by_key.get((provider, name, tenant_id), {}).values():
                    for p in prices:
                        for edge in (p.effective_from, p.effective_to):
                            if edge is None:
                                continue
                            if edge <= at:
                                lo = max(lo, edge)
                            else:
                                hi = min(hi, edge)
        return lo, hi, self.tiers(provider, model, tenant, at)

    def quote(self, record: AICallRecord) -> Quote | None:
        """`price` as a plain tuple (the logger's hot path); None when no cost is given or priced."""
        at = record.created_at
        key = (record.provider, record.model, record.organization_id)
        memo = self._memo.get(key)
        if memo is None or not memo[0] <= at < memo[1]:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            memo = self._memo[key] = self._window(record.provider, record.model, record.organization_id, at)
        tiers = memo[2]
        if len(tiers) == 1 and tiers[0][0] == 0:
            found: Price | None = tiers[0][1]  # untiered: no token count needed
        else:
            found = _pick(tiers, threshold_tokens(record))
        if found is not None and record.cache_write_1h_tokens and found.cache_write_1h_per_mtok is None:
            found = None  # the row in force has no 1-hour write price: never priced at the 5-minute rate
        if found is None:
            return None if record.cost_usd is None else (record.cost_usd, None, "provided", None)
        m = found.micros
        # A price with more than 6 places (not from vendor_prices' NUMERIC(14, 6)): Decimal arithmetic.
        if m is None or (record.cache_write_1h_tokens and found.micros_1h is None):
            exact = found.cost(record)
            if record.cost_usd is not None:
                return record.cost_usd, exact, "provided", found.id
            return exact.quantize(MICRO, rounding=ROUND_HALF_UP), exact, "computed", found.id
        pico = (
            record.input_tokens * m[0]
            + record.output_tokens * m[1]
            + record.cache_read_tokens * m[2]
            + record.cache_write_tokens * m[3]
            + record.reasoning_tokens * m[4]
        )  # 1e-12 USD
        if record.cache_write_1h_tokens and found.micros_1h is not None:
            pico += record.cache_write_1h_tokens * found.micros_1h
        computed = Decimal(pico).scaleb(-12)
        if record.cost_usd is not None:
            return record.cost_usd, computed, "provided", found.id
        # Half-up to 6 places (costs are never negative).
        return Decimal((pico + 500_000) // 1_000_000).scaleb(-6), computed, "computed", found.id

    def price(self, record: AICallRecord) -> PricedCost | None:
        """Cost fields for `record`; None when it gives no cost and no price is in force."""
        quote = self.quote(record)
        return None if quote is None else PricedCost(*quote)


def _add(by_key: dict[tuple[str, str, str], dict[int, list[Price]]], rows: Iterable[Any]) -> None:
    for row in rows:
        price = Price(*row)
        tiers = by_key.setdefault((price.provider, price.model, price.tenant_id), {})
        tiers.setdefault(price.min_input_tokens, []).append(price)


def _resolve(provider: str, model: str) -> str | None:
    # Imported on the first name no row matches: genai-prices' data module is large (cached there).
    from persistence.ai_calls.price_catalog import resolve_model

    return resolve_model(provider, model)


class UnpricedCallError(ValidationError):
    """A call without `cost_usd` whose provider/model has no price in force at its time."""
