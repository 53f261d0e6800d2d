"""The FastAPI API-key dependency: Bearer or X-API-Key in, a principal or a 401/403 problem out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.api_keys import ApiKeyPrincipal, ApiKeys, IssuedApiKey
from persistence.integrations.fastapi import (
    API_KEYS_STATE,
    ApiKeyPrincipalDep,
    install_exception_handlers,
    lifespan,
    require_scopes,
)
from persistence.subjects import create_company, create_user

PEPPER = "fastapi-pepper-0123456789abcdefghijklmnopqrstuvwxyz"
PROBLEM = "application/problem+json"


def make_app(engine: AsyncEngine) -> FastAPI:
    app = FastAPI(lifespan=lifespan(engine=engine))
    install_exception_handlers(app)

    @app.get("/me")
    async def me(principal: ApiKeyPrincipalDep) -> dict[str, str | None]:
        return {"company": principal.company_id, "user": principal.user_id, "key": principal.key_id}

    @app.post("/admin")
    async def admin(
        principal: Annotated[ApiKeyPrincipal, Depends(require_scopes("admin"))],
    ) -> dict[str, str]:
        return {"company": principal.company_id}

    return app


@pytest.fixture
async def service(engine: AsyncEngine) -> AsyncIterator[tuple[httpx.AsyncClient, ApiKeys, FastAPI]]:
    await create_company(engine, "acme", "Acme Corp")
    await create_user(engine, "acme", "alice")
    app = make_app(engine)
    async with app.router.lifespan_context(app):
        keys = ApiKeys(engine, pepper=PEPPER, environment="live", flush_interval=3600)
        setattr(app.state, API_KEYS_STATE, keys)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, keys, app


def raw(issued: IssuedApiKey) -> str:
    return issued.key.get_secret_value()


def assert_401(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert (body["status"], body["type"], body["reason"]) == (
        401,
        "urn:persistence:problem:unauthorized",
        reason,
    )


async def test_a_key_is_accepted_as_bearer_or_x_api_key(
    service: tuple[httpx.AsyncClient, ApiKeys, FastAPI],
) -> None:
    client, keys, _ = service
    issued = await keys.create("acme", user_id="alice")
    expected = {"company": "acme", "user": "alice", "key": issued.key_id}
    response = await client.get("/me", headers={"Authorization": f"Bearer {raw(issued)}"})
    assert response.status_code == 200 and response.json() == expected
    response = await client.get("/me", headers={"X-API-Key": raw(issued)})
    assert response.status_code == 200 and response.json() == expected
    both = {"Authorization": f"Bearer {raw(issued)}", "X-API-Key": raw(issued)}
    assert (await client.get("/me", headers=both)).status_code == 200  # the same key twice


async def test_refusals_are_401_problems_that_never_echo_the_key(
    service: tuple[httpx.AsyncClient, ApiKeys, FastAPI],
) -> None:
    client, keys, _ = service
    issued = await keys.create("acme")
    other = await keys.create("acme")
    assert_401(await client.get("/me"), "missing")
    assert_401(await client.get("/me", headers={"Authorization": f"Basic {raw(issued)}"}), "missing")
    tampered = raw(issued)[:-1] + ("0" if raw(issued)[-1] != "0" else "1")
    response = await client.get("/me", headers={"X-API-Key": tampered})
    assert_401(response, "invalid")
    assert tampered not in response.text and raw(issued)[:-6] not in response.text
    two = {"Authorization": f"Bearer {raw(issued)}", "X-API-Key": raw(other)}
    assert_401(await client.get("/me", headers=two), "invalid")
    await keys.revoke("acme", issued.key_id)
    response = await client.get("/me", headers={"X-API-Key": raw(issued)})
    assert_401(response, "revoked")
    assert raw(issued) not in response.text


async def test_a_missing_scope_is_a_403_problem(service: tuple[httpx.AsyncClient, ApiKeys, FastAPI]) -> None:
    client, keys, _ = service
    reader = await keys.create("acme", scopes=["read"])
    admin = await keys.create("acme", scopes=["admin", "read"])
    response = await client.post("/admin", headers={"X-API-Key": raw(reader)})
    assert response.status_code == 403 and response.headers["content-type"] == PROBLEM
    assert response.json()["missing_scopes"] == "admin"
    response = await client.post("/admin", headers={"X-API-Key": raw(admin)})
    assert response.status_code == 200 and response.json() == {"company": "acme"}


async def test_the_lifespan_writes_the_last_uses_at_shutdown(engine: AsyncEngine) -> None:
    await create_company(engine, "acme", "Acme Corp")
    app = make_app(engine)
    keys = ApiKeys(engine, pepper=PEPPER, environment="live", flush_interval=3600)
    issued = await keys.create("acme")
    async with app.router.lifespan_context(app):
        setattr(app.state, API_KEYS_STATE, keys)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            assert (await client.get("/me", headers={"X-API-Key": raw(issued)})).status_code == 200
        assert (await keys.get("acme", issued.key_id)).last_used_at is None  # batched, not per request
    assert getattr(app.state, API_KEYS_STATE, None) is None
    assert (await keys.get("acme", issued.key_id)).last_used_at is not None
