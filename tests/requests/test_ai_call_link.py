"""One call id links a request and its AI-call ledger row: stored by the finishing statement, read
back both ways."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.ai_calls import AICallLogger
from persistence.errors import InvalidRequestError, NotFoundError
from persistence.requests import Requests, Worker, sql

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def _call(engine: AsyncEngine, provider_request_id: str) -> int:
    async with AICallLogger(engine) as log:
        return await log.log_call(
            "openai", "gpt-4o", 120, 80, cost_usd=Decimal("0.0025"), latency_ms=900,
            request_id=provider_request_id, created_at=T0,
        )  # fmt: skip


async def test_the_call_id_round_trips_and_links_both_ways(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    rid = (await requests.create("acme", "u1", "gpt-4o", "Translate", now=T0)).request_id
    [claim] = await requests.claim(Worker("w"), 1, now=T0)
    assert await requests.ai_call("acme", rid) is None  # in flight: no call recorded yet
    call_id = await _call(engine, "chatcmpl-1")

    done = await requests.complete(claim, prompt_tokens=120, completion_tokens=80, ai_call_id=call_id, now=T0)
    assert done.ai_call_id == call_id
    assert (await requests.status("acme", rid)).ai_call_id == call_id
    assert [r.ai_call_id for r in (await requests.recent("acme", "u1")).items] == [call_id]

    call = await requests.ai_call("acme", rid)
    assert call is not None
    assert (call.id, call.provider, call.model, call.input_tokens, call.output_tokens, call.total_tokens) == (
        call_id, "openai", "gpt-4o", 120, 80, 200,
    )  # fmt: skip
    assert (call.cost_usd, call.cost_source, call.request_id, call.created_at) == (
        Decimal("0.002500"), "provided", "chatcmpl-1", T0,
    )  # fmt: skip

    back = await requests.requests_for_ai_call("acme", call_id)
    assert [r.request_id for r in back] == [rid] and back[0] == done
    assert await requests.requests_for_ai_call("other-co", call_id) == []
    with pytest.raises(NotFoundError):
        await requests.ai_call("other-co", rid)


async def test_fail_and_acknowledge_cancel_carry_the_call_and_one_call_may_answer_several(
    engine: AsyncEngine,
) -> None:
    requests = Requests(engine)
    a, b, c = [(await requests.create("acme", "u1", "gpt-4o", f"p{k}", now=T0)).request_id for k in range(3)]
    claims = {x.request_id: x for x in await requests.claim(Worker("w"), 3, now=T0)}
    shared = await _call(engine, "chatcmpl-shared")
    failed = await requests.fail(
        claims[a], "content filter", ai_call_id=shared, now=T0 + timedelta(seconds=1)
    )
    await requests.cancel("acme", b)
    cancelled = await requests.acknowledge_cancel(claims[b], ai_call_id=shared, now=T0 + timedelta(seconds=2))
    plain = await requests.complete(claims[c], now=T0 + timedelta(seconds=3))
    assert (failed.ai_call_id, cancelled.ai_call_id, plain.ai_call_id) == (shared, shared, None)
    answered = [r.request_id for r in await requests.requests_for_ai_call("acme", shared)]
    assert answered == sorted([a, b])  # same created_at: by request id
    assert await requests.ai_call("acme", c) is None


async def test_bad_or_dangling_call_ids(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    rid = (await requests.create("acme", "u1", "gpt-4o", "p", now=T0)).request_id
    [claim] = await requests.claim(Worker("w"), 1, now=T0)
    bad: list[Any] = [0, -1, True, "7", 2**63]
    for value in bad:
        with pytest.raises(InvalidRequestError):
            await requests.complete(claim, ai_call_id=value, now=T0)
        with pytest.raises(InvalidRequestError):
            await requests.requests_for_ai_call("acme", value)
    # Refused before any SQL: the request is still processing under its lease.
    await requests.complete(claim, ai_call_id=10**12, now=T0)  # not in the ledger (not checked on write)
    with pytest.raises(NotFoundError) as missing:
        await requests.ai_call("acme", rid)
    assert missing.value.entity == "AI call" and missing.value.key == 10**12
    with pytest.raises(NotFoundError):
        await requests.ai_call("acme", uuid.uuid4())


async def test_the_way_back_from_a_call_is_an_index_lookup(connection: AsyncConnection) -> None:
    raw = (await connection.get_raw_connection()).driver_connection
    assert isinstance(raw, asyncpg.Connection)
    await raw.execute(
        "INSERT INTO request_history (company_id, request_id, created_at, user_id, model_id, prompt, status, "
        "updated_at, queued_at, completed_at, attempts, ai_call_id) "
        "SELECT 'c' || (g % 50), gen_random_uuid(), now(), 'u', 'm', 'p', 'completed', now(), now(), now(), 1, "
        "CASE WHEN g % 3 = 0 THEN g END FROM generate_series(1, 5000) g"
    )
    await raw.execute("ANALYZE request_history")
    out = await raw.fetchval("EXPLAIN (FORMAT JSON) " + sql.FOR_AI_CALL, "c3", 3)
    plan = json.dumps(json.loads(out) if isinstance(out, str) else out)
    # The month holding the rows is searched by the partial index (empty partitions may be scanned).
    home = await raw.fetchval("SELECT 'request_history_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')")
    assert f'"Index Name": "{home}_company_id_ai_call_id_idx"' in plan
