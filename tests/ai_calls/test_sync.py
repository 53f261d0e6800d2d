"""SyncAICallLogger from plain synchronous code: seed 000's integration example runs through it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import SyncAICallLogger
from persistence.config import DatabaseConfig
from persistence.errors import ConflictError, PersistenceError, TransientError, ValidationError
from persistence.testing import ThrowawayPostgres

pytestmark = pytest.mark.commits
log = logging.getLogger(__name__)


@dataclass
class _Usage:
    input_tokens: int
    output_tokens: int


@dataclass
class _Text:
    text: str


@dataclass
class _Message:
    id: str
    model: str
    usage: _Usage
    content: list[_Text]


class FakeAnthropicMessages:
    """Stands in for `anthropic.Anthropic().messages` (an outside service), same call shape."""

    def __init__(self) -> None:
        self.n = 0

    def create(self, *, model: str, max_tokens: int, messages: list[dict[str, str]], **_: Any) -> _Message:
        self.n += 1
        prompt = messages[0]["content"]
        return _Message(f"msg_{self.n:04d}", model, _Usage(len(prompt) * 3, 42), [_Text("Hello!")])


def seed_db_config(pg: ThrowawayPostgres, config: DatabaseConfig) -> dict[str, Any]:
    """Seed 000's dict: host, port, database, user, password."""
    return {"host": config.host, "port": config.port, "database": config.database, "user": config.user,
            "password": None}  # fmt: skip


def test_seed_000_integration_example(migrated: ThrowawayPostgres, fresh_database: DatabaseConfig) -> None:
    pg_logger = SyncAICallLogger(seed_db_config(migrated, fresh_database))
    messages = FakeAnthropicMessages()

    def make_ai_call(prompt: str, customer_id: str) -> str:
        start_time = time.time()
        response = messages.create(
            model="claude-sonnet-4-20250514", max_tokens=1000, messages=[{"role": "user", "content": prompt}]
        )
        latency_ms = int((time.time() - start_time) * 1000)
        # Calculate cost (simplified pricing): the seed's float arithmetic, as written
        cost_usd = response.usage.input_tokens * 0.000003 + response.usage.output_tokens * 0.000015
        try:
            pg_logger.log_call(
                provider="anthropic",
                model=response.model,
                input_tokens=response.usage.input_tokens,
                output_tokens=response.usage.output_tokens,
                cost_usd=cost_usd,
                latency_ms=latency_ms,
                customer_id=customer_id,
                organization_id="acme-corp",
                product_id="chatbot",
                environment="production",
                request_id=response.id,
            )
        except Exception:
            log.exception("Failed to log to PostgreSQL")
            raise  # the test wants to see it
        return response.content[0].text

    try:
        assert make_ai_call("Hello, Claude!", "cust_001") == "Hello!"
        # No cost given: computed from the default price of migration 0003.
        pg_logger.log_call(provider="anthropic", model="claude-sonnet-4-20250514", input_tokens=42,
                           output_tokens=42, request_id="msg_free")  # fmt: skip
        now = datetime.now(UTC)
        stats = pg_logger.get_stats(now - timedelta(hours=1), now + timedelta(minutes=1))
        assert stats["total_calls"] == 2
        assert stats["by_provider"]["anthropic"]["cost"] == 2 * Decimal(
            "0.000756"
        )  # 42 in + 42 out, both ways
        with pytest.raises(ValidationError, match="finite"):
            pg_logger.log_call(provider="anthropic", model="m", input_tokens=1, output_tokens=1,
                               cost_usd=float("nan"))  # fmt: skip
        with pytest.raises(ConflictError):  # the same key in the same organization (keys are per tenant)
            pg_logger.log_call(provider="anthropic", model="x", input_tokens=1, output_tokens=1,
                               cost_usd=Decimal(0), organization_id="acme-corp", request_id="msg_0001")  # fmt: skip
        assert pg_logger.log_batch([{"provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1,
                                     "cost_usd": 0.01, "request_id": "b1"}] * 2) == 1  # fmt: skip
        bulk = ({"provider": "openai", "model": "gpt-4o", "input_tokens": i, "output_tokens": 1,
                 "request_id": f"bulk-{i}"} for i in range(250))  # fmt: skip
        assert pg_logger.ingest(bulk, batch_size=100) == 250
    finally:
        pg_logger.close()
        pg_logger.close()  # idempotent
    with pytest.raises(PersistenceError, match="closed"):
        pg_logger.log_call(provider="openai", model="gpt-4o", input_tokens=1, output_tokens=1)


def test_threads_share_one_facade(migrated: ThrowawayPostgres, fresh_database: DatabaseConfig) -> None:
    errors: list[BaseException] = []
    with SyncAICallLogger(fresh_database, connections=4) as pg_logger:

        def work(t: int) -> None:
            try:
                for i in range(25):
                    pg_logger.log_call(provider="openai", model="gpt-4o", input_tokens=i, output_tokens=1,
                                       cost_usd=Decimal("0.001"), request_id=f"t{t}-{i}")  # fmt: skip
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        now = datetime.now(UTC)
        assert pg_logger.get_stats(now - timedelta(hours=1), now + timedelta(minutes=1))["total_calls"] == 150
    assert errors == []


async def test_it_refuses_its_own_loop(fresh_engine: AsyncEngine, fresh_database: DatabaseConfig) -> None:
    # Called from a coroutine of the test's loop it simply blocks that loop until done; calling it
    # from inside its own loop would deadlock, so that is refused.
    pg_logger = await asyncio.to_thread(SyncAICallLogger, fresh_database)
    try:
        fut = asyncio.run_coroutine_threadsafe(_inside(pg_logger), pg_logger._loop)
        with pytest.raises(PersistenceError, match="own event loop"):
            await asyncio.wrap_future(fut)
    finally:
        await asyncio.to_thread(pg_logger.close)
    async with fresh_engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM ai_calls"))).scalar() == 0


async def _inside(pg_logger: SyncAICallLogger) -> int:
    return pg_logger.log_call(provider="openai", model="gpt-4o", input_tokens=1, output_tokens=1)


async def test_a_call_past_the_timeout_is_cancelled_and_raises_transient(
    fresh_engine: AsyncEngine, fresh_database: DatabaseConfig
) -> None:
    pg_logger = await asyncio.to_thread(SyncAICallLogger, fresh_database, timeout=0.5)

    def log_call() -> int:
        return pg_logger.log_call(provider="openai", model="gpt-4o", input_tokens=1, output_tokens=1,
                                  cost_usd=Decimal("0.01"), request_id="slow")  # fmt: skip

    try:
        async with fresh_engine.connect() as blocker:
            await blocker.execute(text("LOCK TABLE ai_calls IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(TransientError, match=r"within 0\.5 s"):
                await asyncio.to_thread(log_call)
            await blocker.rollback()  # the lock goes; a call still running would now commit
        await asyncio.sleep(1.0)
        async with fresh_engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM ai_calls"))).scalar() == 0
        first = await asyncio.to_thread(log_call)  # the facade still works, and a retry is safe
        assert await asyncio.to_thread(log_call) == first
    finally:
        await asyncio.to_thread(pg_logger.close)


def test_wrong_typed_arguments_are_validation_errors(
    migrated: ThrowawayPostgres, fresh_database: DatabaseConfig
) -> None:
    with pytest.raises(ValidationError, match="connections"):
        SyncAICallLogger(fresh_database, connections="4")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="timeout"):
        SyncAICallLogger(fresh_database, timeout=float("nan"))
    with SyncAICallLogger(fresh_database) as log:
        with pytest.raises(ValidationError, match="calls"):
            log.log_batch(None)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="batch_size"):
            log.ingest([], batch_size="x")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="batch_size"):
            log.ingest([], batch_size=1.5)  # type: ignore[arg-type]
