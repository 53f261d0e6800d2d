"""Idempotency keys are per organization (revision 0025): the same key under two organizations is
two calls, under one organization still exactly one; a call without an organization is stored
under '' and read back as None."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger, AICallRecord
from persistence.errors import ConflictError, ValidationError
from tests.ai_calls.conftest import T0, call, counts

KEYS = "SELECT organization_id, idempotency_key, call_id FROM ai_call_keys ORDER BY organization_id, call_id"


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def test_one_key_under_two_organizations_is_two_calls_and_a_retry_in_one_is_one(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    acme = await logger.log_call(**call(1, organization_id="acme"))
    globex = await logger.log_call(**call(1, organization_id="globex"))
    assert acme != globex
    # A retry (later, same payload) in each organization returns that organization's call.
    assert (
        await logger.log_call(**call(1, organization_id="acme", created_at=T0 + timedelta(seconds=5))) == acme
    )
    assert await logger.log_call(**call(1, organization_id="globex")) == globex
    assert await counts(engine) == (2, 2, 2)
    assert await rows(engine, KEYS) == [
        ("acme", "anthropic:msg_000001", acme),
        ("globex", "anthropic:msg_000001", globex),
    ]
    with pytest.raises(ConflictError):  # another payload under a key of the same organization
        await logger.log_call(**call(1, organization_id="acme", output_tokens=1))
    assert await counts(engine) == (2, 2, 2)


async def test_a_call_without_an_organization_is_stored_under_the_sentinel(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    nobody = await logger.log_call(**call(1, organization_id=None))
    assert await logger.log_call(**call(1, organization_id=None)) == nobody  # still one call
    acme = await logger.log_call(**call(1, organization_id="acme"))
    assert acme != nobody
    assert await rows(engine, "SELECT organization_id FROM ai_calls ORDER BY id") == [("",), ("acme",)]
    assert await rows(engine, "SELECT organization_id FROM ai_call_usage_deltas ORDER BY id") == [
        ("",),
        ("acme",),
    ]
    assert [r[0] for r in await rows(engine, KEYS)] == ["", "acme"]
    with pytest.raises(ValidationError, match="organization_id"):  # '' would read back as None
        AICallRecord(provider="openai", model="gpt-4o", input_tokens=1, output_tokens=1, organization_id="")


async def test_a_batch_keys_its_calls_per_organization(engine: AsyncEngine, logger: AICallLogger) -> None:
    batch = [
        call(1, organization_id="acme"),
        call(1, organization_id="globex"),
        call(1, organization_id=None),
    ]
    assert await logger.log_batch(batch) == 3  # the COPY path
    assert await logger.log_batch(batch) == 0
    # The fallback path (some keys stored): only the new (organization, key) pairs are added.
    assert (
        await logger.log_batch([*batch, call(1, organization_id="initech"), call(2, organization_id="acme")])
        == 2
    )
    assert [(r[0], r[1]) for r in await rows(engine, KEYS)] == [
        ("", "anthropic:msg_000001"),
        ("acme", "anthropic:msg_000001"),
        ("acme", "anthropic:msg_000002"),
        ("globex", "anthropic:msg_000001"),
        ("initech", "anthropic:msg_000001"),
    ]
    with pytest.raises(ConflictError, match="msg_000001"):  # a stored key of globex, another payload
        await logger.log_batch(
            [call(3, organization_id="acme"), call(1, organization_id="globex", latency_ms=1)]
        )
    with pytest.raises(ConflictError):  # the same key twice in one batch and organization, two payloads
        await logger.log_batch(
            [call(4, organization_id="acme"), call(4, organization_id="acme", latency_ms=1)]
        )
    assert await counts(engine) == (5, 5, 2)
    stats = await logger.get_stats(T0, T0 + timedelta(hours=1))
    assert stats["total_calls"] == 5
