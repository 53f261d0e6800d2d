"""ReadYourWritesMiddleware: a service's write answers with its token, and another request carrying
it reads that write on a paused replica's primary, through a real FastAPI app on a real primary and
streaming replica (the lab of tests/test_replicas.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from persistence.integrations.fastapi import (
    READ_YOUR_WRITES_HEADER,
    ReadOnlyTransactionDep,
    ReadYourWritesMiddleware,
    TransactionDep,
    install_exception_handlers,
    lifespan,
)
from persistence.replicas import read_your_writes_token
from persistence.repositories.service_health import ServiceHealthRepository
from tests.test_replicas import Routed, fresh, lab, migrated, routed, where

__all__ = ["lab", "migrated", "routed"]  # the lab's fixtures, shared with tests/test_replicas.py


def service(routed: Routed, *, inner_middleware: bool) -> FastAPI:
    app = FastAPI(lifespan=lifespan(engine=routed.engine))
    install_exception_handlers(app)
    if inner_middleware:

        @app.middleware("http")  # inside ReadYourWritesMiddleware: runs the app in a child task
        async def passing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            return await call_next(request)

    app.add_middleware(ReadYourWritesMiddleware)
    repository = ServiceHealthRepository(routed.engine)

    @app.post("/heartbeats")
    async def beat(_: TransactionDep) -> dict[str, str]:
        row = await repository.add(service_name="header", instance_id=uuid.uuid4().hex, status="healthy",
                                   last_heartbeat=datetime.now(UTC))  # fmt: skip
        return {"id": str(row.id)}

    @app.get("/heartbeats/{row_id}")
    async def seen(row_id: uuid.UUID, _: ReadOnlyTransactionDep) -> dict[str, bool]:
        found = await repository.get_or_none(row_id) is not None
        _port, standby = await where(routed.engine)
        return {"found": found, "standby": standby}

    return app


async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.mark.parametrize("inner_middleware", [False, True], ids=["alone", "around-BaseHTTPMiddleware"])
async def test_the_token_travels_in_a_header_between_requests(routed: Routed, inner_middleware: bool) -> None:
    async def scenario() -> None:
        async for client in client_of(service(routed, inner_middleware=inner_middleware)):
            routed.lab.run("pause")
            wrote = await client.post("/heartbeats")
            assert wrote.status_code == 200, wrote.text
            token = wrote.headers[READ_YOUR_WRITES_HEADER]
            assert "/" in token
            row = wrote.json()["id"]
            assert read_your_writes_token() is None  # nothing leaks out of a request
            # Without the token the paused replica answers, and the row is not there yet...
            assert (await client.get(f"/heartbeats/{row}")).json() == {"found": False, "standby": True}
            # ...with it, the block runs on the primary and sees the write, and says so back.
            carried = await client.get(f"/heartbeats/{row}", headers={READ_YOUR_WRITES_HEADER: token})
            assert carried.json() == {"found": True, "standby": False}
            assert carried.headers[READ_YOUR_WRITES_HEADER] == token
            bad = await client.get(f"/heartbeats/{row}", headers={READ_YOUR_WRITES_HEADER: "drop table"})
            assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
            assert "drop table" not in bad.text
            routed.lab.run("resume")
            routed.lab.run("sync")
            caught_up = await client.get(f"/heartbeats/{row}", headers={READ_YOUR_WRITES_HEADER: token})
            assert caught_up.json() == {"found": True, "standby": True}

    await fresh(scenario())
