"""The only setup a service needs: load persistence's pytest plugin (it configures pytest-asyncio too).

Its `engine` fixture is rolled back at the end of each test (`transaction()` blocks become
savepoints); tests marked `@pytest.mark.commits` get a real engine on a private database instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from claims_service.api import create_app
from claims_service.classifier import KeywordClassifier
from claims_service.events import Outbox
from claims_service.service import ClaimService
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import AICallLogger

pytest_plugins = ["persistence.testing.pytest_plugin"]


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
async def app(engine: AsyncEngine, outbox: Outbox) -> AsyncIterator[FastAPI]:
    app = create_app(engine=engine, outbox=outbox)
    async with app.router.lifespan_context(app):  # httpx's ASGITransport does not run the lifespan
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://claims.test") as client:
        yield client


@pytest.fixture
async def service(engine: AsyncEngine, outbox: Outbox) -> AsyncIterator[ClaimService]:
    async with AICallLogger(engine) as ledger:
        yield ClaimService(engine, ledger, KeywordClassifier(), outbox)
