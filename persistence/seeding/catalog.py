"""The domain catalog shared by seeding and `persistence.testing.factories`: frameworks, claim types,
services, AI models with their list prices and traffic shape, consensus, realistic claim sentences.

The list prices are not typed here: they are genai-prices' rows for the seeded models, the same rows
revision 0010 (`persistence prices sync`) loads into `vendor_prices` (see `_list_prices`), so a
seeded call costs what the ledger would compute.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from persistence.ai_calls.price_catalog import genai_rows, resolve_model
from persistence.errors import ConfigurationError

__all__ = [
    "CLAIM_TYPES",
    "CLAIM_TYPE_WEIGHTS",
    "FRAMEWORKS",
    "MODEL_CATALOG",
    "PRICES_SOURCE",
    "SERVICES",
    "ModelSpec",
    "Verdict",
    "call_cost",
    "checkpoint_version",
    "claim_sentence",
    "claim_text",
    "decide_consensus",
    "model_spec",
    "raw_usage",
]

_MICRO = Decimal("0.000001")
_MILLION = Decimal(1_000_000)

FRAMEWORKS: tuple[str, ...] = ("empirical", "logical", "statistical", "consensus_ai", "source_credibility")
CLAIM_TYPES: tuple[str, ...] = ("scientific", "medical", "financial", "political", "historical")
CLAIM_TYPE_WEIGHTS = (30, 26, 20, 14, 10)
SERVICES: tuple[str, ...] = ("api-gateway", "verifier", "consensus-engine", "trainer")


@dataclass(frozen=True)
class ModelSpec:
    """An AI model with its list prices (USD per million tokens) and traffic shape."""

    provider: str
    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    traffic_weight: int
    median_input: int
    median_output: int
    base_latency_ms: int
    ms_per_output_token: Decimal
    # Cache prices as genai-prices gives them (USD per million tokens).
    cache_read_per_mtok: Decimal = Decimal(0)
    cache_write_per_mtok: Decimal = Decimal(0)


# Where the list prices come from: the installed genai-prices' bundled data (no network).
PRICES_SOURCE = "genai-prices"


def _list_prices() -> dict[tuple[str, str], tuple[Decimal, Decimal, Decimal, Decimal]]:
    """(provider, model) -> input, output, cache-read, cache-write price of each seeded model, from
    genai-prices' rows (`price_catalog.genai_rows`, what `vendor_prices` is loaded with), the model
    name resolved as the ledger resolves it (`claude-sonnet-4-20250514` -> `claude-sonnet-4-0`).

    A seeded model must have one price for all time in genai-prices, so the seeded data (and their
    checksums) never depend on the day they are generated; ConfigurationError otherwise.
    """
    rows, _skipped = genai_rows(providers={provider for provider, *_ in _TRAFFIC})
    by_key: dict[tuple[str, str], list[tuple[Decimal, Decimal, Decimal, Decimal]]] = {}
    for row in rows:
        by_key.setdefault((row.provider, row.model), []).append(
            (row.input_per_mtok, row.output_per_mtok, row.cache_read_per_mtok, row.cache_write_per_mtok)
        )
    prices: dict[tuple[str, str], tuple[Decimal, Decimal, Decimal, Decimal]] = {}
    for provider, model, *_traffic in _TRAFFIC:
        found = by_key.get((provider, model)) or by_key.get((provider, resolve_model(provider, model) or ""))
        if found is None:
            raise ConfigurationError(
                f"genai-prices has no price for {provider}/{model}, a model the seed data use"
            )
        if len(found) != 1:
            raise ConfigurationError(
                f"genai-prices prices {provider}/{model} differently over time: seeded costs would depend on the date"
            )
        prices[(provider, model)] = found[0]
    return prices


# The models seeded calls use and their traffic: provider, model, share of calls (weight), median
# input and output tokens, base latency (ms), ms per output token.
_TRAFFIC: tuple[tuple[str, str, int, int, int, int, Decimal], ...] = (
    ("openai", "gpt-4o", 18, 1400, 380, 420, Decimal("12")),
    ("openai", "gpt-4o-mini", 30, 900, 260, 280, Decimal("7")),
    ("anthropic", "claude-sonnet-4-20250514", 16, 1800, 450, 650, Decimal("14")),
    ("anthropic", "claude-3-5-haiku-20241022", 12, 1000, 300, 350, Decimal("8")),
    ("google", "gemini-1.5-pro", 8, 2200, 420, 700, Decimal("13")),
    ("google", "gemini-1.5-flash", 10, 1200, 240, 260, Decimal("5")),
    ("cohere", "command-r-plus", 6, 1600, 350, 600, Decimal("15")),
)


def _catalog() -> tuple[ModelSpec, ...]:
    prices = _list_prices()
    specs = []
    for provider, model, weight, median_in, median_out, latency, ms_per_token in _TRAFFIC:
        try:
            inp, out, cache_read, cache_write = prices[(provider, model)]
        except KeyError:
            raise ConfigurationError(
                f"{PRICES_SOURCE} has no price for {provider}/{model}, a model the seed data use"
            ) from None
        specs.append(
            ModelSpec(
                provider,
                model,
                input_per_mtok=inp,
                output_per_mtok=out,
                traffic_weight=weight,
                median_input=median_in,
                median_output=median_out,
                base_latency_ms=latency,
                ms_per_output_token=ms_per_token,
                cache_read_per_mtok=cache_read,
                cache_write_per_mtok=cache_write,
            )
        )
    return tuple(specs)


MODEL_CATALOG: tuple[ModelSpec, ...] = _catalog()
_MODELS_BY_NAME = {spec.model: spec for spec in MODEL_CATALOG}


def model_spec(model: str) -> ModelSpec:
    """The catalog entry for `model`; ValueError names the known models when it is missing."""
    try:
        return _MODELS_BY_NAME[model]
    except KeyError:
        known = ", ".join(sorted(_MODELS_BY_NAME))
        raise ValueError(f"unknown model {model!r} (known: {known})") from None


def call_cost(
    model: str, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0, cache_write_tokens: int = 0
) -> Decimal:
    """List-price cost of one call, exact in Decimal and rounded half-up to the ledger's 6 places."""
    spec = model_spec(model)
    cost = (
        Decimal(input_tokens) * spec.input_per_mtok
        + Decimal(output_tokens) * spec.output_per_mtok
        + Decimal(cache_read_tokens) * spec.cache_read_per_mtok
        + Decimal(cache_write_tokens) * spec.cache_write_per_mtok
    ) / _MILLION
    return cost.quantize(_MICRO, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Verdict:
    """The consensus over a set of framework verdicts."""

    valid: bool
    confidence: float
    consensus_type: str
    votes_for: int
    votes_against: int


def decide_consensus(votes: Sequence[tuple[bool, float]]) -> Verdict:
    """Majority of `valid` votes (a tie goes to the side with more total confidence); confidence is the mean."""
    if not votes:
        raise ValueError("a consensus needs at least one verdict")
    votes_for = sum(1 for valid, _ in votes if valid)
    votes_against = len(votes) - votes_for
    if votes_for != votes_against:
        valid = votes_for > votes_against
        consensus_type = "unanimous" if votes_for == 0 or votes_against == 0 else "majority"
    else:
        weight_for = sum(conf for ok, conf in votes if ok)
        weight_against = sum(conf for ok, conf in votes if not ok)
        valid = weight_for >= weight_against
        consensus_type = "weighted"
    return Verdict(
        valid=valid,
        confidence=statistics.fmean(conf for _, conf in votes),
        consensus_type=consensus_type,
        votes_for=votes_for,
        votes_against=votes_against,
    )


_COUNTRIES = (
    "Germany",
    "Brazil",
    "Japan",
    "Canada",
    "India",
    "Kenya",
    "Australia",
    "France",
    "Mexico",
    "Norway",
)
_COMPANIES = (
    "Nvidia",
    "Tesla",
    "Unilever",
    "Siemens",
    "Toyota",
    "Shopify",
    "Infosys",
    "Novo Nordisk",
    "Airbus",
)
_MONTHS = ("January", "March", "April", "June", "September", "October", "November")

_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "scientific": (
        ("climate", "Global average sea level rose by {n} centimetres between {y0} and {y1}."),
        ("climate", "Arctic sea ice extent in September {y1} was the {ordinal} lowest on record."),
        ("environment", "Microplastics were found in {pct}% of tap water samples tested in {country}."),
        ("biodiversity", "Wild bee populations in {country} declined by {pct}% over the last decade."),
        ("energy", "Solar power generated more electricity than coal in {country} during {month} {y1}."),
        (
            "space",
            "The James Webb Space Telescope detected carbon dioxide in the atmosphere of an exoplanet.",
        ),
        ("physics", "Lightning never strikes the same place twice."),
    ),
    "medical": (
        ("nutrition", "Drinking {small} cups of coffee a day lowers the risk of type 2 diabetes by {pct}%."),
        ("supplements", "Vitamin C supplements shorten the common cold by {small} days on average."),
        (
            "vaccines",
            "The updated flu vaccine is {pct}% effective at preventing hospitalisation in adults over 65.",
        ),
        (
            "sleep",
            "Adults who sleep less than {small} hours a night are {pct}% more likely to develop heart disease.",
        ),
        ("public-health", "Smoking rates among teenagers in {country} fell by {pct}% since {y0}."),
        ("myths", "Humans only use ten percent of their brains."),
        ("exercise", "Walking {k} steps a day cuts all-cause mortality by {pct}% compared with 4,000 steps."),
    ),
    "financial": (
        ("earnings", "{company} reported quarterly revenue of ${bn} billion, up {pct}% year over year."),
        ("markets", "{company} shares fell {pct}% in a single trading day in {month} {y1}."),
        ("inflation", "Inflation in {country} fell to {rate}% in {month} {y1}, the lowest level since {y0}."),
        (
            "monetary-policy",
            "The central bank of {country} raised interest rates by {bp} basis points in {month} {y1}.",
        ),
        ("employment", "Unemployment in {country} reached {rate}% in {month} {y1}."),
        ("crypto", "Bitcoin's market capitalisation exceeded that of silver in {y1}."),
    ),
    "political": (
        ("elections", "Voter turnout in {country}'s {y1} general election reached {pct}%."),
        ("legislation", "{country}'s parliament passed the climate bill with {votes} votes in favour."),
        ("defence", "{country} raised defence spending to {rate}% of GDP in {y1}."),
        ("immigration", "Net migration to {country} doubled between {y0} and {y1}."),
        ("budget", "{country}'s government spent more on debt interest than on education in {y1}."),
    ),
    "historical": (
        ("ancient", "The Great Wall of China is visible from low Earth orbit with the naked eye."),
        ("modern", "The Berlin Wall fell on 9 November 1989."),
        ("exploration", "Christopher Columbus set out to prove that the Earth was round."),
        (
            "science-history",
            "Marie Curie was the first person to win Nobel Prizes in two different sciences.",
        ),
        ("myths", "Napoleon Bonaparte was unusually short for a Frenchman of his time."),
        ("founding", "{country} adopted its current constitution in {y0}."),
    ),
}


def claim_text(rng: random.Random, claim_type: str) -> tuple[str, str]:
    """A claim of `claim_type` and its topic."""
    topic, template = rng.choice(_TEMPLATES[claim_type])
    y1 = rng.randint(2015, 2025)
    slots = {
        "n": rng.randint(3, 25),
        "pct": rng.randint(4, 78),
        "small": rng.randint(2, 6),
        "k": rng.choice(("7,000", "8,000", "10,000", "12,000")),
        "y0": rng.randint(1950, y1 - 1),
        "y1": y1,
        "ordinal": rng.choice(("second", "third", "fourth", "fifth")),
        "country": rng.choice(_COUNTRIES),
        "company": rng.choice(_COMPANIES),
        "month": rng.choice(_MONTHS),
        "bn": f"{rng.randint(5, 140)}.{rng.randint(0, 9)}",
        "rate": f"{rng.randint(1, 9)}.{rng.randint(0, 9)}",
        "bp": rng.choice((25, 50, 75)),
        "votes": rng.randint(180, 420),
    }
    return template.format(**slots), topic


def claim_sentence(rng: random.Random, claim_type: str | None = None) -> str:
    """A checkable, real-looking claim of `claim_type` (random type when None)."""
    kind = claim_type if claim_type is not None else rng.choices(CLAIM_TYPES, weights=CLAIM_TYPE_WEIGHTS)[0]
    if kind not in _TEMPLATES:
        raise ValueError(f"unknown claim type {kind!r} (known: {', '.join(CLAIM_TYPES)})")
    return claim_text(rng, kind)[0]


def checkpoint_version(version_index: int, framework: str) -> str:
    """Semantic version of the `version_index`-th checkpoint; the framework makes it unique per model."""
    return f"1.{version_index}.0+{framework}"


def raw_usage(
    provider: str, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> dict[str, Any]:
    """The usage object the provider's SDK returns for these disjoint buckets (what callers store)."""
    if provider == "openai":
        prompt = input_tokens + cache_read
        return {"prompt_tokens": prompt, "completion_tokens": output_tokens, "total_tokens": prompt + output_tokens,
                "prompt_tokens_details": {"cached_tokens": cache_read}}  # fmt: skip
    if provider == "anthropic":
        return {"input_tokens": input_tokens, "output_tokens": output_tokens,
                "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write}  # fmt: skip
    if provider == "google":
        prompt = input_tokens + cache_read
        return {"promptTokenCount": prompt, "candidatesTokenCount": output_tokens,
                "cachedContentTokenCount": cache_read, "totalTokenCount": prompt + output_tokens}  # fmt: skip
    return {"billed_units": {"input_tokens": input_tokens, "output_tokens": output_tokens}}
