"""The HTTP face: FastAPI on `persistence.integrations.fastapi`.

- the lifespan builds the engine (`lifespan()`, settings from the environment) and the ledger;
- errors are RFC 9457 problem details (`install_exception_handlers`): 404, 409, 422, 503;
- `ReadOnlyTransactionDep` / `TransactionDep` run a request in one `transaction()` block;
- `list_params` turns the query string into checked filters, an order and a keyset cursor.

`create_app(engine=...)` runs on an engine you already have (tests pass the plugin's `engine`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from claims_service.classifier import Classifier, KeywordClassifier
from claims_service.events import Outbox
from claims_service.service import ClaimService, Verdict
from persistence import AICallLogger, DatabaseConfig
from persistence.integrations.fastapi import (
    ListQuery,
    ReadOnlyTransactionDep,
    TransactionDep,
    engine_of,
    install_exception_handlers,
    lifespan,
    list_params,
)
from persistence.models import Claim, VerificationResult


class ClaimIn(BaseModel):
    external_id: str
    content: str
    source: str | None = None


class ClaimOut(BaseModel):
    id: uuid.UUID
    external_id: str
    content: str
    claim_type: str | None
    source: str | None
    created_at: datetime

    @classmethod
    def of(cls, claim: Claim) -> ClaimOut:
        return cls(
            id=claim.id,
            external_id=claim.external_id,
            content=claim.content,
            claim_type=claim.claim_type,
            source=claim.source,
            created_at=claim.created_at,
        )


class CreatedOut(ClaimOut):
    ai_call_id: int


class ClaimPage(BaseModel):
    items: list[ClaimOut]
    next: str | None = Field(description="pass back as ?after= for the next page")


class VerdictIn(BaseModel):
    framework: str
    valid: bool
    confidence: float  # 0..1 is the database's rule (a CHECK): outside it is a 422 problem


class VerificationOut(BaseModel):
    id: uuid.UUID
    framework: str
    valid: bool
    confidence: float

    @classmethod
    def of(cls, row: VerificationResult) -> VerificationOut:
        return cls(
            id=row.id,
            framework=row.framework,
            valid=row.result.get("valid") is True,
            confidence=row.confidence,
        )


claim_query = list_params(
    Claim,
    filters={"claim_type": ..., "external_id": ..., "source": ..., "created_at": ["gte", "lt"]},
    order=["-created_at", "created_at"],
    max_limit=100,
)
ClaimQuery = Annotated[ListQuery[Claim], Depends(claim_query)]

SERVICE_STATE = "claim_service"


def get_service(request: Request) -> ClaimService:
    service = getattr(request.app.state, SERVICE_STATE, None)
    if not isinstance(service, ClaimService):
        raise RuntimeError("the claims service is not running: use create_app()'s lifespan")
    return service


ServiceDep = Annotated[ClaimService, Depends(get_service)]


def create_app(
    *,
    engine: AsyncEngine | None = None,
    config: DatabaseConfig | None = None,
    classifier: Classifier | None = None,
    outbox: Outbox | None = None,
) -> FastAPI:
    """The service. Without `engine`, persistence's `lifespan(config)` builds (and disposes) one."""
    classify = classifier if classifier is not None else KeywordClassifier()
    events = outbox if outbox is not None else Outbox()

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        # With `engine` (the caller's, e.g. a test's): used and left open; else built and disposed.
        database = lifespan(engine=engine) if engine is not None else lifespan(config)
        async with database(app), AICallLogger(engine_of(app)) as ledger:
            setattr(app.state, SERVICE_STATE, ClaimService(engine_of(app), ledger, classify, events))
            try:
                yield
            finally:
                delattr(app.state, SERVICE_STATE)

    app = FastAPI(title="claims", lifespan=run)
    install_exception_handlers(app)

    @app.post("/claims", status_code=201)
    async def create_claim(
        body: ClaimIn, service: ServiceDep, actor: Annotated[str, Header(alias="X-Actor")] = "anonymous"
    ) -> CreatedOut:
        # No TransactionDep: the service opens its own block, after logging the AI call (see submit).
        done = await service.submit(
            external_id=body.external_id, content=body.content, source=body.source, actor=actor
        )
        return CreatedOut(**ClaimOut.of(done.claim).model_dump(), ai_call_id=done.ai_call_id)

    @app.get("/claims/{claim_id}")
    async def get_claim(claim_id: str, service: ServiceDep, _: ReadOnlyTransactionDep) -> ClaimOut:
        return ClaimOut.of(await service.get(claim_id))

    @app.get("/claims")
    async def list_claims(service: ServiceDep, query: ClaimQuery, _: ReadOnlyTransactionDep) -> ClaimPage:
        # ?claim_type=legal&created_at__gte=2026-01-01T00:00:00Z&order_by=created_at&limit=20&after=...
        page = await service.page(query)
        return ClaimPage(items=[ClaimOut.of(c) for c in page.items], next=page.next_cursor)

    @app.post("/claims/{claim_id}/verifications", status_code=201)
    async def verify_claim(
        claim_id: str, verdicts: list[VerdictIn], service: ServiceDep, _: TransactionDep
    ) -> list[VerificationOut]:
        # The request's block commits before the response is sent; the events go out after the commit.
        rows = await service.verify(claim_id, [Verdict(v.framework, v.valid, v.confidence) for v in verdicts])
        return [VerificationOut.of(row) for row in rows]

    return app
