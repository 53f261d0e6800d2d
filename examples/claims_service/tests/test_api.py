"""The HTTP API through httpx against the app, on the plugin's `engine` (rolled back after each test)."""

from __future__ import annotations

import httpx
from claims_service.events import Event, Outbox
from helpers import AICalls, problem, unique
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import AuditLogRepository, ClaimRepository, VerificationRepository
from persistence.testing.factories import ClaimFactory


async def test_create_classifies_stores_and_logs_the_ai_call(
    client: httpx.AsyncClient, engine: AsyncEngine, outbox: Outbox
) -> None:
    external_id = unique("c")
    response = await client.post(
        "/claims",
        json={"external_id": external_id, "content": "the new vaccine dose is safe"},
        headers={"X-Actor": "alice"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["claim_type"] == "medical"

    [call] = await AICalls(engine).list(request_id=f"classify:{external_id}")
    assert call.id == created["ai_call_id"]
    assert (call.provider, call.customer_id, call.cost_source) == ("anthropic", "alice", "computed")
    assert call.cost_usd is not None and call.cost_usd > 0  # priced from vendor_prices, a Decimal

    [audit] = await AuditLogRepository(engine).list(entity_id=created["id"])
    assert (audit.action, audit.user_id) == ("insert", "alice")
    assert outbox.published == [Event("claim.created", created["id"])]


async def test_get_returns_the_claim(client: httpx.AsyncClient) -> None:
    created = (await client.post("/claims", json={"external_id": unique("c"), "content": "x"})).json()
    response = await client.get(f"/claims/{created['id']}")
    assert response.status_code == 200
    assert response.json() == {k: v for k, v in created.items() if k != "ai_call_id"}


async def test_missing_claim_is_a_404_problem(client: httpx.AsyncClient) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    body = problem(await client.get(f"/claims/{missing}"), 404)
    assert body["entity"] == "Claim"
    assert body["instance"] == f"/claims/{missing}"


async def test_malformed_id_is_a_422_problem(client: httpx.AsyncClient) -> None:
    problem(await client.get("/claims/not-a-uuid"), 422)


async def test_a_retried_create_is_409_and_the_ai_call_is_logged_once(
    client: httpx.AsyncClient, engine: AsyncEngine, outbox: Outbox
) -> None:
    claim = {"external_id": unique("c"), "content": "the court upheld the contract"}
    first = await client.post("/claims", json=claim)
    assert first.status_code == 201
    body = problem(await client.post("/claims", json=claim), 409)
    assert body["constraint"] == "uq_claims_external_id"
    # Same idempotency key, same payload: the ledger returned the first call instead of a second row.
    assert await AICalls(engine).count(request_id=f"classify:{claim['external_id']}") == 1
    assert [e.kind for e in outbox.published] == ["claim.created"]  # the refused one published nothing


async def test_list_filters_orders_and_pages_by_keyset_cursor(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    source = unique("https://example.test/feed")
    repo = ClaimRepository(engine)
    for _ in range(7):
        await repo.add(ClaimFactory.build(source=source, claim_type="medical"))  # complete, unsaved
    await repo.add(ClaimFactory.build(source=source, claim_type="financial"))
    stored = await repo.list(source=source, claim_type="medical")
    expected = [str(c.id) for c in sorted(stored, key=lambda c: (c.created_at, c.id))]

    seen: list[str] = []
    params = {"source": source, "claim_type": "medical", "order_by": "created_at", "limit": "3"}
    pages = 0
    while True:
        response = await client.get("/claims", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        if page["next"] is None:
            break
        params["after"] = page["next"]
    assert seen == expected
    assert pages == 3


async def test_list_filter_values_are_typed_by_column(client: httpx.AsyncClient) -> None:
    response = await client.get("/claims", params={"created_at__gte": "2999-01-01T00:00:00Z"})
    assert response.status_code == 200
    assert response.json() == {"items": [], "next": None}
    naive = problem(await client.get("/claims", params={"created_at__gte": "2026-01-01T00:00:00"}), 422)
    assert naive["parameter"] == "created_at__gte"


async def test_a_filter_the_endpoint_does_not_allow_is_a_422_naming_it(client: httpx.AsyncClient) -> None:
    assert problem(await client.get("/claims", params={"content": "x"}), 422)["parameter"] == "content"
    assert (
        problem(await client.get("/claims", params={"order_by": "content"}), 422)["parameter"] == "order_by"
    )


async def test_verifications_are_published_after_the_commit(
    client: httpx.AsyncClient, engine: AsyncEngine, outbox: Outbox
) -> None:
    claim = await ClaimRepository(engine).add(ClaimFactory.build())
    verdicts = [
        {"framework": "empirical", "valid": True, "confidence": 0.9},
        {"framework": "logical", "valid": False, "confidence": 0.6},
    ]
    response = await client.post(f"/claims/{claim.id}/verifications", json=verdicts)
    assert response.status_code == 201, response.text
    ids = [row["id"] for row in response.json()]
    assert outbox.published == [Event("claim.verified", f"{claim.id}:{i}") for i in ids]
    assert await VerificationRepository(engine).count(claim_id=str(claim.id)) == 2


async def test_a_refused_verdict_rolls_back_all_of_them_and_publishes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, outbox: Outbox
) -> None:
    claim = await ClaimRepository(engine).add(ClaimFactory.build())
    verdicts = [
        {"framework": "empirical", "valid": True, "confidence": 0.9},  # stored, then rolled back
        {"framework": "logical", "valid": True, "confidence": 1.5},  # refused by the CHECK
    ]
    body = problem(await client.post(f"/claims/{claim.id}/verifications", json=verdicts), 422)
    assert body["constraint"] == "ck_verification_results_confidence_range"
    assert outbox.published == []  # the first verdict's on_commit callback was dropped
    assert await VerificationRepository(engine).count(claim_id=str(claim.id)) == 0


async def test_verifying_a_missing_claim_is_a_404_problem(client: httpx.AsyncClient, outbox: Outbox) -> None:
    verdicts = [{"framework": "empirical", "valid": True, "confidence": 0.9}]
    missing = "00000000-0000-4000-8000-000000000001"
    problem(await client.post(f"/claims/{missing}/verifications", json=verdicts), 404)
    assert outbox.published == []
