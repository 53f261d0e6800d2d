"""factory-boy factories for every table, plus `create`/`create_batch` to persist them in async tests.

Factories use the build strategy (objects in memory); an `AsyncSession` cannot be driven by
factory-boy's synchronous create strategy, so `await create(ClaimFactory, ...)` saves through the
test's engine (the pytest plugin binds it), and `await create(session, ClaimFactory, ...)` adds to
`session` and flushes. Random values come from factory-boy's generator (and the Faker it seeds), so
`factory.random.reseed_random(n)` reproduces them. Not what follows the wall clock (created_at,
last_heartbeat, report_date, training_batch_id, ...), nor Sequence counters (external_id, version,
instance_id, ...), which count on across a process's tests: pass those explicitly when a test needs
fixed values.
"""

# Over 500 lines on purpose: one short factory per table (19 of them), a catalogue read by table, not a
# knot of concepts; splitting it would scatter what a test author looks up in one place.

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, TypeVar, overload

import factory
import factory.random
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.errors import TransactionError
from persistence.models import (
    AgentExecutionHourly,
    AgentExecutionHourlyDelta,
    AgentExecutionRow,
    AICall,
    AICallKey,
    AICallModelHourly,
    AICallPendingBatch,
    AICallUsageDelta,
    AICallUsageHourly,
    ApiKey,
    AuditLog,
    BillingData,
    BillingPeriod,
    BillingValidation,
    Claim,
    Company,
    CompanyQuota,
    ConsensusDecision,
    CostAccuracyValidation,
    CostAlert,
    CostAlertFiring,
    CostAlertLog,
    ModelCheckpoint,
    PlatformEventRow,
    Quota,
    QuotaCounter,
    QuotaHold,
    QuotaReservation,
    RateLimitConfig,
    RateLimitReset,
    RateLimitSlot,
    RateLimitState,
    ReconciliationReport,
    RequestHistory,
    RequestInflight,
    RequestStatsDaily,
    RequestStatsDelta,
    RequestTransition,
    Result,
    ResultCacheEntry,
    ResultChunk,
    ServiceHealth,
    TenantCostEventRow,
    TenantCostHourly,
    TenantCostHourlyDelta,
    TrainingData,
    Usage,
    User,
    VendorPrice,
    VerificationResult,
)
from persistence.repository.base import MappedModel
from persistence.seeding import (
    CLAIM_TYPES,
    FRAMEWORKS,
    MODEL_CATALOG,
    SERVICES,
    Verdict,
    call_cost,
    checkpoint_version,
    claim_sentence,
    decide_consensus,
    model_spec,
    raw_usage,
)
from persistence.transaction import session_scope

__all__ = [
    "AICallFactory",
    "AICallKeyFactory",
    "AICallModelHourlyFactory",
    "AICallPendingBatchFactory",
    "AICallUsageDeltaFactory",
    "AICallUsageHourlyFactory",
    "AgentExecutionHourlyDeltaFactory",
    "AgentExecutionHourlyFactory",
    "AgentExecutionRowFactory",
    "ApiKeyFactory",
    "AuditLogFactory",
    "BillingDataFactory",
    "BillingPeriodFactory",
    "BillingValidationFactory",
    "ClaimFactory",
    "CompanyFactory",
    "CompanyQuotaFactory",
    "ConsensusDecisionFactory",
    "CostAccuracyValidationFactory",
    "CostAlertFactory",
    "CostAlertFiringFactory",
    "CostAlertLogFactory",
    "ModelCheckpointFactory",
    "ModelFactory",
    "PlatformEventRowFactory",
    "QuotaCounterFactory",
    "QuotaFactory",
    "QuotaHoldFactory",
    "QuotaReservationFactory",
    "RateLimitConfigFactory",
    "RateLimitResetFactory",
    "RateLimitSlotFactory",
    "RateLimitStateFactory",
    "ReconciliationReportFactory",
    "RequestHistoryFactory",
    "RequestInflightFactory",
    "RequestStatsDailyFactory",
    "RequestStatsDeltaFactory",
    "RequestTransitionFactory",
    "ResultCacheEntryFactory",
    "ResultChunkFactory",
    "ResultFactory",
    "ServiceHealthFactory",
    "TenantCostEventRowFactory",
    "TenantCostHourlyDeltaFactory",
    "TenantCostHourlyFactory",
    "TrainingDataFactory",
    "UsageFactory",
    "UserFactory",
    "VendorPriceFactory",
    "VerificationResultFactory",
    "bind_engine",
    "create",
    "create_batch",
]

ModelT = TypeVar("ModelT", bound=MappedModel)
T = TypeVar("T")


class ModelFactory(factory.Factory[T]):
    """Base of every factory here (and of a service's own): calling it is typed as what it builds, so
    `ClaimFactory(claim_type="legal")` is a `Claim` to mypy (types-factory-boy types the call as the
    factory). The build strategy: an unsaved instance; `await create(...)` saves one."""

    class Meta:
        abstract = True

    if TYPE_CHECKING:

        def __new__(cls, *args: Any, **kwargs: Any) -> T: ...  # type: ignore[misc]


_engines: list[AsyncEngine] = []


@contextlib.contextmanager
def bind_engine(engine: AsyncEngine) -> Iterator[AsyncEngine]:
    """Make `engine` the one `create(Factory, ...)` uses without a session (the pytest plugin's
    `engine` fixture binds the test's engine for the test's duration)."""
    _engines.append(engine)
    try:
        yield engine
    finally:
        _engines.remove(engine)


def _bound_engine() -> AsyncEngine:
    if not _engines:
        raise TransactionError(
            "create(Factory, ...) without a session needs the test's engine: use the pytest plugin's "
            "`engine` fixture (or bind_engine(engine)), or pass a session first"
        )
    return _engines[-1]


async def _persist(session: AsyncSession | None, objs: list[ModelT]) -> None:
    if session is not None:
        session.add_all(objs)
        await session.flush()
        return
    # The current transaction() block's session, or a short transaction of its own (a savepoint
    # under the isolating fixture).
    async with session_scope(_bound_engine()) as scoped:
        scoped.add_all(objs)
        await scoped.flush()


@overload
async def create(factory_class: type[factory.Factory[ModelT]], /, **overrides: Any) -> ModelT: ...


@overload
async def create(
    session: AsyncSession, factory_class: type[factory.Factory[ModelT]], /, **overrides: Any
) -> ModelT: ...


async def create(
    first: AsyncSession | type[factory.Factory[ModelT]],
    factory_class: type[factory.Factory[ModelT]] | None = None,
    /,
    **overrides: Any,
) -> ModelT:
    """Build one object with `overrides`, add it (and its sub-factory objects) and flush.

    `create(Factory, ...)` saves it through the test's engine (in the current `transaction()` block
    if there is one); `create(session, Factory, ...)` adds it to `session`.
    """
    session, cls = _split(first, factory_class)
    obj = cls.build(**overrides)
    await _persist(session, [obj])
    return obj


@overload
async def create_batch(
    factory_class: type[factory.Factory[ModelT]], size: int, /, **overrides: Any
) -> list[ModelT]: ...


@overload
async def create_batch(
    session: AsyncSession, factory_class: type[factory.Factory[ModelT]], size: int, /, **overrides: Any
) -> list[ModelT]: ...


async def create_batch(
    first: AsyncSession | type[factory.Factory[ModelT]],
    second: type[factory.Factory[ModelT]] | int,
    size: int | None = None,
    /,
    **overrides: Any,
) -> list[ModelT]:
    """Build `size` objects with the same `overrides`, add them and flush once (with or without a
    session first, as `create`)."""
    if isinstance(second, int):
        session, cls = _split(first, None)
        count = second
    else:
        session, cls = _split(first, second)
        if size is None:
            raise TypeError("create_batch(session, Factory, size, ...) needs a size")
        count = size
    objs = cls.build_batch(count, **overrides)
    await _persist(session, objs)
    return objs


def _split(
    first: AsyncSession | type[factory.Factory[ModelT]], second: type[factory.Factory[ModelT]] | None
) -> tuple[AsyncSession | None, type[factory.Factory[ModelT]]]:
    if isinstance(first, type):
        if second is not None:
            raise TypeError("create(Factory, ...) takes the factory first and no second factory")
        return None, first
    if second is None:
        raise TypeError("create(session, Factory, ...) needs a factory after the session")
    return first, second


def _rand() -> Any:
    # factory-boy's shared generator: reseed_random() reproduces every random value below.
    return factory.random.randgen


def _now() -> datetime:
    return datetime.now(UTC)


def _recently(max_seconds: int = 3600) -> datetime:
    return _now() - timedelta(seconds=_rand().randint(0, max_seconds))


def _confidence(low: float = 0.5, high: float = 0.99) -> float:
    return round(float(_rand().uniform(low, high)), 4)


def _hex(bits: int) -> str:
    return f"{_rand().getrandbits(bits):0{bits // 4}x}"


def _claim_content(claim_type: str | None) -> str:
    """A real-looking sentence for the seed's claim types; any other type (the column takes any) gets
    a generic one instead of an error."""
    if claim_type is None or claim_type in CLAIM_TYPES:
        return claim_sentence(_rand(), claim_type)
    return f"A {claim_type} claim: {claim_sentence(_rand())}"


class ClaimFactory(ModelFactory[Claim]):
    class Meta:
        model = Claim

    class Params:
        submitted_by: factory.Faker[Any, str] = factory.Faker("user_name")

    external_id = factory.Sequence(lambda n: f"claim-{n:06d}")
    claim_type = factory.LazyFunction(lambda: _rand().choice(CLAIM_TYPES))
    content: factory.LazyAttribute[Any, str] = factory.LazyAttribute(lambda o: _claim_content(o.claim_type))
    source: factory.Faker[Any, str] = factory.Faker("url")
    metadata_: factory.LazyAttribute[Any, dict[str, Any]] = factory.LazyAttribute(
        lambda o: {
            "language": "en",
            "priority": _rand().choice(("low", "normal", "high")),
            "submitted_by": o.submitted_by,
        }
    )
    created_at = factory.LazyFunction(_recently)


def _verification_result(valid: bool) -> dict[str, Any]:
    supporting = _rand().randint(1, 4) if valid else _rand().randint(0, 1)
    total = supporting + _rand().randint(0, 2)
    return {
        "valid": valid,
        "verdict": "supported" if valid else "refuted",
        "reasoning": f"{supporting} of {max(total, 1)} sources support the claim.",
    }


class VerificationResultFactory(ModelFactory[VerificationResult]):
    class Meta:
        model = VerificationResult

    # Verifications name the claim by its external id (no foreign key in the schema).
    claim_id = factory.Sequence(lambda n: f"claim-{n:06d}")
    framework = factory.LazyFunction(lambda: _rand().choice(FRAMEWORKS))
    result = factory.LazyFunction(lambda: _verification_result(_rand().random() < 0.6))
    confidence = factory.LazyFunction(lambda: _confidence(0.55, 0.98))
    evidence = factory.LazyFunction(
        lambda: {
            "sources": [f"https://www.reuters.com/article/{_hex(40)}" for _ in range(_rand().randint(1, 3))]
        }
    )
    processing_time_ms = factory.LazyFunction(lambda: _rand().randint(80, 4500))
    model_version = factory.LazyFunction(lambda: f"1.{_rand().randint(0, 4)}.{_rand().randint(0, 9)}")
    created_at = factory.LazyFunction(_recently)
    updated_at: factory.SelfAttribute[Any, datetime] = factory.SelfAttribute("created_at")


def _votes() -> dict[str, dict[str, Any]]:
    frameworks = _rand().sample(FRAMEWORKS, 3)
    return {
        fw: {"valid": _rand().random() < 0.65, "confidence": _confidence(0.55, 0.98)} for fw in frameworks
    }


def _verdict(votes: dict[str, dict[str, Any]]) -> Verdict:
    return decide_consensus([(v["valid"], v["confidence"]) for v in votes.values()])


class ConsensusDecisionFactory(ModelFactory[ConsensusDecision]):
    """The decision is computed from `participating_frameworks`, so overriding the votes keeps it consistent."""

    class Meta:
        model = ConsensusDecision

    class Params:
        verdict: factory.LazyAttribute[Any, Verdict] = factory.LazyAttribute(
            lambda o: _verdict(o.participating_frameworks)
        )

    claim_id = factory.Sequence(lambda n: f"claim-{n:06d}")
    participating_frameworks = factory.LazyFunction(_votes)
    consensus_result: factory.LazyAttribute[Any, dict[str, Any]] = factory.LazyAttribute(
        lambda o: {
            "valid": o.verdict.valid,
            "verdict": "supported" if o.verdict.valid else "refuted",
            "votes_for": o.verdict.votes_for,
            "votes_against": o.verdict.votes_against,
        }
    )
    consensus_type: factory.LazyAttribute[Any, str] = factory.LazyAttribute(
        lambda o: o.verdict.consensus_type
    )
    consensus_confidence: factory.LazyAttribute[Any, float] = factory.LazyAttribute(
        lambda o: o.verdict.confidence
    )
    decision_time_ms = factory.LazyFunction(lambda: _rand().randint(15, 400))
    created_at = factory.LazyFunction(_recently)


class TrainingDataFactory(ModelFactory[TrainingData]):
    """An example linked to a new claim; `create` persists the claim with it (relationship cascade)."""

    class Meta:
        model = TrainingData

    class Params:
        # TrainingDataFactory.build(used=True): already consumed by a training batch.
        used: factory.Trait[TrainingData] = factory.Trait(
            used_in_training=True,
            training_batch_id=factory.LazyAttribute(lambda o: f"tb-{o.framework}-{_now():%Gw%V}"),
        )

    claim: factory.SubFactory[Any, Claim] = factory.SubFactory(ClaimFactory)
    framework = factory.LazyFunction(lambda: _rand().choice(FRAMEWORKS))
    claim_text: factory.LazyAttribute[Any, str] = factory.LazyAttribute(
        lambda o: o.claim.content if o.claim is not None else claim_sentence(_rand())
    )
    evidence = factory.LazyFunction(
        lambda: {
            "sources": [f"https://www.nature.com/articles/{_hex(32)}"],
            "label_source": _rand().choice(("human_review", "consensus", "expert_panel")),
        }
    )
    validity = factory.LazyFunction(lambda: _rand().random() < 0.55)
    confidence = factory.LazyFunction(lambda: _confidence(0.7, 1.0))
    metadata_ = factory.LazyFunction(
        lambda: {"annotator": f"annotator-{_rand().randint(1, 24):02d}", "split": "train"}
    )
    used_in_training = False
    training_batch_id = None
    created_at = factory.LazyFunction(_recently)


class ModelCheckpointFactory(ModelFactory[ModelCheckpoint]):
    """Inactive by default: the schema allows one active checkpoint per (model_name, framework)."""

    class Meta:
        model = ModelCheckpoint

    model_name = factory.LazyFunction(lambda: _rand().choice(("claim-verifier", "evidence-ranker")))
    framework = factory.LazyFunction(lambda: _rand().choice(FRAMEWORKS))
    version: factory.LazyAttributeSequence[Any, str] = factory.LazyAttributeSequence(
        lambda o, n: checkpoint_version(n, o.framework or "any")
    )
    checkpoint_path: factory.LazyAttribute[Any, str] = factory.LazyAttribute(
        lambda o: f"s3://brahminykite-models/{o.model_name}/{o.framework}/{o.version}/model.safetensors"
    )
    metrics = factory.LazyFunction(
        lambda: {
            "accuracy": _confidence(0.75, 0.95),
            "f1": _confidence(0.72, 0.94),
            "eval_loss": _confidence(0.3, 0.7),
        }
    )
    training_config = factory.LazyFunction(
        lambda: {
            "base_model": "microsoft/deberta-v3-large",
            "learning_rate": _rand().choice((1e-5, 2e-5, 3e-5)),
            "epochs": _rand().randint(2, 5),
            "batch_size": _rand().choice((16, 32, 64)),
        }
    )
    is_active = False
    created_at = factory.LazyFunction(lambda: _recently(30 * 86_400))


class ServiceHealthFactory(ModelFactory[ServiceHealth]):
    class Meta:
        model = ServiceHealth

    class Params:
        host: factory.Faker[Any, str] = factory.Faker("hostname")

    service_name = factory.LazyFunction(lambda: _rand().choice(SERVICES))
    instance_id: factory.LazyAttributeSequence[Any, str] = factory.LazyAttributeSequence(
        lambda o, n: f"{o.service_name}-{_hex(40)}-{n:05d}"
    )
    status = "healthy"
    last_heartbeat = factory.LazyFunction(lambda: _recently(30))
    metadata_: factory.LazyAttribute[Any, dict[str, Any]] = factory.LazyAttribute(
        lambda o: {
            "version": f"2.{_rand().randint(10, 14)}.{_rand().randint(0, 9)}",
            "host": o.host,
            "uptime_seconds": _rand().randint(60, 14 * 86_400),
        }
    )
    created_at = factory.LazyFunction(lambda: _recently(86_400))


class AuditLogFactory(ModelFactory[AuditLog]):
    class Meta:
        model = AuditLog

    class Params:
        ip: factory.Faker[Any, str] = factory.Faker("ipv4_private")

    entity_type = "claim"
    entity_id = factory.Sequence(lambda n: f"claim-{n:06d}")
    action = "insert"
    user_id: factory.Faker[Any, str] = factory.Faker("user_name")
    changes: factory.LazyAttribute[Any, dict[str, Any]] = factory.LazyAttribute(
        lambda o: {"external_id": [None, o.entity_id], "content": [None, claim_sentence(_rand())]}
    )
    metadata_: factory.LazyAttribute[Any, dict[str, Any]] = factory.LazyAttribute(
        lambda o: {"request_id": str(uuid.UUID(int=_rand().getrandbits(128), version=4)), "ip": o.ip}
    )
    created_at = factory.LazyFunction(_recently)


def _tokens(median: int, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, int(_rand().lognormvariate(0, sigma) * median)))


class AICallFactory(ModelFactory[AICall]):
    """A ledger row: provider follows the model, cost is the model's list price for the tokens (Decimal)."""

    class Meta:
        model = AICall

    model = factory.LazyFunction(
        lambda: _rand().choices(MODEL_CATALOG, weights=[m.traffic_weight for m in MODEL_CATALOG])[0].model
    )
    provider: factory.LazyAttribute[Any, str] = factory.LazyAttribute(lambda o: model_spec(o.model).provider)
    input_tokens: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: _tokens(model_spec(o.model).median_input, 0.8, 12, 120_000)
    )
    output_tokens: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: _tokens(model_spec(o.model).median_output, 0.7, 1, 8_192)
    )
    # About a third of calls read a cached prompt prefix (disjoint from `input_tokens`).
    cache_read_tokens: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: (
            int(o.input_tokens * _rand().uniform(0.3, 2.0))
            if o.provider != "cohere" and _rand().random() < 0.35  # Cohere reports no cache
            else 0
        )
    )
    cache_write_tokens = 0
    reasoning_tokens = 0
    usage: factory.LazyAttribute[Any, dict[str, Any]] = factory.LazyAttribute(
        lambda o: raw_usage(
            o.provider, o.input_tokens, o.output_tokens, o.cache_read_tokens, o.cache_write_tokens
        )
    )
    cost_usd: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: call_cost(
            o.model, o.input_tokens, o.output_tokens, o.cache_read_tokens, o.cache_write_tokens
        )
    )
    latency_ms: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: (
            model_spec(o.model).base_latency_ms
            + int(Decimal(o.output_tokens) * model_spec(o.model).ms_per_output_token)
        )
    )
    customer_id = factory.LazyFunction(lambda: f"cust_{_rand().randint(1, 40):04d}")
    organization_id = factory.LazyFunction(
        lambda: _rand().choice(("acme-corp", "globex", "initech", "hooli"))
    )
    product_id = factory.LazyFunction(lambda: _rand().choice(("claim-verifier", "fact-check-api", "chatbot")))
    environment = "production"
    request_id = factory.LazyFunction(lambda: f"req_{_hex(96)}")
    trace_id = factory.LazyFunction(lambda: _hex(128))
    created_at = factory.LazyFunction(_recently)


_CENT = Decimal("0.01")


def _last_monday() -> date:
    today = _now().date()
    return today - timedelta(days=today.weekday())


def _report_stats() -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = {}
    for spec in MODEL_CATALOG[:4]:
        calls = _rand().randint(200, 2_000)
        tokens = calls * _rand().randint(900, 2_500)
        cost = call_cost(spec.model, tokens * 3 // 4, tokens // 4)
        entry = stats.setdefault(spec.provider, {"calls": 0, "tokens": 0, "cost_usd": "0"})
        entry["calls"] += calls
        entry["tokens"] += tokens
        entry["cost_usd"] = str(Decimal(entry["cost_usd"]) + cost)
    return stats


class ReconciliationReportFactory(ModelFactory[ReconciliationReport]):
    """A weekly report (Monday to Monday) whose totals match its provider_stats and pass the 2% gate."""

    class Meta:
        model = ReconciliationReport

    report_date = factory.Sequence(lambda n: _last_monday() - timedelta(weeks=n))
    period_end: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: datetime(o.report_date.year, o.report_date.month, o.report_date.day, tzinfo=UTC)
    )
    period_start: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: o.period_end - timedelta(days=7)
    )
    provider_stats = factory.LazyFunction(_report_stats)
    total_calls: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: sum(p["calls"] for p in o.provider_stats.values())
    )
    total_tokens: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: sum(p["tokens"] for p in o.provider_stats.values())
    )
    total_cost_usd: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: sum((Decimal(p["cost_usd"]) for p in o.provider_stats.values()), Decimal(0)).quantize(
            _CENT, ROUND_HALF_UP
        )
    )
    revenium_calls: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: o.total_calls - o.total_calls * _rand().randint(0, 40) // 10_000
    )
    revenium_cost_usd: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: (o.total_cost_usd * (1 - Decimal(_rand().randint(0, 40)) / 10_000)).quantize(
            _CENT, ROUND_HALF_UP
        )
    )
    variance_pct: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: (
            (Decimal(o.total_calls - o.revenium_calls) * 100 / Decimal(o.total_calls)).quantize(
                _CENT, ROUND_HALF_UP
            )
            if o.total_calls
            else Decimal(0)
        )
    )
    status: factory.LazyAttribute[Any, str] = factory.LazyAttribute(
        lambda o: "PASS" if o.variance_pct < 2 else "FAIL"
    )
    generated_at: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: o.period_end + timedelta(hours=9)
    )


class AICallKeyFactory(ModelFactory[AICallKey]):
    """An idempotency key row (what `AICallLogger` writes beside each call)."""

    class Meta:
        model = AICallKey

    organization_id = "acme-corp"
    idempotency_key = factory.Sequence(lambda n: f"openai:req_{n:08d}")
    call_id = factory.Sequence(lambda n: n + 1)
    call_created_at = factory.LazyFunction(_recently)
    payload_hash = factory.LazyFunction(lambda: _rand().getrandbits(256).to_bytes(32, "big"))


class AICallPendingBatchFactory(ModelFactory[AICallPendingBatch]):
    """An id range `log_batch` wrote and no fold has aggregated yet."""

    class Meta:
        model = AICallPendingBatch

    first_id = factory.Sequence(lambda n: n * 1000 + 1)
    last_id: factory.LazyAttribute[Any, int] = factory.LazyAttribute(lambda o: o.first_id + 999)


class VendorPriceFactory(ModelFactory[VendorPrice]):
    """A global price for a made-up model (so it never overlaps the prices migration 0003 loads)."""

    class Meta:
        model = VendorPrice

    provider = "acme-ai"
    model = factory.Sequence(lambda n: f"acme-model-{n}")
    tenant_id = ""
    input_per_mtok = factory.LazyFunction(lambda: Decimal(_rand().randint(10, 5000)) / 100)
    output_per_mtok: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: o.input_per_mtok * 4
    )
    cache_read_per_mtok: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: o.input_per_mtok / 10
    )
    cache_write_per_mtok: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: o.input_per_mtok * Decimal("1.25")
    )
    reasoning_per_mtok: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: o.output_per_mtok
    )
    effective_from = factory.LazyFunction(lambda: datetime(2025, 1, 1, tzinfo=UTC))
    effective_to = None
    source = "factory"


def _hour() -> datetime:
    return _recently(7 * 24 * 3600).replace(minute=0, second=0, microsecond=0)


class _RollupMeasures(ModelFactory[Any]):
    """Consistent measures: totals add up, cost follows the model's list price."""

    class Meta:
        abstract = True

    hour = factory.LazyFunction(_hour)
    model = factory.LazyFunction(
        lambda: _rand().choices(MODEL_CATALOG, weights=[m.traffic_weight for m in MODEL_CATALOG])[0].model
    )
    provider: factory.LazyAttribute[Any, str] = factory.LazyAttribute(lambda o: model_spec(o.model).provider)
    calls = factory.LazyFunction(lambda: _rand().randint(1, 400))
    error_calls: factory.LazyAttribute[Any, int] = factory.LazyAttribute(lambda o: o.calls // 50)
    input_tokens: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: o.calls * model_spec(o.model).median_input
    )
    output_tokens: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: o.calls * model_spec(o.model).median_output
    )
    cache_read_tokens = 0
    cache_write_tokens = 0
    reasoning_tokens = 0
    total_tokens: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: o.input_tokens + o.output_tokens
    )
    cost_usd: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: call_cost(o.model, o.input_tokens, o.output_tokens)
    )
    computed_cost_usd: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(lambda o: o.cost_usd)
    latency_ms_sum: factory.LazyAttribute[Any, int] = factory.LazyAttribute(
        lambda o: o.calls * model_spec(o.model).base_latency_ms
    )
    latency_count: factory.LazyAttribute[Any, int] = factory.LazyAttribute(lambda o: o.calls)


class AICallModelHourlyFactory(_RollupMeasures):
    class Meta:
        model = AICallModelHourly


class AICallUsageHourlyFactory(_RollupMeasures):
    class Meta:
        model = AICallUsageHourly

    organization_id = "acme-corp"
    customer_id = factory.LazyFunction(lambda: f"cust_{_rand().randint(1, 40):04d}")
    product_id = "chatbot"
    environment = "production"


class AICallUsageDeltaFactory(AICallUsageHourlyFactory):
    class Meta:
        model = AICallUsageDelta


class CostAlertFactory(ModelFactory[CostAlert]):
    """An alert rule: one organization's daily spend, two amount thresholds."""

    class Meta:
        model = CostAlert

    name = factory.Sequence(lambda n: f"alert-{n:04d}")
    scope = "organization"
    scope_value = "acme-corp"
    period = "daily"
    time_zone = "UTC"
    threshold_kind = "amount"
    thresholds = factory.LazyFunction(lambda: [Decimal(50), Decimal(100)])
    budget_usd = None
    channels = factory.LazyFunction(lambda: ["default"])
    enabled = True


class CostAlertFiringFactory(ModelFactory[CostAlertFiring]):
    """Today's (UTC) first threshold of a new rule, crossed."""

    class Meta:
        model = CostAlertFiring

    alert: factory.SubFactory[Any, CostAlert] = factory.SubFactory(CostAlertFactory)
    window_start = factory.LazyFunction(lambda: _now().replace(hour=0, minute=0, second=0, microsecond=0))
    window_end: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: o.window_start + timedelta(days=1)
    )
    threshold = Decimal(50)
    threshold_usd: factory.SelfAttribute[Any, Decimal] = factory.SelfAttribute("threshold")
    spend_usd: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(
        lambda o: o.threshold + Decimal("1.25")
    )
    fired_at = factory.LazyFunction(_now)


class CostAlertLogFactory(ModelFactory[CostAlertLog]):
    """A notification waiting in the outbox for its first delivery attempt."""

    class Meta:
        model = CostAlertLog

    firing: factory.SubFactory[Any, CostAlertFiring] = factory.SubFactory(CostAlertFiringFactory)
    kind = "outbox"
    channel = "default"
    status = "pending"
    attempt = 0
    idempotency_key = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    payload = factory.LazyFunction(lambda: {"event": "cost_alert.threshold_crossed"})
    next_attempt_at = factory.LazyFunction(_now)


class RateLimitConfigFactory(ModelFactory[RateLimitConfig]):
    """One company's request rate: a per-minute limit with a burst."""

    class Meta:
        model = RateLimitConfig

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    scope = "company"
    scope_id = ""
    metric = "requests"
    period = "minute"
    limit_value = factory.LazyFunction(lambda: Decimal(_rand().randint(10, 1000)))
    burst: factory.LazyAttribute[Any, Decimal] = factory.LazyAttribute(lambda o: o.limit_value * 2)
    enabled = True


class RateLimitStateFactory(ModelFactory[RateLimitState]):
    """One company's per-minute request counter, a few requests into its burst (tat a little ahead)."""

    class Meta:
        model = RateLimitState

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    scope = "company"
    subject: factory.LazyAttribute[Any, str] = factory.LazyAttribute(lambda o: o.company_id)
    metric = "requests"
    period = "minute"
    tat = factory.LazyFunction(lambda: Decimal(int(_now().timestamp())) + Decimal(_rand().randint(1, 30)))


class RateLimitSlotFactory(ModelFactory[RateLimitSlot]):
    """A user's concurrency slot held for a minute."""

    class Meta:
        model = RateLimitSlot

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    scope = "user"
    subject = factory.Sequence(lambda n: f"user-{n:04d}")
    slot = 0
    holder = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    expires_at = factory.LazyFunction(lambda: _now() + timedelta(minutes=1))


class CompanyQuotaFactory(ModelFactory[CompanyQuota]):
    """One company's monthly spend quota, in USD, in a named time zone."""

    class Meta:
        model = CompanyQuota

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    metric = "cost_usd"
    period = "monthly"
    time_zone = "Europe/Paris"
    limit_value = factory.LazyFunction(lambda: Decimal(_rand().randint(100, 500_000)) / 100)
    enabled = True


class CompanyFactory(ModelFactory[Company]):
    """A tenant on the basic tier."""

    class Meta:
        model = Company

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    name: factory.LazyAttribute[Any, str] = factory.LazyAttribute(lambda o: o.company_id.title())
    tier = "basic"
    active = True


class UserFactory(ModelFactory[User]):
    """A user of a new company; `create` persists the company with it."""

    class Meta:
        model = User

    company: factory.SubFactory[Any, Company] = factory.SubFactory(CompanyFactory)
    company_id: factory.SelfAttribute[Any, str] = factory.SelfAttribute("company.company_id")
    user_id = factory.Sequence(lambda n: f"user-{n:05d}")
    name: factory.Faker[Any, str] = factory.Faker("name")
    email: factory.LazyAttribute[Any, str] = factory.LazyAttribute(lambda o: f"{o.user_id}@example.com")
    active = True


class ApiKeyFactory(ModelFactory[ApiKey]):
    """A company-wide key's row with a random hash: a row, not a usable key (no raw key exists for
    it); `persistence.api_keys.ApiKeys.create` issues usable ones."""

    class Meta:
        model = ApiKey

    company: factory.SubFactory[Any, Company] = factory.SubFactory(CompanyFactory)
    company_id: factory.SelfAttribute[Any, str] = factory.SelfAttribute("company.company_id")
    key_id = factory.Sequence(lambda n: f"factorykey{n:06d}")
    user_id = None
    name = "factory key"
    environment = "test"
    secret_hash = factory.LazyFunction(lambda: _rand().randbytes(32))
    display_prefix: factory.LazyAttribute[Any, str] = factory.LazyAttribute(lambda o: f"sk_test_{o.key_id}_")
    scopes = factory.LazyFunction(lambda: ["read"])
    expires_at = None
    revoked_at = None
    last_used_at = None
    rotated_from = None


def _last_month() -> datetime:
    first = _now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)


class BillingPeriodFactory(ModelFactory[BillingPeriod]):
    """Last month (UTC) of one provider, in its late-data window."""

    class Meta:
        model = BillingPeriod

    provider = factory.Sequence(lambda n: f"vendor-{n}")
    period_start = factory.LazyFunction(_last_month)
    period_end: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: (o.period_start + timedelta(days=32)).replace(day=1)
    )
    grace_ends_at: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: o.period_end + timedelta(days=35)
    )
    state = "grace"
    grace_at: factory.SelfAttribute[Any, datetime] = factory.SelfAttribute("period_end")
    closed_at = None


class BillingDataFactory(ModelFactory[BillingData]):
    """One billed day of a model, in its period."""

    class Meta:
        model = BillingData

    period: factory.SubFactory[Any, BillingPeriod] = factory.SubFactory(BillingPeriodFactory)
    kind = "usage"
    provider: factory.SelfAttribute[Any, str] = factory.SelfAttribute("period.provider")
    model = "acme-large"
    day: factory.LazyAttribute[Any, date] = factory.LazyAttribute(lambda o: o.period.period_start.date())
    amount_usd = factory.LazyFunction(lambda: Decimal(_rand().randint(1, 10_000_000)) / 1_000_000)
    calls = factory.LazyFunction(lambda: _rand().randint(1, 500))
    tokens = None
    source = "factory"
    external_id = factory.Sequence(lambda n: f"bill-line-{n}")


class BillingValidationFactory(ModelFactory[BillingValidation]):
    """A period's validation that found it as billed."""

    class Meta:
        model = BillingValidation

    period: factory.SubFactory[Any, BillingPeriod] = factory.SubFactory(BillingPeriodFactory)
    period_state: factory.SelfAttribute[Any, str] = factory.SelfAttribute("period.state")
    billed_usd = Decimal("12.500000")
    ledger_usd: factory.SelfAttribute[Any, Decimal] = factory.SelfAttribute("billed_usd")
    ledger_calls = 40
    variance_usd = Decimal(0)
    absolute_tolerance_usd = Decimal("0.01")
    relative_tolerance_pct = Decimal(0)
    verdict = "ok"
    lines: factory.LazyFunction[list[Any]] = factory.LazyFunction(list)


class CostAccuracyValidationFactory(ModelFactory[CostAccuracyValidation]):
    """Yesterday (UTC) of one model in a one-day run: every compared call within tolerance."""

    class Meta:
        model = CostAccuracyValidation

    period_start = factory.LazyFunction(
        lambda: _now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    )
    period_end: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: o.period_start + timedelta(days=1)
    )
    provider = "openai"
    model = factory.Sequence(lambda n: f"model-{n}")
    day: factory.LazyAttribute[Any, date] = factory.LazyAttribute(lambda o: o.period_start.date())
    calls = 10
    compared_calls = 10
    computed_only_calls = 0
    unpriced_calls = 0
    calls_over_tolerance = 0
    computed_cost_usd = Decimal("0.250000000000")
    provided_cost_usd: factory.SelfAttribute[Any, Decimal] = factory.SelfAttribute("computed_cost_usd")
    variance_usd = Decimal(0)
    abs_variance_usd = Decimal(0)
    variance_pct = Decimal(0)
    absolute_tolerance_usd = Decimal("0.000001")
    relative_tolerance_pct = Decimal(0)
    verdict = "ok"
    worst_calls: factory.LazyFunction[list[Any]] = factory.LazyFunction(list)


def _month_start() -> datetime:
    return _now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class QuotaFactory(ModelFactory[Quota]):
    """One user's monthly quota at seed 001's basic tier."""

    class Meta:
        model = Quota

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    user_id = factory.Sequence(lambda n: f"user-{n:04d}")
    tier = "basic"
    request_limit = 1_000
    token_limit = 100_000
    cost_limit_usd = None
    reset_frequency = "monthly"
    time_zone = "UTC"
    enabled = True


class QuotaCounterFactory(ModelFactory[QuotaCounter]):
    """This month's (UTC) token counter of one user, partly used."""

    class Meta:
        model = QuotaCounter

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    scope = "user"
    subject_id = factory.Sequence(lambda n: f"user-{n:04d}")
    metric = "tokens"
    period = "monthly"
    period_start = factory.LazyFunction(_month_start)
    period_end: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: (o.period_start + timedelta(days=32)).replace(day=1)
    )
    used = factory.LazyFunction(lambda: Decimal(_rand().randint(0, 50_000)))
    held = Decimal(0)
    limit_override = None
    version = 0


class QuotaReservationFactory(ModelFactory[QuotaReservation]):
    """An admitted request still holding its estimate (counters are not touched: use `Quotas`)."""

    class Meta:
        model = QuotaReservation

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    id = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    user_id = factory.Sequence(lambda n: f"user-{n:04d}")
    state = "held"
    counter_ids: factory.LazyFunction[list[int]] = factory.LazyFunction(list)
    requests = Decimal(1)
    tokens = Decimal(1_200)
    cost_usd = Decimal("0.012")
    created_at = factory.LazyFunction(_now)
    expires_at: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: o.created_at + timedelta(minutes=5)
    )
    finished_at = None


class QuotaHoldFactory(ModelFactory[QuotaHold]):
    """One reservation's hold on one counter (ids only: there are no foreign keys)."""

    class Meta:
        model = QuotaHold

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    counter_id = factory.Sequence(lambda n: n + 1)
    reservation_id = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    amount = Decimal(1_200)
    expires_at = factory.LazyFunction(lambda: _now() + timedelta(minutes=5))


class RateLimitResetFactory(ModelFactory[RateLimitReset]):
    """An applied manual reset of a user's monthly token counter."""

    class Meta:
        model = RateLimitReset

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    scope = "user"
    subject_id = factory.Sequence(lambda n: f"user-{n:04d}")
    metric = "tokens"
    period = "monthly"
    period_start = factory.LazyFunction(_month_start)
    action = "reset"
    new_limit = None
    expected_version = 0
    applied = True
    previous_used = Decimal(42_000)
    requested_by = "admin@example.com"
    reason = "support ticket"


class UsageFactory(ModelFactory[Usage]):
    """One user's usage in the current UTC month (seed 001's `usage`; written by `Quotas.settle`)."""

    class Meta:
        model = Usage

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    user_id = factory.Sequence(lambda n: f"user-{n:04d}")
    period = "monthly"
    period_start = factory.LazyFunction(lambda: _month_start().date())
    period_end: factory.LazyAttribute[Any, date] = factory.LazyAttribute(
        lambda o: (o.period_start.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    )
    requests_count = 12
    tokens_used = 42_000
    cost_usd = Decimal("0.42")


class RequestInflightFactory(ModelFactory[RequestInflight]):
    """A queued inference request (seed 001); `persistence.requests.Requests` drives the lifecycle."""

    class Meta:
        model = RequestInflight

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    request_id = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    user_id = factory.Sequence(lambda n: f"user-{n:04d}")
    model_id = "gpt-4o"
    prompt = "Translate the following text to French..."
    status = "queued"
    estimated_tokens = 150


class RequestHistoryFactory(ModelFactory[RequestHistory]):
    """A completed inference request, as the finishing statement leaves it in the history."""

    class Meta:
        model = RequestHistory

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    request_id = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    created_at = factory.LazyFunction(lambda: _now() - timedelta(seconds=3))
    user_id = factory.Sequence(lambda n: f"user-{n:04d}")
    model_id = "gpt-4o"
    prompt = "Translate the following text to French..."
    status = "completed"
    queued_at: factory.SelfAttribute[Any, datetime] = factory.SelfAttribute("created_at")
    processing_at: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: o.created_at + timedelta(seconds=1)
    )
    completed_at: factory.LazyAttribute[Any, datetime] = factory.LazyAttribute(
        lambda o: o.processing_at + timedelta(milliseconds=1500)
    )
    updated_at: factory.SelfAttribute[Any, datetime] = factory.SelfAttribute("completed_at")
    processing_time_ms = 1500
    estimated_tokens = 150
    prompt_tokens = 120
    completion_tokens = 80
    total_tokens = 200
    result_sha256 = factory.LazyFunction(lambda: _rand().randbytes(32))
    attempts = 1
    worker_id = "worker-1/00000000-0000-4000-8000-000000000000"


class RequestStatsDailyFactory(ModelFactory[RequestStatsDaily]):
    """One user's day of finished requests of one model."""

    class Meta:
        model = RequestStatsDaily

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    day = factory.LazyFunction(lambda: _now().date())
    user_id = factory.Sequence(lambda n: f"user-{n:04d}")
    model_id = "gpt-4o"
    request_count = 10
    completed_count = 9
    failure_count = 1
    processing_time_ms_sum = 15_000
    processing_time_count = 10
    total_tokens = 2_000


class RequestStatsDeltaFactory(ModelFactory[RequestStatsDelta]):
    """What one finishing statement added: one completed request."""

    class Meta:
        model = RequestStatsDelta

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    day = factory.LazyFunction(lambda: _now().date())
    user_id = factory.Sequence(lambda n: f"user-{n:04d}")
    model_id = "gpt-4o"
    request_count = 1
    completed_count = 1
    processing_time_ms_sum = 1_500
    processing_time_count = 1
    total_tokens = 200


class RequestTransitionFactory(ModelFactory[RequestTransition]):
    """A request's claim, as the claiming statement audits it (revision 0021)."""

    class Meta:
        model = RequestTransition

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    request_id = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    created_at = factory.LazyFunction(lambda: _now() - timedelta(seconds=3))
    at = factory.LazyFunction(_now)
    action = "claim"
    from_status = "queued"
    to_status = "processing"
    attempt = 1
    worker_id = "worker-1/00000000-0000-4000-8000-000000000000"
    lease_id = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))


class ResultFactory(ModelFactory[Result]):
    """A short text result stored inline, addressed by the sha-256 of its UTF-8 bytes."""

    class Meta:
        model = Result

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    inline_text = factory.Sequence(lambda n: f"Le texte traduit en français n° {n}")
    sha256: factory.LazyAttribute[Any, bytes] = factory.LazyAttribute(
        lambda o: hashlib.sha256(o.inline_text.encode()).digest()
    )
    kind = "text"
    mime_type = "text/plain; charset=utf-8"
    size_bytes: factory.LazyAttribute[Any, int] = factory.LazyAttribute(lambda o: len(o.inline_text.encode()))
    inline_bytes = None
    blob_id = None
    chunks = 0


class ResultChunkFactory(ModelFactory[ResultChunk]):
    """One chunk of a large result. Its `results` row (same company and `blob_id`, `chunks` > 0)
    must be written in the same transaction: the foreign key is checked at commit."""

    class Meta:
        model = ResultChunk

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    blob_id = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    seq = 0
    data = factory.LazyFunction(lambda: bytes(_rand().getrandbits(8) for _ in range(64)))


class ResultCacheEntryFactory(ModelFactory[ResultCacheEntry]):
    """A deduplication key claimed by a leader that is still computing its result."""

    class Meta:
        model = ResultCacheEntry

    company_id = factory.Sequence(lambda n: f"company-{n:04d}")
    dedup_key = factory.Sequence(lambda n: hashlib.sha256(f"request {n}".encode()).digest())
    key_version = 1
    leader = factory.LazyFunction(lambda: uuid.UUID(int=_rand().getrandbits(128), version=4))
    lease_until = factory.LazyFunction(lambda: _now() + timedelta(minutes=5))
    result_sha256 = None
    expires_at = None


def _event_id() -> uuid.UUID:
    return uuid.UUID(int=_rand().getrandbits(128), version=4)


class PlatformEventRowFactory(ModelFactory[PlatformEventRow]):
    """A stored platform event (the recorder's `PlatformEvent` is what applications build)."""

    class Meta:
        model = PlatformEventRow

    tenant_id = factory.Sequence(lambda n: f"tenant-{n:04d}")
    time = factory.LazyFunction(_now)
    event_id = factory.LazyFunction(_event_id)
    event_type = "user_query"
    event_category = "user_behavior"
    event_data = factory.LazyFunction(lambda: {"query": "What is diabetes?"})


class TenantCostEventRowFactory(ModelFactory[TenantCostEventRow]):
    class Meta:
        model = TenantCostEventRow

    tenant_id = factory.Sequence(lambda n: f"tenant-{n:04d}")
    time = factory.LazyFunction(_now)
    event_id = factory.LazyFunction(_event_id)
    cost_type = "llm"
    cost_usd = Decimal("0.012")
    quantity = 300
    service = "openai"
    service_tier = "gpt-4"


class AgentExecutionRowFactory(ModelFactory[AgentExecutionRow]):
    class Meta:
        model = AgentExecutionRow

    tenant_id = factory.Sequence(lambda n: f"tenant-{n:04d}")
    time = factory.LazyFunction(_now)
    event_id = factory.LazyFunction(_event_id)
    agent_id = "ask-expert-v1"
    agent_type = "ask_expert"
    execution_time_ms = 2100
    success = True
    quality_score = Decimal("0.92")


class TenantCostHourlyFactory(ModelFactory[TenantCostHourly]):
    """A folded hour of one tenant's cost (written by folds; for tests of readers)."""

    class Meta:
        model = TenantCostHourly

    tenant_id = factory.Sequence(lambda n: f"tenant-{n:04d}")
    hour = factory.LazyFunction(_hour)
    cost_type = "llm"
    service = "openai"
    cost_usd = Decimal("0.012")
    events = 1


class TenantCostHourlyDeltaFactory(TenantCostHourlyFactory):
    class Meta:
        model = TenantCostHourlyDelta


class AgentExecutionHourlyFactory(ModelFactory[AgentExecutionHourly]):
    """A folded hour of one agent's runs (written by folds; for tests of readers)."""

    class Meta:
        model = AgentExecutionHourly

    tenant_id = factory.Sequence(lambda n: f"tenant-{n:04d}")
    agent_id = "ask-expert-v1"
    hour = factory.LazyFunction(_hour)
    runs = 2
    successes = 1
    quality_sum = Decimal("1.84")
    quality_count = 2
    cost_usd = Decimal("0.024")


class AgentExecutionHourlyDeltaFactory(AgentExecutionHourlyFactory):
    class Meta:
        model = AgentExecutionHourlyDelta
