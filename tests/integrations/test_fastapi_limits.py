"""The FastAPI `Limits` dependency: a key's request admitted and settled, or a 429 problem with
`Retry-After` and `RateLimit-*` headers; the lifespan closes the app's `Limits`."""

from __future__ import annotations

from decimal import Decimal

import httpx
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.api_keys import ApiKeys
from persistence.integrations.fastapi import (
    API_KEYS_STATE,
    LIMITS_STATE,
    ApiKeyPrincipalDep,
    LimitsDep,
    install_exception_handlers,
    lifespan,
)
from persistence.limits import Limits
from persistence.models import RateLimitConfig
from persistence.quotas import Quotas
from persistence.subjects import create_company, create_user

PEPPER = "fastapi-pepper-0123456789abcdefghijklmnopqrstuvwxyz"


class Completion(BaseModel):
    prompt: str
    max_tokens: int


def make_app(engine: AsyncEngine) -> FastAPI:
    app = FastAPI(lifespan=lifespan(engine=engine))
    install_exception_handlers(app)

    @app.post("/v1/completions")
    async def complete(body: Completion, principal: ApiKeyPrincipalDep, limits: LimitsDep) -> dict[str, int]:
        decision = await limits.admit(
            principal,
            prompt_tokens=len(body.prompt) // 4 + 1,
            max_tokens=body.max_tokens,
            cost_usd=Decimal("0.001"),
        )
        grant = decision.granted()  # LimitExceeded -> 429
        try:
            used = 42  # the model call would happen here
        except BaseException:
            await limits.release(grant)
            raise
        await limits.settle(grant, tokens=used, cost_usd=Decimal("0.0005"))
        return {"tokens": used}

    return app


async def test_admitted_then_429_with_headers_and_nothing_held(engine: AsyncEngine) -> None:
    await create_company(engine, "acme", "Acme")
    await create_user(engine, "acme", "alice")
    await Quotas(engine).set_user_quota("acme", "alice", tier="standard")
    app = make_app(engine)
    async with app.router.lifespan_context(app):
        keys = ApiKeys(engine, pepper=PEPPER, environment="live", flush_interval=3600)
        setattr(app.state, API_KEYS_STATE, keys)
        issued = await keys.create("acme", user_id="alice")
        async with engine.begin() as conn:
            await conn.execute(
                insert(RateLimitConfig),
                {"company_id": "acme", "scope": "key", "scope_id": issued.key_id, "metric": "requests",
                 "period": "minute", "limit_value": Decimal(1), "burst": Decimal(1)},
            )  # fmt: skip
        auth = {"Authorization": f"Bearer {issued.key.get_secret_value()}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ok = await client.post(
                "/v1/completions", json={"prompt": "hello", "max_tokens": 10}, headers=auth
            )
            refused = await client.post(
                "/v1/completions", json={"prompt": "hello", "max_tokens": 10}, headers=auth
            )
            anonymous = await client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 10})
        assert isinstance(getattr(app.state, LIMITS_STATE), Limits)
    assert not hasattr(app.state, LIMITS_STATE)  # closed and removed by the lifespan
    assert ok.status_code == 200 and ok.json() == {"tokens": 42}
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert (body["type"], body["limit"]) == ("urn:persistence:problem:limit-exceeded", "rate")
    assert refused.headers["Retry-After"] == "60" and refused.headers["RateLimit-Limit"] == "1"
    assert anonymous.status_code == 401
    async with engine.connect() as conn:
        used, held = (
            await conn.execute(
                text(
                    "SELECT sum(used), sum(held) FROM quota_counters"
                    " WHERE company_id = 'acme' AND metric = 'requests'"
                )
            )
        ).one()
    assert (used, held) == (1, 0)  # the refused request released its reservation
