"""Deterministic, idempotent seeding of every table with realistic, related data.

The library behind `scripts/seed_database.py`. Three properties drive the design:

- Deterministic: every row is a pure function of (plan.seed, as_of, table, row index) - each row
  draws from its own `random.Random` derived from the plan's seed - and its primary key is
  `uuid5(NAMESPACE, "table:index")`. The same plan gives identical data, and a larger plan is a
  superset of a smaller one. (The one exception is the seed-run record's time, below.)
- Idempotent: rows go in with `ON CONFLICT DO NOTHING` on those deterministic keys (AI calls, which
  have no unique key, with `WHERE NOT EXISTS` on their seeded `request_id`), so a re-run inserts
  only what is missing. The first run records its seed, as_of and plan as one audit_log row (when:
  the wall clock); later runs reuse that as_of, so a re-run on a later day inserts nothing too, and
  refuse a different seed or as_of (ValueError) unless they reset.
- Atomic: one transaction under an advisory lock, so a failed run leaves nothing half written and
  concurrent seeders serialise.

It needs nothing beyond the package's runtime dependencies (no Faker, no factory-boy): the seeding
script runs against development databases where the `testing` extra is not installed.
"""

from __future__ import annotations

import bisect
import json
import random
import statistics
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Insert,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    Text,
    bindparam,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from persistence.advisory import advisory_key
from persistence.models import (
    AICall,
    AuditLog,
    Claim,
    ConsensusDecision,
    ModelCheckpoint,
    ReconciliationReport,
    ServiceHealth,
    TrainingData,
    VerificationResult,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "CLAIM_TYPES",
    "FRAMEWORKS",
    "LEDGER_DERIVED_TABLES",
    "MODEL_CATALOG",
    "NAMESPACE",
    "REFERENCE_TABLES",
    "SEEDED_TABLES",
    "SERVICES",
    "ModelSpec",
    "ProgressCallback",
    "SeedPlan",
    "SeedReport",
    "Verdict",
    "call_cost",
    "checkpoint_version",
    "claim_sentence",
    "decide_consensus",
    "model_spec",
    "seed_database",
    "seed_uuid",
    "table_counts",
]

# Fixed forever: changing it would re-key every seeded row.
NAMESPACE = uuid.UUID("6f1c3a52-8d0e-5b7a-9c44-2e1f0b7d9a11")

_CLAIMS: Table = Claim.__table__  # type: ignore[assignment]
_VERIFICATIONS: Table = VerificationResult.__table__  # type: ignore[assignment]
_CONSENSUS: Table = ConsensusDecision.__table__  # type: ignore[assignment]
_TRAINING: Table = TrainingData.__table__  # type: ignore[assignment]
_CHECKPOINTS: Table = ModelCheckpoint.__table__  # type: ignore[assignment]
_SERVICES: Table = ServiceHealth.__table__  # type: ignore[assignment]
_AUDIT: Table = AuditLog.__table__  # type: ignore[assignment]
_AI_CALLS: Table = AICall.__table__  # type: ignore[assignment]
_REPORTS: Table = ReconciliationReport.__table__  # type: ignore[assignment]

_TABLES_IN_ORDER: tuple[Table, ...] = (
    _CLAIMS,
    _VERIFICATIONS,
    _CONSENSUS,
    _TRAINING,
    _CHECKPOINTS,
    _SERVICES,
    _AUDIT,
    _AI_CALLS,
    _REPORTS,
)
SEEDED_TABLES: tuple[str, ...] = tuple(t.name for t in _TABLES_IN_ORDER)
# Kept in step with ai_calls by seeding (keys of the seeded calls, their hourly rollups) and emptied
# with it by a reset; not counted as seeded tables.
LEDGER_DERIVED_TABLES: tuple[str, ...] = (
    "ai_call_keys",
    "ai_call_pending_batches",
    "ai_call_usage_deltas",
    "ai_call_usage_hourly",
    "ai_call_model_hourly",
)
# Reference data loaded by migrations (vendor prices) and the operator's own configuration and its
# history (cost alert rules, their firings and notification log): never seeded, never reset.
REFERENCE_TABLES: tuple[str, ...] = ("vendor_prices", "cost_alerts", "cost_alert_firings", "cost_alerts_log")

ProgressCallback = Callable[[str, int, int], None]

_BATCH = 1000
_SEED_USER = "seed"
# Key of the transaction-scoped advisory lock that serialises seeders (any stable 64-bit value).
_LOCK_KEY = advisory_key("persistence.seeding")
_MICRO = Decimal("0.000001")
_CENT = Decimal("0.01")
_MILLION = Decimal(1_000_000)

# --------------------------------------------------------------------------------------------------
# Domain catalog (shared with persistence.testing.factories)
# --------------------------------------------------------------------------------------------------

FRAMEWORKS: tuple[str, ...] = ("empirical", "logical", "statistical", "consensus_ai", "source_credibility")
CLAIM_TYPES: tuple[str, ...] = ("scientific", "medical", "financial", "political", "historical")
SERVICES: tuple[str, ...] = ("api-gateway", "verifier", "consensus-engine", "trainer")

# How often each framework's verdict matches the truth; drives realistic disagreement.
_FRAMEWORK_ACCURACY = {
    "empirical": 0.86,
    "logical": 0.78,
    "statistical": 0.82,
    "consensus_ai": 0.9,
    "source_credibility": 0.74,
}
_FRAMEWORK_LATENCY_MS = {
    "empirical": (400, 4200),
    "logical": (120, 900),
    "statistical": (250, 2600),
    "consensus_ai": (900, 6500),
    "source_credibility": (150, 1800),
}


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
    # Cache prices as revision 0003 loads them (USD per million tokens).
    cache_read_per_mtok: Decimal = Decimal(0)
    cache_write_per_mtok: Decimal = Decimal(0)


MODEL_CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        "openai",
        "gpt-4o",
        Decimal("2.50"),
        Decimal("10.00"),
        18,
        1400,
        380,
        420,
        Decimal("12"),
        Decimal("1.25"),
        Decimal("2.50"),
    ),
    ModelSpec(
        "openai",
        "gpt-4o-mini",
        Decimal("0.15"),
        Decimal("0.60"),
        30,
        900,
        260,
        280,
        Decimal("7"),
        Decimal("0.075"),
        Decimal("0.15"),
    ),
    ModelSpec(
        "anthropic",
        "claude-sonnet-4-20250514",
        Decimal("3.00"),
        Decimal("15.00"),
        16,
        1800,
        450,
        650,
        Decimal("14"),
        Decimal("0.30"),
        Decimal("3.75"),
    ),
    ModelSpec(
        "anthropic",
        "claude-3-5-haiku-20241022",
        Decimal("0.80"),
        Decimal("4.00"),
        12,
        1000,
        300,
        350,
        Decimal("8"),
        Decimal("0.08"),
        Decimal("1.00"),
    ),
    ModelSpec(
        "google",
        "gemini-1.5-pro",
        Decimal("1.25"),
        Decimal("5.00"),
        8,
        2200,
        420,
        700,
        Decimal("13"),
        Decimal("0.3125"),
        Decimal("1.25"),
    ),
    ModelSpec(
        "google",
        "gemini-1.5-flash",
        Decimal("0.075"),
        Decimal("0.30"),
        10,
        1200,
        240,
        260,
        Decimal("5"),
        Decimal("0.01875"),
        Decimal("0.075"),
    ),
    ModelSpec(
        "cohere",
        "command-r-plus",
        Decimal("2.50"),
        Decimal("10.00"),
        6,
        1600,
        350,
        600,
        Decimal("15"),
        Decimal("2.50"),
        Decimal("2.50"),
    ),
)
_MODELS_BY_NAME = {spec.model: spec for spec in MODEL_CATALOG}
_MODEL_WEIGHTS = [spec.traffic_weight for spec in MODEL_CATALOG]


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
_CLAIM_TYPE_WEIGHTS = (30, 26, 20, 14, 10)
_SOURCES = (
    "twitter.com",
    "facebook.com",
    "reddit.com",
    "news-article",
    "press-release",
    "tv-broadcast",
    "user-submission",
    "browser-extension",
)
_SOURCE_WEIGHTS = (22, 12, 10, 20, 10, 6, 14, 6)
_EVIDENCE_DOMAINS = (
    "reuters.com",
    "apnews.com",
    "nature.com",
    "who.int",
    "nih.gov",
    "worldbank.org",
    "imf.org",
    "bbc.co.uk",
    "statista.com",
    "ourworldindata.org",
    "sec.gov",
    "ecb.europa.eu",
)


def _claim_text(rng: random.Random, claim_type: str) -> tuple[str, str]:
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
    kind = claim_type if claim_type is not None else rng.choices(CLAIM_TYPES, weights=_CLAIM_TYPE_WEIGHTS)[0]
    if kind not in _TEMPLATES:
        raise ValueError(f"unknown claim type {kind!r} (known: {', '.join(CLAIM_TYPES)})")
    return _claim_text(rng, kind)[0]


# --------------------------------------------------------------------------------------------------
# The plan and the report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedPlan:
    """How much to seed. Sizes are per-entity counts; `seed` and `as_of` anchor the data."""

    seed: int = 42
    claims: int = 200
    verifications_per_claim: int = 3
    training_per_claim: int = 2
    checkpoints_per_model: int = 4  # versions per (model_name, framework)
    service_instances: int = 3  # per service
    ai_calls: int = 5000
    days: int = 30  # AI calls spread over this many days before as_of
    # None: the as_of recorded by the database's first seeding, else today 00:00 UTC.
    as_of: datetime | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name, high in _SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SeedPlan.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"SeedPlan.{name} must be >= 0, got {value}")
            if value > high:
                raise ValueError(f"SeedPlan.{name} must be <= {high}, got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"SeedPlan.seed must be an int, got {self.seed!r}")
        if self.days < 1:
            raise ValueError(f"SeedPlan.days must be >= 1 (timestamps are spread over it), got {self.days}")
        if self.as_of is not None:
            _check_as_of(self.as_of, "SeedPlan.as_of")

    def resolved_as_of(self, now: Callable[[], datetime] | None = None) -> datetime:
        """`as_of` in UTC, or 00:00 UTC of the day `now()` (default: the wall clock) falls on."""
        if self.as_of is not None:
            return self.as_of.astimezone(UTC)
        today = _check_as_of((now or _utc_now)(), "now()")
        return today.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def sizes(self) -> dict[str, int]:
        """Every size of the plan (all fields but `seed` and `as_of`), by name."""
        return {name: getattr(self, name) for name in _SIZE_LIMITS}


# Upper bounds keep a run's memory and time sane (every row is generated in memory first) and the
# data realistic; the zero-padded natural keys (seed-claim-000000, seed-call-0000000) fit them.
_SIZE_LIMITS: dict[str, int] = {
    "claims": 100_000,
    "verifications_per_claim": len(FRAMEWORKS),  # one per framework; more would repeat a framework
    "training_per_claim": 10,
    "checkpoints_per_model": 99,
    "service_instances": 100,  # instance ids stay distinct up to here
    "ai_calls": 1_000_000,
    "days": 3650,
}
_EARLIEST_AS_OF = datetime(1980, 1, 1, tzinfo=UTC)
_LATEST_AS_OF = datetime(9000, 1, 1, tzinfo=UTC)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_as_of(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    if not _EARLIEST_AS_OF <= value < _LATEST_AS_OF:
        raise ValueError(f"{what} must be in [1980-01-01, 9000-01-01), got {value.isoformat()}")
    return value


@dataclass(frozen=True)
class SeedReport:
    """Row counts per table before and after one seeding run, and the anchor it seeded with.

    `before` is taken inside the seeding transaction after the optional reset, so `inserted` is
    exactly what this run wrote.
    """

    before: dict[str, int]  # row counts per table before
    after: dict[str, int]  # row counts per table after
    seed: int  # the seed the database's data was made with
    as_of: datetime  # the as_of the database's data was anchored at (UTC)

    @property
    def inserted(self) -> dict[str, int]:
        return {name: self.after.get(name, 0) - self.before.get(name, 0) for name in self.after}


# --------------------------------------------------------------------------------------------------
# Deterministic generation
# --------------------------------------------------------------------------------------------------


def seed_uuid(table: str, *index: int | str) -> uuid.UUID:
    """The primary key of seeded row `index` of `table`: depends on the index only, never on the seed."""
    return uuid.uuid5(NAMESPACE, ":".join([table, *map(str, index)]))


def _rng(seed: int, table: str, *index: int | str) -> random.Random:
    # String seeds are hashed with SHA-512: stable across processes, unlike hash().
    return random.Random(":".join([str(seed), table, *map(str, index)]))


# Share of traffic by UTC hour: Europe's afternoon overlapping with US business hours.
_HOURLY = (
    0.30, 0.22, 0.18, 0.16, 0.17, 0.22, 0.35, 0.55, 0.75, 0.90, 0.95, 1.00,
    1.00, 1.05, 1.15, 1.20, 1.18, 1.10, 0.98, 0.85, 0.72, 0.60, 0.48, 0.38,
)  # fmt: skip
_WEEKEND = 0.45


class _Clock:
    """Samples timestamps in [as_of - days, as_of) following a daily and hourly traffic shape."""

    def __init__(self, as_of: datetime, days: int) -> None:
        self.start = as_of - timedelta(days=days)
        self.end = as_of
        cum: list[float] = []
        total = 0.0
        for hour in range(days * 24):
            at = self.start + timedelta(hours=hour)
            weekend = _WEEKEND if at.weekday() >= 5 else 1.0
            growth = 1.0 + 0.01 * (hour // 24)  # traffic grows ~1% a day
            total += _HOURLY[at.hour] * weekend * growth
            cum.append(total)
        self._cum = cum
        self._total = total

    def sample(self, rng: random.Random) -> datetime:
        bucket = min(bisect.bisect_right(self._cum, rng.random() * self._total), len(self._cum) - 1)
        return self.start + timedelta(hours=bucket, microseconds=rng.randrange(3_600_000_000))


@dataclass(frozen=True)
class _SeedClaim:
    index: int
    id: uuid.UUID
    external_id: str
    content: str
    claim_type: str
    created_at: datetime
    truth: bool
    framework_offset: int
    has_consensus: bool
    row: dict[str, Any]


def _claims(plan: SeedPlan, clock: _Clock) -> list[_SeedClaim]:
    out = []
    for i in range(plan.claims):
        rng = _rng(plan.seed, "claims", i)
        claim_type = rng.choices(CLAIM_TYPES, weights=_CLAIM_TYPE_WEIGHTS)[0]
        content, topic = _claim_text(rng, claim_type)
        created_at = clock.sample(rng)
        source = rng.choices(_SOURCES, weights=_SOURCE_WEIGHTS)[0]
        claim_id = seed_uuid("claims", i)
        external_id = f"seed-claim-{i:06d}"
        metadata = {
            "topic": topic,
            "language": "en",
            "priority": rng.choices(("low", "normal", "high"), weights=(25, 60, 15))[0],
            "submitted_by": f"user-{rng.randint(1, 400):04d}",
            "seeded": True,
        }
        out.append(
            _SeedClaim(
                index=i,
                id=claim_id,
                external_id=external_id,
                content=content,
                claim_type=claim_type,
                created_at=created_at,
                truth=rng.random() < 0.55,
                framework_offset=rng.randrange(len(FRAMEWORKS)),
                has_consensus=rng.random() < 0.9,
                row={
                    "id": claim_id,
                    "external_id": external_id,
                    "content": content,
                    "claim_type": claim_type,
                    "source": source,
                    "metadata": metadata,
                    "created_at": created_at,
                },
            )
        )
    return out


def _evidence_urls(rng: random.Random, count: int) -> list[str]:
    return [
        f"https://www.{rng.choice(_EVIDENCE_DOMAINS)}/{rng.choice(('article', 'data', 'report', 'news'))}/"
        f"{rng.getrandbits(40):010x}"
        for _ in range(count)
    ]


def _verifications(plan: SeedPlan, claims: Sequence[_SeedClaim]) -> dict[int, list[dict[str, Any]]]:
    by_claim: dict[int, list[dict[str, Any]]] = {}
    for claim in claims:
        rows = []
        at = claim.created_at
        for j in range(plan.verifications_per_claim):
            rng = _rng(plan.seed, "verification_results", claim.index, j)
            framework = FRAMEWORKS[(claim.framework_offset + j) % len(FRAMEWORKS)]
            correct = rng.random() < _FRAMEWORK_ACCURACY[framework]
            valid = claim.truth if correct else not claim.truth
            confidence = round(rng.uniform(0.62, 0.98) if correct else rng.uniform(0.5, 0.82), 4)
            low, high = _FRAMEWORK_LATENCY_MS[framework]
            processing_ms = rng.randint(low, high)
            at = at + timedelta(milliseconds=processing_ms + rng.randint(50, 3000))
            sources = _evidence_urls(rng, rng.randint(1, 4))
            supporting = sum(1 for _ in sources if rng.random() < (0.8 if valid else 0.2))
            rows.append(
                {
                    "id": seed_uuid("verification_results", claim.index, j),
                    "claim_id": claim.external_id,
                    "framework": framework,
                    "result": {
                        "valid": valid,
                        "verdict": "supported" if valid else "refuted",
                        "reasoning": f"{supporting} of {len(sources)} sources support the claim "
                        f"({framework.replace('_', ' ')} analysis).",
                    },
                    "confidence": confidence,
                    "evidence": {
                        "sources": sources,
                        "supporting": supporting,
                        "contradicting": len(sources) - supporting,
                    },
                    "processing_time_ms": processing_ms,
                    "model_version": f"1.{rng.randint(1, 3)}.{rng.randint(0, 4)}",
                    "created_at": at,
                    "updated_at": at,
                }
            )
        by_claim[claim.index] = rows
    return by_claim


def _consensus(
    plan: SeedPlan, claims: Sequence[_SeedClaim], verifications: dict[int, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    rows = []
    for claim in claims:
        votes = verifications[claim.index]
        if not claim.has_consensus or not votes:
            continue
        rng = _rng(plan.seed, "consensus_decisions", claim.index)
        verdict = decide_consensus([(v["result"]["valid"], v["confidence"]) for v in votes])
        decision_ms = rng.randint(15, 400)
        rows.append(
            {
                "id": seed_uuid("consensus_decisions", claim.index),
                "claim_id": claim.external_id,
                "consensus_result": {
                    "valid": verdict.valid,
                    "verdict": "supported" if verdict.valid else "refuted",
                    "votes_for": verdict.votes_for,
                    "votes_against": verdict.votes_against,
                },
                "participating_frameworks": {
                    v["framework"]: {"valid": v["result"]["valid"], "confidence": v["confidence"]}
                    for v in votes
                },
                "consensus_type": verdict.consensus_type,
                "consensus_confidence": verdict.confidence,
                "decision_time_ms": decision_ms,
                "created_at": max(v["created_at"] for v in votes) + timedelta(milliseconds=decision_ms),
            }
        )
    return rows


def _training(plan: SeedPlan, claims: Sequence[_SeedClaim], as_of: datetime) -> list[dict[str, Any]]:
    rows = []
    for claim in claims:
        for j in range(plan.training_per_claim):
            rng = _rng(plan.seed, "training_data", claim.index, j)
            framework = rng.choice(FRAMEWORKS)
            created_at = min(
                claim.created_at + timedelta(minutes=rng.randint(30, 72 * 60)), as_of - timedelta(seconds=1)
            )
            # Examples older than three days have usually been consumed by a weekly training batch.
            used = created_at < as_of - timedelta(days=3) and rng.random() < 0.6
            iso = created_at.isocalendar()
            label_source = rng.choices(("human_review", "consensus", "expert_panel"), weights=(50, 40, 10))[0]
            rows.append(
                {
                    "id": seed_uuid("training_data", claim.index, j),
                    "framework": framework,
                    "claim_id": claim.id,
                    "claim_text": claim.content,
                    "evidence": {
                        "sources": _evidence_urls(rng, rng.randint(1, 3)),
                        "label_source": label_source,
                    },
                    # Reviewers are right ~97% of the time.
                    "validity": claim.truth if rng.random() < 0.97 else not claim.truth,
                    "confidence": round(rng.uniform(0.7, 1.0), 4),
                    "metadata": {
                        "claim_type": claim.claim_type,
                        "annotator": f"annotator-{rng.randint(1, 24):02d}",
                        "split": rng.choices(("train", "validation", "test"), weights=(80, 10, 10))[0],
                    },
                    "used_in_training": used,
                    "training_batch_id": f"tb-{framework}-{iso.year}w{iso.week:02d}" if used else None,
                    "created_at": created_at,
                }
            )
    return rows


_CHECKPOINT_MODELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("claim-verifier", FRAMEWORKS, "microsoft/deberta-v3-large"),
    ("evidence-ranker", ("empirical", "statistical", "source_credibility"), "BAAI/bge-reranker-large"),
    ("consensus-calibrator", ("consensus_ai",), "xgboost"),
)


def checkpoint_version(version_index: int, framework: str) -> str:
    """Semantic version of the `version_index`-th checkpoint; the framework makes it unique per model."""
    return f"1.{version_index}.0+{framework}"


def _checkpoints(
    plan: SeedPlan, as_of: datetime, already_active: set[tuple[str, str | None]]
) -> list[dict[str, Any]]:
    rows = []
    pair = 0
    for model_name, frameworks, base_model in _CHECKPOINT_MODELS:
        for framework in frameworks:
            last = plan.checkpoints_per_model - 1
            for v in range(plan.checkpoints_per_model):
                rng = _rng(plan.seed, "model_checkpoints", pair, v)
                version = checkpoint_version(v, framework)
                accuracy = min(0.97, 0.76 + 0.025 * v + rng.uniform(-0.01, 0.015))
                precision = min(0.98, accuracy + rng.uniform(-0.03, 0.03))
                recall = min(0.98, accuracy + rng.uniform(-0.04, 0.02))
                rows.append(
                    {
                        "id": seed_uuid("model_checkpoints", pair, v),
                        "model_name": model_name,
                        "framework": framework,
                        "version": version,
                        "checkpoint_path": f"s3://brahminykite-models/{model_name}/{framework}/{version}/model.safetensors",
                        "metrics": {
                            "accuracy": round(accuracy, 4),
                            "precision": round(precision, 4),
                            "recall": round(recall, 4),
                            "f1": round(2 * precision * recall / (precision + recall), 4),
                            "eval_loss": round(0.62 - 0.04 * v + rng.uniform(-0.02, 0.02), 4),
                            "eval_samples": rng.randint(2_000, 12_000),
                        },
                        "training_config": {
                            "base_model": base_model,
                            "learning_rate": rng.choice((1e-5, 2e-5, 3e-5)),
                            "epochs": rng.randint(2, 5),
                            "batch_size": rng.choice((16, 32, 64)),
                            "warmup_ratio": 0.1,
                        },
                        # The newest version is live, unless this pair already has a live checkpoint.
                        "is_active": v == last and (model_name, framework) not in already_active,
                        "created_at": as_of - timedelta(days=7 * (last - v) + 2, minutes=rng.randint(0, 600)),
                    }
                )
            pair += 1
    return rows


def _service_health(plan: SeedPlan, as_of: datetime) -> list[dict[str, Any]]:
    rows = []
    for s, service in enumerate(SERVICES):
        # One Kubernetes ReplicaSet per service: the pod-template hash is shared by its pods.
        template_hash = seed_uuid("service_health", service).hex[:10]
        for k in range(plan.service_instances):
            rng = _rng(plan.seed, "service_health", s, k)
            key = seed_uuid("service_health", s, k)
            status = rng.choices(("healthy", "degraded", "starting"), weights=(85, 10, 5))[0]
            lag = rng.randint(1, 30) if status != "degraded" else rng.randint(45, 300)
            uptime = rng.randint(60, 14 * 86_400) if status != "starting" else rng.randint(1, 40)
            rows.append(
                {
                    "id": key,
                    "service_name": service,
                    "instance_id": f"{service}-{template_hash}-{key.hex[:5]}",
                    "status": status,
                    "last_heartbeat": as_of - timedelta(seconds=lag),
                    "metadata": {
                        "version": f"2.{rng.randint(10, 14)}.{rng.randint(0, 9)}",
                        "host": f"ip-10-0-{rng.randint(0, 15)}-{rng.randint(2, 254)}.ec2.internal",
                        "region": rng.choice(("us-east-1", "eu-west-1")),
                        "pid": rng.randint(1, 64),
                        "uptime_seconds": uptime,
                        "cpu_percent": round(rng.uniform(3, 85), 1),
                        "memory_mb": rng.randint(180, 3800),
                    },
                    "created_at": as_of - timedelta(seconds=uptime),
                }
            )
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _audit(
    seed: int,
    claims: Sequence[_SeedClaim],
    verifications: dict[int, list[dict[str, Any]]],
    consensus: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    def entry(
        key: str, entity_type: str, entity_id: str, row: dict[str, Any], fields: Sequence[str]
    ) -> dict[str, Any]:
        return {
            "id": seed_uuid("audit_log", key),
            "entity_type": entity_type,
            "entity_id": entity_id,
            "action": "insert",
            "user_id": _SEED_USER,
            "changes": {name: [None, _jsonable(row[name])] for name in fields},
            "metadata": {"source": "seed", "seed": seed, "request_id": f"seed-req-{key}"},
            "created_at": row["created_at"],
        }

    rows = []
    for claim in claims:
        rows.append(
            entry(
                f"claim:{claim.index}",
                "claim",
                claim.external_id,
                claim.row,
                ("external_id", "content", "claim_type", "source"),
            )
        )
        for j, v in enumerate(verifications[claim.index]):
            rows.append(
                entry(
                    f"verification:{claim.index}:{j}",
                    "verification_result",
                    str(v["id"]),
                    v,
                    ("claim_id", "framework", "result", "confidence"),
                )
            )
    for c in consensus:
        rows.append(
            entry(
                f"consensus:{c['claim_id']}",
                "consensus_decision",
                str(c["id"]),
                c,
                ("claim_id", "consensus_result", "consensus_type", "consensus_confidence"),
            )
        )
    return rows


_ORGANIZATIONS = (
    "acme-corp",
    "globex",
    "initech",
    "umbrella-health",
    "stark-analytics",
    "wayne-media",
    "hooli",
)
_CUSTOMERS = tuple(f"cust_{n:04d}" for n in range(1, 41))
# Zipf-like: a few customers make most of the traffic.
_CUSTOMER_WEIGHTS = tuple(1.0 / (rank + 1) ** 1.1 for rank in range(len(_CUSTOMERS)))
_PRODUCTS = ("claim-verifier", "fact-check-api", "research-assistant", "content-moderation", "chatbot")
_PRODUCT_WEIGHTS = (35, 25, 15, 15, 10)
_ENVIRONMENTS = ("production", "staging", "development")
_ENVIRONMENT_WEIGHTS = (86, 9, 5)


# Failed calls, ~2% of traffic: (status, error class, weight). A rate-limited call bills nothing; an
# error or a timeout bills the prompt it had already read.
_FAILURES = (
    ("rate_limited", "RateLimitError", 5),
    ("timeout", "APITimeoutError", 3),
    ("error", "APIError", 2),
)
# Share of calls that read a cached prompt prefix, by provider (prompt caching is common for agents).
_CACHE_READ_SHARE = {"openai": 0.35, "anthropic": 0.45, "google": 0.2, "cohere": 0.0}


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


def _ai_calls(plan: SeedPlan, clock: _Clock) -> list[dict[str, Any]]:
    rows = []
    for i in range(plan.ai_calls):
        rng = _rng(plan.seed, "ai_calls", i)
        spec = rng.choices(MODEL_CATALOG, weights=_MODEL_WEIGHTS)[0]
        prompt = max(12, min(120_000, int(rng.lognormvariate(0, 0.8) * spec.median_input)))
        output_tokens = max(1, min(8_192, int(rng.lognormvariate(0, 0.7) * spec.median_output)))
        cache_read = cache_write = 0
        if rng.random() < _CACHE_READ_SHARE[spec.provider]:
            cache_read = int(prompt * rng.uniform(0.3, 0.9))
        if spec.provider == "anthropic" and rng.random() < 0.1:
            cache_write = int((prompt - cache_read) * rng.uniform(0.3, 0.8))
        input_tokens = prompt - cache_read - cache_write
        status, error_class = "success", None
        if rng.random() < 0.02:
            status, error_class, _ = rng.choices(_FAILURES, weights=[w for _, _, w in _FAILURES])[0]
            output_tokens = cache_write = 0
            if status == "rate_limited":
                input_tokens = cache_read = 0
        latency = spec.base_latency_ms + int(
            Decimal(output_tokens) * spec.ms_per_output_token * Decimal(rng.randint(80, 130)) / 100
        )
        customer = rng.choices(range(len(_CUSTOMERS)), weights=_CUSTOMER_WEIGHTS)[0]
        rows.append(
            {
                "created_at": clock.sample(rng),
                "provider": spec.provider,
                "model": spec.model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_tokens": cache_read,
                "cache_write_tokens": cache_write,
                "usage": raw_usage(spec.provider, input_tokens, output_tokens, cache_read, cache_write),
                "cost_usd": call_cost(spec.model, input_tokens, output_tokens, cache_read, cache_write),
                "latency_ms": latency + int(rng.expovariate(1 / 120)),
                "status": status,
                "error_class": error_class,
                "customer_id": _CUSTOMERS[customer],
                "organization_id": _ORGANIZATIONS[customer % len(_ORGANIZATIONS)],
                "product_id": rng.choices(_PRODUCTS, weights=_PRODUCT_WEIGHTS)[0],
                "environment": rng.choices(_ENVIRONMENTS, weights=_ENVIRONMENT_WEIGHTS)[0],
                "request_id": f"seed-call-{i:07d}",
                "trace_id": f"{rng.getrandbits(128):032x}",
            }
        )
    # Insert in time order so identity ids (and BRIN ranges) follow created_at, as in a live ledger.
    rows.sort(key=lambda r: (r["created_at"], r["request_id"]))
    return rows


def _report_weeks(plan: SeedPlan, as_of: datetime) -> list[tuple[datetime, datetime]]:
    """Seven-day periods ending at `as_of`, oldest first, enough to cover the AI-call window.

    As in the weekly reconciliation job (seed 000): each run reconciles the last 7 days and files the
    report under the day it runs.
    """
    if plan.ai_calls == 0:
        return []
    weeks = -(-plan.days // 7)
    return [
        (as_of - timedelta(days=7 * (k + 1)), as_of - timedelta(days=7 * k)) for k in reversed(range(weeks))
    ]


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _batches(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), _BATCH):
        yield rows[start : start + _BATCH]


async def _insert_missing(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], progress: ProgressCallback
) -> None:
    """Insert rows whose keys are not there yet: any unique violation (pk or natural key) skips the row."""
    # One statement for every batch (compiled once), sent as a pipelined executemany.
    stmt = pg_insert(table).on_conflict_do_nothing()
    done = 0
    if not rows:
        progress(table.name, 0, 0)
    for batch in _batches(rows):
        await conn.execute(stmt, list(batch))
        done += len(batch)
        progress(table.name, done, len(rows))


_AI_CALL_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("created_at", DateTime(timezone=True)),
    ("provider", String()),
    ("model", String()),
    ("input_tokens", Integer()),
    ("output_tokens", Integer()),
    ("cache_read_tokens", Integer()),
    ("cache_write_tokens", Integer()),
    ("usage", Text()),  # JSON text, cast to JSONB in the statement
    ("cost_usd", Numeric(10, 6)),
    ("latency_ms", Integer()),
    ("status", String()),
    ("error_class", String()),
    ("customer_id", String()),
    ("organization_id", String()),
    ("product_id", String()),
    ("environment", String()),
    ("request_id", String()),
    ("trace_id", String()),
)


def _ai_calls_statement() -> Insert:
    """INSERT ... SELECT FROM unnest(<one array per column>) WHERE NOT EXISTS (same request_id).

    One bound array per column keeps the statement identical for every batch size.
    """
    names = [name for name, _ in _AI_CALL_COLUMNS]
    incoming = (
        func.unnest(*(bindparam(name, type_=ARRAY(type_)) for name, type_ in _AI_CALL_COLUMNS))
        .table_valued(*(column(name, type_) for name, type_ in _AI_CALL_COLUMNS))
        .render_derived(name="incoming")
    )
    present = select(literal(1)).select_from(_AI_CALLS).where(_AI_CALLS.c.request_id == incoming.c.request_id)
    return (
        insert(_AI_CALLS)
        .from_select(
            names,
            select(*(cast(incoming.c[n], JSONB) if n == "usage" else incoming.c[n] for n in names)).where(
                ~exists(present)
            ),
        )
        .returning(_AI_CALLS.c.id, _AI_CALLS.c.request_id, _AI_CALLS.c.created_at)
    )


_KEYS_STATEMENT = text(
    "INSERT INTO ai_call_keys (idempotency_key, call_id, call_created_at, payload_hash) "
    "SELECT * FROM unnest(:keys, :ids, :ats, :hashes) ON CONFLICT DO NOTHING"
).bindparams(
    bindparam("keys", type_=ARRAY(String())),
    bindparam("ids", type_=ARRAY(BigInteger())),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
    bindparam("hashes", type_=ARRAY(LargeBinary())),
)


async def _insert_keys(conn: AsyncConnection, rows: Sequence[dict[str, Any]], inserted: list[Any]) -> None:
    """Idempotency keys of the calls just inserted, exactly as `AICallLogger` makes them, so
    logging a seeded call again is recognised as a retry."""
    from persistence.ai_calls.record import AICallRecord

    by_request = {row["request_id"]: row for row in rows}
    keys, ids, ats, hashes = [], [], [], []
    for call_id, request_id, created_at in inserted:
        record = AICallRecord.coerce(by_request[request_id])
        keys.append(record.idempotency_key)
        ids.append(call_id)
        ats.append(created_at)
        hashes.append(record.payload_hash)
    if keys:
        await conn.execute(_KEYS_STATEMENT, {"keys": keys, "ids": ids, "ats": ats, "hashes": hashes})


async def _record_pending(conn: AsyncConnection, ids: Sequence[int]) -> None:
    """Mark the calls just inserted for the rollups' next fold, as `AICallLogger.log_batch` does:
    exact whoever else writes or folds meanwhile."""
    from persistence.ai_calls.rollups import RECORD_PENDING, id_runs

    if ids:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute(RECORD_PENDING, *id_runs(ids))


async def _insert_missing_ai_calls(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], progress: ProgressCallback
) -> None:
    """The ledger has no unique key: skip calls whose seeded request_id is already there."""
    stmt = _ai_calls_statement()
    done = 0
    if not rows:
        progress(_AI_CALLS.name, 0, 0)
    for batch in _batches(rows):
        params = {name: [row[name] for row in batch] for name, _ in _AI_CALL_COLUMNS}
        params["usage"] = [json.dumps(u, sort_keys=True) for u in params["usage"]]
        result = await conn.execute(stmt, params)
        inserted = list(result)
        await _insert_keys(conn, batch, inserted)
        await _record_pending(conn, [row[0] for row in inserted])
        done += len(batch)
        progress(_AI_CALLS.name, done, len(rows))


async def _upsert_reports(
    conn: AsyncConnection, plan: SeedPlan, as_of: datetime, progress: ProgressCallback
) -> None:
    """One report per week, totals aggregated from the ledger as it now stands.

    A report whose totals no longer match the ledger for the same period (a larger plan added calls
    to its week) is regenerated, as the weekly reconciliation job does; anything else is left alone.
    """
    weeks = _report_weeks(plan, as_of)
    rows = []
    for week_start, week_end in weeks:
        stats = await conn.execute(
            select(
                _AI_CALLS.c.provider,
                func.count(),
                func.coalesce(func.sum(_AI_CALLS.c.cost_usd), 0),
                func.coalesce(func.sum(_AI_CALLS.c.total_tokens), 0),
            )
            .where(_AI_CALLS.c.created_at >= week_start, _AI_CALLS.c.created_at < week_end)
            .group_by(_AI_CALLS.c.provider)
            .order_by(_AI_CALLS.c.provider)
        )
        per_provider = [(str(p), int(n), Decimal(cost), int(tokens)) for p, n, cost, tokens in stats]
        total_calls = sum(n for _, n, _, _ in per_provider)
        total_cost = sum((cost for _, _, cost, _ in per_provider), Decimal(0))
        total_tokens = sum(tokens for _, _, _, tokens in per_provider)
        # Money as strings: JSON numbers would go through float.
        by_provider = {
            p: {"calls": n, "cost_usd": str(cost.quantize(_MICRO)), "tokens": tokens}
            for p, n, cost, tokens in per_provider
        }
        rng = _rng(plan.seed, "reconciliation_reports", week_end.date().isoformat())
        # The metering vendor drops a handful of events and rounds differently: well inside the 2% gate.
        missing = total_calls * rng.randint(0, 40) // 10_000
        revenium_cost = (total_cost * (1 - Decimal(rng.randint(0, 40)) / 10_000)).quantize(
            _CENT, ROUND_HALF_UP
        )
        variance = (
            (Decimal(missing) * 100 / Decimal(total_calls)).quantize(_CENT, ROUND_HALF_UP)
            if total_calls
            else Decimal(0)
        )
        rows.append(
            {
                "report_date": week_end.date(),
                "period_start": week_start,
                "period_end": week_end,
                "total_calls": total_calls,
                "total_cost_usd": total_cost.quantize(_CENT, ROUND_HALF_UP),
                "total_tokens": total_tokens,
                "provider_stats": by_provider,
                "revenium_calls": total_calls - missing,
                "revenium_cost_usd": revenium_cost,
                "variance_pct": variance,
                "status": "PASS" if variance < 2 else "FAIL",
                "generated_at": week_end + timedelta(minutes=rng.randint(2, 15)),
            }
        )
    if not rows:
        progress(_REPORTS.name, 0, 0)
        return
    stmt = pg_insert(_REPORTS).values(rows)
    refreshed = ("total_calls", "total_cost_usd", "total_tokens", "provider_stats", "revenium_calls",
                 "revenium_cost_usd", "variance_pct", "status", "generated_at")  # fmt: skip
    stmt = stmt.on_conflict_do_update(
        index_elements=[_REPORTS.c.period_start, _REPORTS.c.period_end, _REPORTS.c.source],
        set_={name: stmt.excluded[name] for name in refreshed},
        where=or_(
            *(
                _REPORTS.c[name].is_distinct_from(stmt.excluded[name])
                for name in ("total_calls", "total_cost_usd", "total_tokens")
            )
        ),
    )
    await conn.execute(stmt)
    progress(_REPORTS.name, len(rows), len(rows))


async def _counts(conn: AsyncConnection) -> dict[str, int]:
    row = (
        await conn.execute(
            select(
                *(
                    select(func.count()).select_from(t).scalar_subquery().label(t.name)
                    for t in _TABLES_IN_ORDER
                )
            )
        )
    ).one()
    return {name: int(row._mapping[name]) for name in SEEDED_TABLES}


async def table_counts(engine: AsyncEngine) -> dict[str, int]:
    """Row counts of every seeded table, in `SEEDED_TABLES` order."""
    async with engine.connect() as conn:
        return await _counts(conn)


_FOREIGN_KEYS_INTO = text(
    "SELECT c.conrelid::regclass::text, c.conname, c.confrelid::regclass::text FROM pg_constraint c "
    "WHERE c.contype = 'f' AND c.confrelid = ANY(CAST(:ours AS regclass[])) "
    "AND NOT c.conrelid = ANY(CAST(:ours AS regclass[])) ORDER BY 1, 2"
).bindparams(bindparam("ours", type_=ARRAY(String())))


async def _reset(conn: AsyncConnection) -> None:
    """Empty every table of the package; refuse (ValueError) when another table references one.

    No CASCADE: that would silently empty the referencing tables too, which are not ours.
    """
    names = [conn.dialect.identifier_preparer.format_table(t) for t in _TABLES_IN_ORDER]
    names += [conn.dialect.identifier_preparer.quote(name) for name in LEDGER_DERIVED_TABLES]
    blockers = (await conn.execute(_FOREIGN_KEYS_INTO, {"ours": names})).all()
    if blockers:
        listed = "; ".join(f"{src} references {dst} (foreign key {name})" for src, name, dst in blockers)
        raise ValueError(
            f"cannot reset: {listed}. Emptying the seeded tables would have to empty those tables "
            "too; empty or drop them (or the foreign keys) first"
        )
    await conn.execute(text(f"TRUNCATE TABLE {', '.join(names)} RESTART IDENTITY"))


# The record of the first seeding: an audit fact (who filled this database, and how) that later
# runs read to keep seeding the same data whatever the day.
_RUN_ID = seed_uuid("audit_log", "seed-run")
_RUN_ENTITY_TYPE = "seed_run"
_RUN_ENTITY_ID = "persistence.seeding"


def _describe(as_of: datetime) -> str:
    return as_of.date().isoformat() if as_of.timetz() == time(tzinfo=UTC) else as_of.isoformat()


async def _recorded_anchor(conn: AsyncConnection) -> tuple[int, datetime] | None:
    """(seed, as_of) of the database's first seeding, or None when it has no seeded data."""
    metadata = await conn.scalar(select(_AUDIT.c["metadata"]).where(_AUDIT.c.id == _RUN_ID))
    if metadata is not None:
        try:
            seed, as_of = metadata["seed"], datetime.fromisoformat(metadata["as_of"]).astimezone(UTC)
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(seed)
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"the seed-run record in audit_log (id {_RUN_ID}) is unreadable: {metadata!r}; "
                "pass --reset to reseed"
            ) from None
        return seed, as_of
    # Seeded rows without the record (seeded before it existed, or the record was deleted): their
    # seed and as_of are unknown, so seeding on could add overlapping data.
    probes = [
        select(literal(1)).select_from(table).where(table.c.id == key)
        for table, key in (
            (_CLAIMS, seed_uuid("claims", 0)),
            (_CHECKPOINTS, seed_uuid("model_checkpoints", 0, 0)),
            (_SERVICES, seed_uuid("service_health", 0, 0)),
            (_AUDIT, seed_uuid("audit_log", "claim:0")),
        )
    ]
    if await conn.scalar(select(or_(*(exists(probe) for probe in probes)))):
        raise ValueError(
            "database holds seeded rows but no seed-run record in audit_log, so the seed and as_of "
            "they were made with are unknown; pass --reset to reseed"
        )
    return None


def _run_record(plan: SeedPlan, as_of: datetime, at: datetime) -> dict[str, Any]:
    return {
        "id": _RUN_ID,
        "entity_type": _RUN_ENTITY_TYPE,
        "entity_id": _RUN_ENTITY_ID,
        "action": "seed",
        "user_id": _SEED_USER,
        "changes": None,
        "metadata": {"seed": plan.seed, "as_of": as_of.isoformat(), "plan": plan.sizes()},
        "created_at": at,
    }


def _ignore_progress(table: str, done: int, total: int) -> None:
    return None


async def seed_database(
    engine: AsyncEngine,
    plan: SeedPlan = SeedPlan(),
    *,
    reset: bool = False,
    progress: ProgressCallback | None = None,
    now: Callable[[], datetime] | None = None,
) -> SeedReport:
    """Seed every table per `plan`, inserting only missing rows, in one transaction.

    The first run records its seed and as_of (and plan) as one audit_log row. Later runs seed with
    that as_of when `plan.as_of` is None, and raise ValueError before writing anything when
    `plan.seed` or an explicit `plan.as_of` differs from the recorded one. `reset=True` first
    empties every table of the package (identities restart) in that same transaction, so the run
    records a new anchor. `progress(table, done, total)` is called after each batch. `now` (a
    timezone-aware clock, default the wall clock) gives "today" and the record's time.
    """
    plan.validate()
    report_progress = progress if progress is not None else _ignore_progress
    clock_now = now if now is not None else _utc_now

    async with engine.begin() as conn:
        await conn.execute(select(func.pg_advisory_xact_lock(literal(_LOCK_KEY, BigInteger))))
        if reset:
            await _reset(conn)
        recorded = await _recorded_anchor(conn)
        run_record: list[dict[str, Any]] = []
        if recorded is None:
            at = _check_as_of(clock_now(), "now()")
            as_of = plan.resolved_as_of(lambda: at)
            run_record.append(_run_record(plan, as_of, at))
        else:
            recorded_seed, as_of = recorded
            wanted = plan.resolved_as_of() if plan.as_of is not None else as_of
            if (plan.seed, wanted) != (recorded_seed, as_of):
                asked = f"seed={plan.seed}" + (f" as_of={_describe(wanted)}" if wanted != as_of else "")
                raise ValueError(
                    f"database was seeded with seed={recorded_seed} as_of={_describe(as_of)}; "
                    f"pass --reset to reseed with {asked}"
                )
        before = await _counts(conn)

        clock = _Clock(as_of, plan.days)
        claims = _claims(plan, clock)
        verifications = _verifications(plan, claims)
        consensus = _consensus(plan, claims, verifications)

        await _insert_missing(conn, _CLAIMS, [c.row for c in claims], report_progress)
        await _insert_missing(
            conn, _VERIFICATIONS, [row for c in claims for row in verifications[c.index]], report_progress
        )
        await _insert_missing(conn, _CONSENSUS, consensus, report_progress)
        await _insert_missing(conn, _TRAINING, _training(plan, claims, as_of), report_progress)
        # Read under the lock: a pair that already has a live checkpoint gets only inactive new versions.
        active = await conn.execute(
            select(_CHECKPOINTS.c.model_name, _CHECKPOINTS.c.framework).where(_CHECKPOINTS.c.is_active)
        )
        already_active = {(name, framework) for name, framework in active}
        await _insert_missing(conn, _CHECKPOINTS, _checkpoints(plan, as_of, already_active), report_progress)
        await _insert_missing(conn, _SERVICES, _service_health(plan, as_of), report_progress)
        audit = run_record + _audit(plan.seed, claims, verifications, consensus)
        await _insert_missing(conn, _AUDIT, audit, report_progress)
        await _insert_missing_ai_calls(conn, _ai_calls(plan, clock), report_progress)
        await _upsert_reports(conn, plan, as_of, report_progress)

        after = await _counts(conn)
    from persistence.ai_calls.rollups import fold_rollups

    await fold_rollups(engine)  # the seeded calls' usage into the hourly rollups
    return SeedReport(before=before, after=after, seed=plan.seed, as_of=as_of)
