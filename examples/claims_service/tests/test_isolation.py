"""A test's rows are never visible to the next test: `test_a` creates a claim through the API, and
`test_b` (after it, in file order) finds it neither through the app nor from a second, real connection.

With an `engine` fixture that commits for real, `test_b` (and the second check of `test_a`) fail.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from helpers import AICalls
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import ClaimRepository, DatabaseConfig, create_database_engine

MARKER = f"isolation-{uuid.uuid4().hex}"  # one value per test run
_ran: list[str] = []


@pytest.fixture
async def outside(db_config: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    """A second engine on the same test database: its own connections see only committed rows."""
    engine = await create_database_engine(db_config)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_creates_a_claim(
    client: httpx.AsyncClient, engine: AsyncEngine, outside: AsyncEngine
) -> None:
    response = await client.post("/claims", json={"external_id": MARKER, "content": "isolation"})
    assert response.status_code == 201, response.text
    _ran.append(MARKER)
    assert await ClaimRepository(engine).exists(external_id=MARKER)  # visible inside this test
    assert not await ClaimRepository(outside).exists(external_id=MARKER)  # but not committed


async def test_b_does_not_see_the_claim_of_test_a(
    client: httpx.AsyncClient, engine: AsyncEngine, outside: AsyncEngine
) -> None:
    if _ran != [MARKER]:
        pytest.skip("needs test_a_creates_a_claim to have run first in this session")
    listed = await client.get("/claims", params={"external_id": MARKER})
    assert listed.json() == {"items": [], "next": None}
    assert not await ClaimRepository(engine).exists(external_id=MARKER)
    assert await AICalls(engine).count(request_id=f"classify:{MARKER}") == 0
    assert not await ClaimRepository(outside).exists(external_id=MARKER)
    assert await AICalls(outside).count(request_id=f"classify:{MARKER}") == 0  # nor the ledger's row
