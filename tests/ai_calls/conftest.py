"""Shared helpers of the ledger tests: the logger runs on the plugin's `engine` (leases are savepoints)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def logger(engine: AsyncEngine) -> AsyncIterator[AICallLogger]:
    async with AICallLogger(engine) as log:
        yield log


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def counts(engine: AsyncEngine) -> tuple[int, int, int]:
    """(ledger rows, keys, rollup work pending: deltas + pending batches)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM ai_calls), (SELECT count(*) FROM ai_call_keys), "
                    "(SELECT count(*) FROM ai_call_usage_deltas) + (SELECT count(*) FROM ai_call_pending_batches)"
                )
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def call(i: int = 0, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "provider": "anthropic",
        "model": "claude-sonnet-4-20250514",
        "input_tokens": 1000 + i,
        "output_tokens": 200 + i % 7,
        "cost_usd": Decimal("0.006000") + Decimal(i) / 1_000_000,
        "latency_ms": 800 + i,
        "customer_id": f"cust_{i % 5:03d}",
        "organization_id": "acme-corp",
        "product_id": "chatbot",
        "environment": "production",
        "request_id": f"msg_{i:06d}",
        "created_at": T0,
    }
    return {**fields, **overrides}
