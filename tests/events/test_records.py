"""Event models refuse what they could not store, before anything is queued."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from persistence import AgentExecution, CostEvent, CostType, EventCategory, PlatformEvent, ServiceProvider
from persistence.errors import ValidationError
from persistence.events.records import decode_event, encode_event

AT = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)


def platform(**kw: Any) -> PlatformEvent:
    fields: dict[str, Any] = {
        "tenant_id": "t-1",
        "event_type": "user_query",
        "event_category": "user_behavior",
    }
    return PlatformEvent(**{**fields, **kw})


def cost(**kw: Any) -> CostEvent:
    fields: dict[str, Any] = {
        "tenant_id": "t-1",
        "cost_type": "llm",
        "cost_usd": Decimal("0.5"),
        "service": "openai",
    }
    return CostEvent(**{**fields, **kw})


def run(**kw: Any) -> AgentExecution:
    fields: dict[str, Any] = {
        "tenant_id": "t-1",
        "agent_id": "a-1",
        "agent_type": "ask_expert",
        "execution_time_ms": 10,
        "success": True,
    }
    return AgentExecution(**{**fields, **kw})


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: platform(tenant_id=""), "tenant_id"),
        (lambda: platform(tenant_id="x" * 101), "tenant_id"),
        (lambda: platform(user_id=123), "user_id"),
        (lambda: platform(event_category="marketing"), "event_category"),
        (lambda: platform(event_data={"bad": float("nan")}), "event_data"),
        (lambda: platform(event_data={"bad": object()}), "event_data"),
        (lambda: platform(event_data={"nul": "a\x00b"}), "event_data"),
        (lambda: platform(event_data=[1, 2]), "event_data"),
        (lambda: platform(time=datetime(2026, 12, 7, 10, 30)), "time"),  # noqa: DTZ001 (naive on purpose)
        (lambda: platform(event_id="not-a-uuid"), "event_id"),
        (lambda: cost(cost_usd=Decimal("-0.01")), "cost_usd"),
        (lambda: cost(cost_usd=Decimal("0.00000000001")), "decimal places"),
        (lambda: cost(cost_usd=float("inf")), "cost_usd"),
        (lambda: cost(cost_usd=True), "cost_usd"),
        (lambda: cost(cost_type="gpu"), "cost_type"),
        (lambda: cost(service="acme-ai"), "service"),
        (lambda: cost(quantity=-1), "quantity"),
        (lambda: cost(quantity=1.5), "quantity"),
        (lambda: run(quality_score=1.5), "quality_score"),
        (lambda: run(citation_accuracy=-0.1), "citation_accuracy"),
        (lambda: run(success=1), "success"),
        (lambda: run(execution_time_ms=-5), "execution_time_ms"),
        (lambda: run(hallucination_detected="no"), "hallucination_detected"),
        (lambda: run(total_tokens=2**31), "total_tokens"),
    ],
)
def test_events_refuse_what_postgres_could_not_store(build: Any, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        build()


def test_money_is_decimal_scores_exact_times_utc_ids_fixed() -> None:
    event = cost(
        cost_usd=0.012, time=datetime(2026, 12, 7, 16, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    )
    assert event.cost_usd == Decimal("0.012") and isinstance(event.cost_usd, Decimal)
    assert event.time == datetime(2026, 12, 7, 10, 30, tzinfo=UTC) and event.time.tzinfo is UTC
    assert isinstance(event.event_id, uuid.UUID)
    assert cost().event_id != cost().event_id
    assert run(quality_score=0.92).quality_score == Decimal("0.92")
    assert platform(event_category=EventCategory.SYSTEM_HEALTH).event_category is EventCategory.SYSTEM_HEALTH
    assert cost(cost_type="embedding", service="pinecone").service is ServiceProvider.PINECONE
    assert cost(cost_type=CostType.STORAGE).cost_type == "storage"


def test_payloads_are_detached_copies() -> None:
    data: dict[str, Any] = {"query": "q", "nested": {"n": 1}}
    event = platform(event_data=data)
    data["nested"]["n"] = 2
    assert event.event_data == {"query": "q", "nested": {"n": 1}}


@pytest.mark.parametrize(
    "event",
    [
        platform(
            user_id="u", session_id="s", event_data={"a": [1, "x", None]}, metadata={"m": True}, time=AT
        ),
        cost(cost_usd=Decimal("1.0000000001"), quantity=300, service_tier="gpt-4", user_id="u"),
        run(
            quality_score=Decimal("0.333333"),
            cost_usd=Decimal("0.012"),
            hallucination_detected=False,
            total_tokens=5,
            error_message="boom",
        ),
    ],
)
def test_spool_encoding_round_trips(event: Any) -> None:
    again = decode_event(json.loads(json.dumps(encode_event(event))))
    assert again == event and again.event_id == event.event_id and again.time == event.time
