"""Shared helpers of the event tests: the process-wide recorder never outlives a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.events import recorder


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def no_process_wide_recorder() -> AsyncIterator[None]:
    yield
    if recorder._instance is not None:
        await recorder._instance.close()


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()
