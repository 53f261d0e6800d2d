"""Deterministic generation of seed 004's events: platform events, agent executions, and the cost
events that are not AI calls (embeddings, storage, compute).

Same rules as `generate.py`: each event is a pure function of (plan.seed, as_of, table, index), its
`event_id` is `seed_uuid(table, index)`. Tenants and users are the ledger's seeded organizations and
customers (a customer belongs to one organization), so events and AI calls describe the same
traffic. The AI calls' own cost events are not made here: `write.py` derives them from the seeded
ledger rows (`persistence.events.call_cost_event`, the link `AICallLogger` uses), one per call.
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal
from typing import TypeVar

from persistence.events.records import AgentExecution, CostEvent, EventCategory, PlatformEvent
from persistence.seeding.calls import _CUSTOMER_WEIGHTS, _CUSTOMERS, _ORGANIZATIONS
from persistence.seeding.generate import Clock, row_rng, seed_uuid
from persistence.seeding.plan import SeedPlan

__all__ = ["AGENTS", "make_agent_executions", "make_cost_events", "make_platform_events"]

_MICRO = Decimal("0.000001")

# (event type, category, weight): what a month of a claim-checking product's traffic looks like.
_PLATFORM_TYPES = (
    ("user_query", EventCategory.USER_BEHAVIOR, 32),
    ("page_view", EventCategory.USER_BEHAVIOR, 26),
    ("login", EventCategory.USER_BEHAVIOR, 6),
    ("document_uploaded", EventCategory.USER_BEHAVIOR, 4),
    ("feedback_submitted", EventCategory.USER_BEHAVIOR, 3),
    ("agent_invoked", EventCategory.AGENT_PERFORMANCE, 12),
    ("tool_called", EventCategory.AGENT_PERFORMANCE, 9),
    ("health_check", EventCategory.SYSTEM_HEALTH, 6),
    ("latency_spike", EventCategory.SYSTEM_HEALTH, 1),
    ("provider_rate_limited", EventCategory.SYSTEM_HEALTH, 1),
)
_PLATFORM_WEIGHTS = [w for _, _, w in _PLATFORM_TYPES]
_PAGES = ("/dashboard", "/claims", "/claims/new", "/reports", "/settings", "/billing", "/docs")
_TOOLS = ("web_search", "pubmed_search", "citation_lookup", "calculator", "vector_search")


class _Agent:
    """An agent's traffic share and behaviour: success rate, quality, latency and token ranges."""

    def __init__(
        self, agent_id: str, agent_type: str, weight: int, success: float, quality: float,
        latency: tuple[int, int], tokens: int, cites: bool,
    ) -> None:  # fmt: skip
        self.agent_id = agent_id
        self.agent_type = agent_type
        self.weight = weight
        self.success = success
        self.quality = quality
        self.latency = latency
        self.tokens = tokens
        self.cites = cites


AGENTS = (
    _Agent("ask-expert-v1", "ask_expert", 40, 0.965, 0.88, (1200, 4800), 2400, True),
    _Agent("claim-verifier-v2", "workflow", 25, 0.94, 0.85, (2500, 9000), 5200, True),
    _Agent("research-assistant-v1", "workflow", 12, 0.90, 0.81, (6000, 28000), 14000, True),
    _Agent("doc-summarizer-v1", "custom", 13, 0.985, 0.90, (800, 3200), 3000, False),
    _Agent("content-moderator-v3", "custom", 10, 0.992, 0.93, (150, 900), 600, False),
)
_AGENT_WEIGHTS = [a.weight for a in AGENTS]
_ERRORS = (
    ("TimeoutError: agent exceeded its 30 s budget", 40),
    ("ToolError: search backend unavailable", 25),
    ("ContextLengthExceeded: prompt too long for the model", 15),
    ("RateLimitError: provider rate limit", 15),
    ("ValidationError: output did not match the schema", 5),
)
# A blended LLM price per million tokens, for an execution's own cost summary.
_BLENDED_PER_MTOK = Decimal("3.20")

# (cost type, service, tier, weight, quantity range, USD per unit): the non-LLM costs.
_COSTS = (
    ("embedding", "openai", "text-embedding-3-small", 55, (2_000, 400_000), Decimal("0.00000002")),
    ("embedding", "cohere", "embed-english-v3.0", 10, (2_000, 200_000), Decimal("0.0000001")),
    ("storage", "pinecone", "serverless-read-units", 12, (100, 20_000), Decimal("0.00000825")),
    ("storage", "supabase", "database-gb-hours", 8, (1, 48), Decimal("0.000171")),
    ("compute", "aws", "lambda-gb-seconds", 10, (50, 20_000), Decimal("0.0000166667")),
    ("compute", "azure", "container-vcpu-seconds", 5, (60, 7_200), Decimal("0.000024")),
)
_COST_WEIGHTS = [c[3] for c in _COSTS]


def _subject(rng: random.Random) -> tuple[str, str]:
    """(tenant, user): a Zipf-like customer and the organization it belongs to, as in the ledger."""
    customer = rng.choices(range(len(_CUSTOMERS)), weights=_CUSTOMER_WEIGHTS)[0]
    return _ORGANIZATIONS[customer % len(_ORGANIZATIONS)], _CUSTOMERS[customer]


def _platform_data(rng: random.Random, event_type: str) -> dict[str, object]:
    if event_type == "user_query":
        return {"query_length": rng.randint(8, 400), "mode": rng.choice(("1", "2", "3"))}
    if event_type == "page_view":
        return {"path": rng.choice(_PAGES), "duration_ms": rng.randint(300, 90_000)}
    if event_type == "login":
        return {"method": rng.choices(("password", "sso", "api_key"), weights=(30, 50, 20))[0]}
    if event_type == "document_uploaded":
        return {"size_kb": rng.randint(4, 12_000), "mime": rng.choice(("application/pdf", "text/plain"))}
    if event_type == "feedback_submitted":
        return {"rating": rng.choices((1, 2, 3, 4, 5), weights=(4, 5, 12, 35, 44))[0]}
    if event_type == "agent_invoked":
        return {"agent_id": rng.choices(AGENTS, weights=_AGENT_WEIGHTS)[0].agent_id}
    if event_type == "tool_called":
        return {"tool": rng.choice(_TOOLS), "latency_ms": rng.randint(40, 3000)}
    if event_type == "health_check":
        return {"status": rng.choices(("healthy", "degraded"), weights=(97, 3))[0]}
    if event_type == "latency_spike":
        return {"p95_ms": rng.randint(2_000, 20_000)}
    return {"provider": rng.choice(("openai", "anthropic", "google"))}


def make_platform_events(plan: SeedPlan, clock: Clock) -> list[PlatformEvent]:
    out = []
    for i in range(plan.platform_events):
        rng = row_rng(plan.seed, "platform_events", i)
        event_type, category, _ = rng.choices(_PLATFORM_TYPES, weights=_PLATFORM_WEIGHTS)[0]
        tenant, user = _subject(rng)
        system = category is EventCategory.SYSTEM_HEALTH
        out.append(
            PlatformEvent(
                tenant_id=tenant,
                user_id=None if system else user,
                session_id=None if system else f"sess-{rng.getrandbits(48):012x}",
                event_type=event_type,
                event_category=category,
                event_data=_platform_data(rng, event_type),
                metadata={"seeded": True},
                time=clock.sample(rng),
                event_id=seed_uuid("platform_events", i),
            )
        )
    return _by_time(out)


def _unit(rng: random.Random, mean: float, spread: float) -> Decimal:
    """A score in [0, 1] around `mean`, to 4 places."""
    value = min(1.0, max(0.0, rng.gauss(mean, spread)))
    return Decimal(str(round(value, 4)))


def make_agent_executions(plan: SeedPlan, clock: Clock) -> list[AgentExecution]:
    out = []
    for i in range(plan.agent_executions):
        rng = row_rng(plan.seed, "agent_executions", i)
        agent = rng.choices(AGENTS, weights=_AGENT_WEIGHTS)[0]
        tenant, user = _subject(rng)
        success = rng.random() < agent.success
        low, high = agent.latency
        tokens = max(50, int(rng.lognormvariate(0, 0.6) * agent.tokens))
        hallucinated = success and rng.random() < 0.04
        quality = _unit(rng, agent.quality - (0.25 if hallucinated else 0.0), 0.06) if success else None
        error = None if success else rng.choices([e for e, _ in _ERRORS], weights=[w for _, w in _ERRORS])[0]
        if not success:
            tokens = tokens // rng.randint(2, 6)
        out.append(
            AgentExecution(
                tenant_id=tenant,
                user_id=user,
                agent_id=agent.agent_id,
                agent_type=agent.agent_type,
                execution_time_ms=int(rng.uniform(low, high) * (1.8 if not success else 1.0)),
                success=success,
                quality_score=quality,
                citation_accuracy=_unit(rng, 0.93, 0.05) if success and agent.cites else None,
                hallucination_detected=hallucinated if success else None,
                cost_usd=(Decimal(tokens) * _BLENDED_PER_MTOK / 1_000_000).quantize(_MICRO, ROUND_HALF_UP),
                total_tokens=tokens,
                error_message=error,
                metadata={"seeded": True},
                time=clock.sample(rng),
                event_id=seed_uuid("agent_executions", i),
            )
        )
    return _by_time(out)


def make_cost_events(plan: SeedPlan, clock: Clock) -> list[CostEvent]:
    """The costs that are not AI calls: embeddings, vector and database storage, compute."""
    out = []
    for i in range(plan.cost_events):
        rng = row_rng(plan.seed, "tenant_cost_events", i)
        cost_type, service, tier, _, (low, high), per_unit = rng.choices(_COSTS, weights=_COST_WEIGHTS)[0]
        tenant, user = _subject(rng)
        quantity = int(min(high, max(low, rng.lognormvariate(0, 0.9) * (low + high) / 8)))
        out.append(
            CostEvent(
                tenant_id=tenant,
                user_id=user if cost_type == "embedding" else None,
                cost_type=cost_type,
                cost_usd=(per_unit * quantity).quantize(_MICRO, ROUND_HALF_UP),
                service=service,
                quantity=quantity,
                service_tier=tier,
                metadata={"seeded": True},
                time=clock.sample(rng),
                event_id=seed_uuid("tenant_cost_events", i),
            )
        )
    return _by_time(out)


E = TypeVar("E", PlatformEvent, AgentExecution, CostEvent)


def _by_time(events: list[E]) -> list[E]:
    # In time order, as a live feed arrives (and BRIN ranges stay tight).
    events.sort(key=lambda e: (e.time, e.event_id))
    return events
