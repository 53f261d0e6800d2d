"""persistence.integrations.fastapi: a real FastAPI app over a real PostgreSQL, driven through httpx."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import text

from persistence import ClaimRepository, DatabaseConfig, InvalidRequestError
from persistence.engine import build_engine
from persistence.integrations.fastapi import (
    ENGINE_STATE,
    EngineDep,
    ListQuery,
    QueryParameterError,
    ReadOnlyTransactionDep,
    TransactionDep,
    install_exception_handlers,
    lifespan,
    list_params,
)
from persistence.models import AICall, Claim, TrainingData

pytestmark = pytest.mark.commits

PROBLEM = "application/problem+json"


class ClaimIn(BaseModel):
    external_id: str
    content: str
    claim_type: str | None = None


def _out(claim: Claim) -> dict[str, str | None]:
    return {"id": str(claim.id), "external_id": claim.external_id, "claim_type": claim.claim_type}


claims_query = list_params(
    Claim,
    filters={"claim_type": ..., "created_at": ["gte", "lt"], "external_id": ["in"]},
    order=["created_at", "-created_at"],
    max_limit=5,
)
ClaimQuery = Annotated[ListQuery[Claim], Depends(claims_query)]


def make_app(config: DatabaseConfig, *, check: bool = True) -> FastAPI:
    app = FastAPI(lifespan=lifespan(config, check=check))
    install_exception_handlers(app, retry_after=2)

    @app.post("/claims", status_code=201)
    async def create(body: ClaimIn, engine: EngineDep, _: TransactionDep) -> dict[str, str | None]:
        return _out(await ClaimRepository(engine).add(**body.model_dump()))

    @app.post("/claims/fail-after-write")
    async def fail_after_write(body: ClaimIn, engine: EngineDep, _: TransactionDep) -> None:
        await ClaimRepository(engine).add(**body.model_dump())
        raise HTTPException(status_code=400, detail="changed my mind")

    @app.post("/claims/read-only")
    async def write_read_only(body: ClaimIn, engine: EngineDep, _: ReadOnlyTransactionDep) -> None:
        await ClaimRepository(engine).add(**body.model_dump())

    @app.get("/claims/{claim_id}")
    async def get(claim_id: str, engine: EngineDep, _: ReadOnlyTransactionDep) -> dict[str, str | None]:
        return _out(await ClaimRepository(engine).get(claim_id))

    @app.get("/claims")
    async def list_claims(engine: EngineDep, query: ClaimQuery) -> dict[str, object]:
        page = await query.page(ClaimRepository(engine))
        return {"items": [_out(c) for c in page.items], "next": page.next_cursor}

    @app.get("/lookup-types")
    async def lookup_types(query: ClaimQuery) -> dict[str, str]:
        return {name: type(value).__name__ for name, value in query.lookups.items()}

    return app


@asynccontextmanager
async def serve(config: DatabaseConfig, *, check: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(config, check=check)
    async with app.router.lifespan_context(app):
        assert getattr(app.state, ENGINE_STATE, None) is not None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    assert getattr(app.state, ENGINE_STATE, None) is None


@pytest.fixture
async def client(fresh_database: DatabaseConfig) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(fresh_database) as c:
        yield c


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


async def test_create_then_get(client: httpx.AsyncClient) -> None:
    created = await client.post("/claims", json={"external_id": "c-1", "content": "x", "claim_type": "a"})
    assert created.status_code == 201, created.text
    got = await client.get(f"/claims/{created.json()['id']}")
    assert got.status_code == 200
    assert got.json() == created.json()


async def test_missing_id_is_404_problem(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    body = assert_problem(await client.get(f"/claims/{missing}"), 404)
    assert body["entity"] == "Claim"
    assert str(missing) in str(body["detail"])
    assert body["instance"] == f"/claims/{missing}"


async def test_malformed_id_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/claims/not-a-uuid"), 422)


async def test_duplicate_is_409_with_constraint(client: httpx.AsyncClient) -> None:
    claim = {"external_id": "dup", "content": "secret content"}
    assert (await client.post("/claims", json=claim)).status_code == 201
    body = assert_problem(await client.post("/claims", json=claim), 409)
    assert body["constraint"] == "uq_claims_external_id"
    assert "dup" not in str(body["detail"])  # the server's detail ("Key (external_id)=(dup)") never leaks


async def test_bad_value_is_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/claims", json={"external_id": "c", "content": "x", "claim_type": "t" * 101}
    )
    body = assert_problem(response, 422)
    assert body["field"] == "claim_type"
    assert "claim_type" in str(body["detail"])


async def test_read_only_dependency_refuses_a_write(client: httpx.AsyncClient) -> None:
    response = await client.post("/claims/read-only", json={"external_id": "ro", "content": "x"})
    body = assert_problem(response, 500)
    assert "INSERT" not in str(body) and "ro" not in str(body["detail"])
    assert body["type"] == "urn:persistence:problem:database-error"  # the server refused it (25006)
    listed = await client.get("/claims", params={"external_id__in": "ro"})
    assert listed.json()["items"] == []
    # The same body is a valid write in a read-write transaction: only read_only refused it.
    assert (await client.post("/claims", json={"external_id": "ro", "content": "x"})).status_code == 201


async def test_endpoint_raising_after_a_write_rolls_it_back(
    client: httpx.AsyncClient, fresh_database: DatabaseConfig
) -> None:
    response = await client.post("/claims/fail-after-write", json={"external_id": "gone", "content": "x"})
    assert response.status_code == 400
    listed = await client.get("/claims", params={"external_id__in": "gone"})
    assert listed.status_code == 200
    assert listed.json()["items"] == []
    # The id is free again: the write was rolled back, not merely hidden.
    assert (await client.post("/claims", json={"external_id": "gone", "content": "x"})).status_code == 201


async def test_a_failed_commit_answers_an_error_not_the_endpoints_result(
    client: httpx.AsyncClient, fresh_database: DatabaseConfig
) -> None:
    # A deferred constraint trigger fails only at COMMIT, after the endpoint has returned: the client
    # must get the error (the commit runs before the response is sent), not a 201 for a lost write.
    engine = build_engine(fresh_database)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE FUNCTION refuse_explode() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.claim_type = 'explode' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '23514', "
                    "CONSTRAINT = 'ck_claims_no_explode'; END IF; RETURN NEW; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE CONSTRAINT TRIGGER no_explode AFTER INSERT ON claims DEFERRABLE INITIALLY DEFERRED "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_explode()"
                )
            )
    finally:
        await engine.dispose()
    response = await client.post(
        "/claims", json={"external_id": "x", "content": "x", "claim_type": "explode"}
    )
    body = assert_problem(response, 422)
    assert body["constraint"] == "ck_claims_no_explode"
    assert (await client.get("/claims", params={"external_id__in": "x"})).json()["items"] == []


async def test_list_filters_order_and_cursor_page_through_all_rows(client: httpx.AsyncClient) -> None:
    made = []
    for n in range(12):
        response = await client.post(
            "/claims", json={"external_id": f"e{n:02}", "content": "x", "claim_type": "ab"[n % 3 == 0]}
        )
        made.append(response.json())
    wanted = [c["external_id"] for c in made if c["claim_type"] == "a"][::-1]
    seen: list[str] = []
    params: dict[str, str] = {"claim_type": "a", "order_by": "-created_at", "limit": "3"}
    pages = 0
    while True:
        response = await client.get("/claims", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [c["external_id"] for c in page["items"]]
        pages += 1
        if page["next"] is None:
            break
        params["after"] = page["next"]
    assert seen == wanted
    assert pages == 3  # 8 rows of type "a", 3 a page

    # A created_at window: the bounds arrive as ISO strings and compare as timestamps.
    everything = (await client.get("/claims", params={"order_by": "created_at", "limit": "5"})).json()
    first_three = [c["external_id"] for c in everything["items"][:3]]
    assert first_three == ["e00", "e01", "e02"]


async def test_filter_values_are_coerced_to_column_types(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/lookup-types",
        params={"created_at__gte": "2026-01-01T00:00:00+00:00", "claim_type": "a", "external_id__in": "x,y"},
    )
    assert response.json() == {"created_at__gte": "datetime", "claim_type": "str", "external_id__in": "list"}


def _request(query: str) -> Request:
    return Request(
        {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": query.encode()}
    )


async def test_list_params_types_numbers_bools_and_isnull_by_column() -> None:
    calls = list_params(AICall, filters={"cost_usd": ["gte", "in"], "latency_ms": ["lt", "isnull"]})
    examples = list_params(TrainingData, filters={"validity": ..., "confidence": ["gte"]})
    query = await calls(
        _request("cost_usd__gte=0.5&cost_usd__in=1,2.25&latency_ms__lt=300&latency_ms__isnull=false")
    )
    assert query.lookups == {
        "cost_usd__gte": Decimal("0.5"),
        "cost_usd__in": [Decimal(1), Decimal("2.25")],
        "latency_ms__lt": 300,
        "latency_ms__isnull": False,
    }
    assert type(query.lookups["cost_usd__gte"]) is Decimal and type(query.lookups["latency_ms__lt"]) is int
    example_query = await examples(_request("validity=true&confidence__gte=0.9"))
    assert example_query.lookups == {"validity": True, "confidence__gte": 0.9}
    for bad in ("cost_usd__gte=1e", "cost_usd__in=1,,2", "latency_ms__lt=1.5", "latency_ms__isnull=maybe"):
        with pytest.raises(QueryParameterError) as caught:
            await calls(_request(bad))
        assert caught.value.parameter == bad.split("=")[0]
    with pytest.raises(QueryParameterError, match="given more than once"):
        await examples(_request("validity=true&validity=false"))


def test_list_parameters_show_in_the_openapi_schema(db_config: DatabaseConfig) -> None:
    schema = make_app(db_config).openapi()
    names = {param["name"] for param in schema["paths"]["/claims"]["get"]["parameters"]}
    assert names == {
        "claim_type",
        "created_at__gte",
        "created_at__lt",
        "external_id__in",
        "order_by",
        "limit",
        "after",
    }


def test_list_params_refuses_unknown_fields_operators_and_orders_when_built() -> None:
    with pytest.raises(InvalidRequestError, match="no field"):
        list_params(Claim, filters={"nope": ...})
    with pytest.raises(InvalidRequestError, match="unknown operator"):
        list_params(Claim, filters={"content": ["like"]})
    with pytest.raises(InvalidRequestError, match="no field"):
        list_params(Claim, order=["-nope"])
    with pytest.raises(InvalidRequestError, match="used twice"):
        list_params(Claim, filters={"claim_type": ...}, extra=["claim_type"])


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"content": "x"}, "content"),
        ({"claim_type__ne": "a"}, "claim_type__ne"),
        ({"created_at__gte": "yesterday"}, "created_at__gte"),
        ({"created_at__gte": "2026-01-01T00:00:00"}, "created_at__gte"),  # naive: ambiguous
        ({"order_by": "content"}, "order_by"),
        ({"limit": "6"}, "limit"),
        ({"limit": "zero"}, "limit"),
    ],
)
async def test_disallowed_or_bad_query_parameter_is_422(
    client: httpx.AsyncClient, params: dict[str, str], parameter: str
) -> None:
    body = assert_problem(await client.get("/claims", params=params), 422)
    assert body["parameter"] == parameter


async def test_tampered_cursor_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/claims", params={"after": "AAAA"}), 422)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_database_is_503_with_retry_after() -> None:
    config = DatabaseConfig(
        host="127.0.0.1", port=closed_port(), database="nowhere", user="nobody", password="hunter2-secret"
    )
    async with serve(config, check=False) as client:
        response = await client.get(f"/claims/{uuid.uuid4()}")
        listed = await client.get("/claims")
    for answer in (response, listed):
        assert assert_problem(answer, 503)["type"] == "urn:persistence:problem:unavailable"
        assert answer.headers["retry-after"] == "2"
        assert "hunter2" not in answer.text and "127.0.0.1" not in answer.text and "nobody" not in answer.text


def test_importing_persistence_does_not_import_fastapi() -> None:
    code = "import sys, persistence, persistence.integrations; assert 'fastapi' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_lifespan_given_an_engine_uses_it_and_leaves_it_open(fresh_database: DatabaseConfig) -> None:
    from persistence.errors import ConfigurationError
    from persistence.integrations.fastapi import engine_of

    engine = build_engine(fresh_database)
    try:
        app = FastAPI(lifespan=lifespan(engine=engine))
        with pytest.raises(ConfigurationError, match="lifespan"):
            engine_of(app)
        pool = engine.sync_engine.pool
        async with app.router.lifespan_context(app):
            assert engine_of(app) is engine
        with pytest.raises(ConfigurationError, match="lifespan"):
            engine_of(app)
        assert (
            engine.sync_engine.pool is pool
        )  # not disposed (that replaces the pool): who built it disposes it
        with pytest.raises(ConfigurationError, match="either config or engine"):
            lifespan(fresh_database, engine=engine)
    finally:
        await engine.dispose()
