"""`@pytest.mark.commits`: `engine` commits for real, on a private database cloned for this test."""

from __future__ import annotations

import httpx
import pytest
from claims_service.api import create_app
from claims_service.events import Event, Outbox
from helpers import unique

from persistence import ClaimRepository, DatabaseConfig, create_database_engine


@pytest.mark.commits
async def test_a_created_claim_is_committed_before_its_event(
    client: httpx.AsyncClient, fresh_database: DatabaseConfig, outbox: Outbox
) -> None:
    external_id = unique("c")
    response = await client.post("/claims", json={"external_id": external_id, "content": "committed"})
    assert response.status_code == 201, response.text
    assert outbox.published == [Event("claim.created", response.json()["id"])]
    other = await create_database_engine(fresh_database)  # another connection: sees only committed rows
    try:
        claim = await ClaimRepository(other).get_by_external_id(external_id)
    finally:
        await other.dispose()
    assert str(claim.id) == response.json()["id"]


@pytest.mark.commits
async def test_the_app_as_deployed_builds_its_engine_from_settings(fresh_database: DatabaseConfig) -> None:
    # No engine passed: persistence's lifespan() builds one from the settings and disposes it at shutdown.
    app = create_app(config=fresh_database)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://claims.test") as client:
            created = await client.post("/claims", json={"external_id": unique("c"), "content": "x"})
            assert created.status_code == 201, created.text
            got = await client.get(f"/claims/{created.json()['id']}")
    assert got.status_code == 200
    assert got.json()["external_id"] == created.json()["external_id"]
