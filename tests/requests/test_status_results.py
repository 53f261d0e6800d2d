"""Seed 001's status check: one query returns the request with its stored result, or its error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.requests import Requests, Worker
from persistence.results import ResultStore

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


async def _finish(requests: Requests, prompt: str, sha256: bytes) -> uuid.UUID:
    record = await requests.create("acme", "u1", "gpt-4o", prompt, estimated_tokens=10, now=T0)
    [claim] = await requests.claim(Worker("w1"), 1, lease=LEASE, now=T0)
    assert claim.request_id == record.request_id
    await requests.complete(
        claim, prompt_tokens=5, completion_tokens=5, result_sha256=sha256, now=T0 + timedelta(seconds=1)
    )
    return record.request_id


async def test_status_returns_text_json_and_binary_results_in_one_query(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    async with ResultStore(engine, inline_limit=64, chunk_size=32) as store:
        text_result = await store.put_text("acme", "Le texte traduit en français...")
        json_result = await store.put_json("acme", {"label": "cat", "score": 0.9})
        image = bytes(range(256)) * 4  # 1 KiB: above the inline limit, stored in chunks
        binary_result = await store.put("acme", image, mime_type="image/png")
        cases = [
            (text_result, "Le texte traduit en français...", False),
            (json_result, {"label": "cat", "score": 0.9}, False),
            (binary_result, None, True),
        ]
        for stored, content, streamed in cases:
            request_id = await _finish(requests, f"prompt {stored.kind}", stored.sha256)
            status = await requests.status("acme", request_id)
            assert status.status == "completed" and status.result is not None
            assert (status.result.kind, status.result.mime_type) == (stored.kind, stored.mime_type)
            assert (status.result.content, status.result.streamed) == (content, streamed)
            assert status.result.sha256 == stored.sha256 and status.result.size_bytes == stored.size_bytes
        streamed_back = b"".join([chunk async for chunk in store.stream("acme", binary_result.sha256)])
    assert streamed_back == image


async def test_status_of_a_failed_request_has_its_error_and_no_result(engine: AsyncEngine) -> None:
    requests = Requests(engine)
    record = await requests.create("acme", "u1", "gpt-4o", "p", estimated_tokens=10, now=T0)
    [claim] = await requests.claim(Worker("w1"), 1, lease=LEASE, now=T0)
    await requests.fail(claim, "model overloaded", now=T0 + timedelta(seconds=1))
    status = await requests.status("acme", record.request_id)
    assert (status.status, status.error_message, status.result) == ("failed", "model overloaded", None)
    queued = await requests.create("acme", "u1", "gpt-4o", "q", estimated_tokens=10, now=T0)
    assert (await requests.status("acme", queued.request_id)).result is None
