"""FastAPI integration (`pip install persistence[fastapi]`): engine lifespan, transaction
dependencies, RFC 9457 problem responses for our errors, and checked list-endpoint query parameters.

    app = FastAPI(lifespan=lifespan(DatabaseConfig()))
    install_exception_handlers(app)

    @app.post("/claims", status_code=201)
    async def create(body: ClaimIn, engine: EngineDep, _: TransactionDep) -> ClaimOut: ...

    claim_query = list_params(Claim, filters={"claim_type": ..., "created_at": ["gte", "lt"]},
                              order=["-created_at", "created_at"], max_limit=100)

    @app.get("/claims")
    async def claims(engine: EngineDep, query: Annotated[ListQuery[Claim], Depends(claim_query)]):
        page = await query.page(ClaimRepository(engine))

The transaction dependencies use FastAPI's `scope="function"`: the block commits when the endpoint
has returned (and its response was built), *before* the response is sent, so a failed commit becomes
an error response instead of a 200 for work that was rolled back. An exception leaving the endpoint
(an `HTTPException` included) rolls the block back. This is the only module that imports fastapi.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from inspect import Parameter, Signature
from types import EllipsisType
from typing import Annotated, Any, Generic

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Boolean, Column, inspect
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from persistence.api_keys import (
    ApiKeyPrincipal,
    ApiKeys,
    ApiKeyScopeError,
    AuthenticationError,
    InvalidApiKey,
)
from persistence.api_keys import AuthenticationFailure as _Failure
from persistence.config import DatabaseConfig
from persistence.engine import HooksArg, create_database_engine
from persistence.errors import (
    ConfigurationError,
    ConflictError,
    DatabaseConnectionError,
    IntegrityViolation,
    InvalidRequestError,
    NotFoundError,
    PersistenceError,
    TransactionError,
    TransientError,
    ValidationError,
)
from persistence.limits import LimitExceeded, Limits
from persistence.replicas import CarriedToken, carried_read_your_writes_token
from persistence.repository.base import ModelT
from persistence.repository.coerce import check_value
from persistence.repository.filters import field_key, order_terms
from persistence.repository.reads import MAX_LIMIT, Page, Reads
from persistence.transaction import Transaction, transaction

__all__ = [
    "API_KEYS_STATE",
    "ENGINE_STATE",
    "LIMITS_STATE",
    "READ_YOUR_WRITES_HEADER",
    "ApiKeyPrincipalDep",
    "EngineDep",
    "LimitsDep",
    "ListQuery",
    "Problem",
    "QueryParameterError",
    "ReadOnlyTransactionDep",
    "ReadYourWritesMiddleware",
    "TransactionDep",
    "api_key_principal",
    "api_keys_of",
    "engine_of",
    "get_engine",
    "get_limits",
    "in_read_only_transaction",
    "in_transaction",
    "install_exception_handlers",
    "lifespan",
    "limits_of",
    "list_params",
    "problem_for",
    "require_scopes",
]

log = logging.getLogger("persistence.integrations.fastapi")

ENGINE_STATE = "persistence_engine"
"""The `app.state` attribute that holds the engine while the app runs."""


# -- engine ---------------------------------------------------------------------------------------------
def lifespan(
    config: DatabaseConfig | None = None,
    *,
    check: bool = True,
    hooks: HooksArg = None,
    engine: AsyncEngine | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan for `FastAPI(lifespan=...)`: builds the engine on startup (`create_database_engine`:
    settings from `config` or the environment; `check=False` starts even when the database is down)
    and disposes it on shutdown. Given an `engine` (a test's, or one the service shares), it uses that
    one and leaves it open: who built it disposes it. To combine it with your own,
    `async with lifespan(...)(app):` in yours.
    """
    if engine is not None and config is not None:
        raise ConfigurationError("lifespan(): pass either config or engine, not both")

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        current = await create_database_engine(config, check=check, hooks=hooks) if engine is None else engine
        setattr(app.state, ENGINE_STATE, current)
        try:
            yield
        finally:
            limits = getattr(app.state, LIMITS_STATE, None)
            if isinstance(limits, Limits):
                delattr(app.state, LIMITS_STATE)
                await limits.close()
            keys = getattr(app.state, API_KEYS_STATE, None)
            if isinstance(keys, ApiKeys):  # write the keys' last uses while the engine is still open
                delattr(app.state, API_KEYS_STATE)
                await keys.close()
            delattr(app.state, ENGINE_STATE)
            if owned:
                await current.dispose()

    return run


def engine_of(app: FastAPI) -> AsyncEngine:
    """The engine the lifespan put on `app` (a `ConfigurationError` if the lifespan is not running):
    for code outside a request, such as a background task or a startup hook of your own."""
    engine = getattr(app.state, ENGINE_STATE, None)
    if not isinstance(engine, AsyncEngine):
        raise ConfigurationError(
            "no engine on app.state: pass persistence's lifespan() to FastAPI(lifespan=...)"
        )
    return engine


def get_engine(request: Request) -> AsyncEngine:
    """Dependency: the engine the lifespan built (a `ConfigurationError` if the lifespan is not running)."""
    return engine_of(request.app)


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]


# -- transactions ---------------------------------------------------------------------------------------
async def in_transaction() -> AsyncIterator[Transaction]:
    """Dependency: the request runs in one `transaction()` block (commit on return, rollback on an
    exception). Use it through `TransactionDep`, or `Depends(in_transaction, scope="function")`:
    without `scope="function"` FastAPI would commit only after the response was sent."""
    async with transaction() as block:
        yield block


async def in_read_only_transaction() -> AsyncIterator[Transaction]:
    """Dependency: the request runs in one `transaction(read_only=True)` block (writes are refused by
    the server). Use it through `ReadOnlyTransactionDep`."""
    async with transaction(read_only=True) as block:
        yield block


TransactionDep = Annotated[Transaction, Depends(in_transaction, scope="function")]
ReadOnlyTransactionDep = Annotated[Transaction, Depends(in_read_only_transaction, scope="function")]


# -- read-your-writes between services -------------------------------------------------------------------
READ_YOUR_WRITES_HEADER = "X-Read-Your-Writes"
"""The header that carries a read-your-writes token (a WAL position) between services."""


class ReadYourWritesMiddleware:
    """Carries the read-your-writes token across services (`app.add_middleware(ReadYourWritesMiddleware)`).

    A request's `X-Read-Your-Writes` header is adopted for that request: its read-only blocks then
    run on a replica only once it has replayed that commit (else on the primary). The response
    carries the request's token after its commits (the transaction dependencies commit before the
    response starts), so the caller can forward it to the next service. A malformed header is a 422
    problem response and nothing runs. Nothing leaks between requests: the context's token is
    restored when the request ends."""

    def __init__(self, app: ASGIApp, header: str = READ_YOUR_WRITES_HEADER) -> None:
        self.app = app
        self.header = header
        self._key = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == self._key), None)

        carried: CarriedToken | None = None

        async def sending(message: Message) -> None:
            # The request's token, also when its commits ran in a child task (BaseHTTPMiddleware).
            if message["type"] == "http.response.start" and carried is not None:
                token = carried.current()
                if token is not None:
                    headers = [*message.get("headers", ()), (self._key, token.encode("latin-1"))]
                    message = {**message, "headers": headers}
            await send(message)

        with contextlib.ExitStack() as stack:
            try:
                carried = stack.enter_context(carried_read_your_writes_token(given))
            except InvalidRequestError as exc:
                problem = Problem(422, "Invalid Request", "invalid-request", f"{self.header}: {exc}")
                response = JSONResponse(problem.body(scope.get("path")), status_code=422,
                                        media_type="application/problem+json")  # fmt: skip
                await response(scope, receive, send)
                return
            await self.app(scope, receive, sending)


# -- problem details ------------------------------------------------------------------------------------
class QueryParameterError(InvalidRequestError):
    """A list endpoint's query string named a parameter it does not allow, or gave it a bad value."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 9457 problem: `type` is `urn:persistence:problem:<slug>`; `extra` holds members such
    as `field` or `constraint`. Details are written here, never copied from a server message (those
    may quote values), and never name a host, SQL or a parameter."""

    status: int
    title: str
    slug: str
    detail: str
    extra: dict[str, str] = field(default_factory=dict)

    def body(self, instance: str | None = None) -> dict[str, object]:
        body: dict[str, object] = {
            "type": f"urn:persistence:problem:{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body


_INTEGRITY_DETAILS = {
    "23502": "a required value is missing",
    "23503": "a referenced row does not exist, or another row still refers to this one",
    "23514": "a value breaks a rule of the schema",
}


def problem_for(exc: PersistenceError) -> Problem:
    """The HTTP problem for one of our errors (most specific class first)."""
    if isinstance(exc, AuthenticationError):
        return Problem(401, "Unauthorized", "unauthorized", str(exc), {"reason": exc.reason.value})
    if isinstance(exc, LimitExceeded):
        refused = exc.decision.refused_by or "rate"
        return Problem(429, "Too Many Requests", "limit-exceeded", str(exc), {"limit": refused})
    if isinstance(exc, ApiKeyScopeError):
        return Problem(403, "Forbidden", "forbidden", str(exc), {"missing_scopes": " ".join(exc.missing)})
    if isinstance(exc, NotFoundError):
        return Problem(
            404, "Not Found", "not-found", f"{exc.entity} {exc.key} not found", {"entity": exc.entity}
        )
    if isinstance(exc, ConflictError):
        extra = {"constraint": exc.constraint} if exc.constraint else {}
        return Problem(409, "Conflict", "conflict", "the request conflicts with an existing row", extra)
    if isinstance(exc, TransientError):
        return Problem(
            503, "Service Unavailable", "unavailable", "the database is temporarily unavailable; try again"
        )
    if isinstance(exc, QueryParameterError):
        return Problem(
            422, "Invalid Query Parameter", "invalid-query", str(exc), {"parameter": exc.parameter}
        )
    if isinstance(exc, IntegrityViolation):
        extra = {}
        if exc.column:
            extra["field"] = exc.column
        if exc.constraint:
            extra["constraint"] = exc.constraint
        if exc.sqlstate is None:  # refused by our own checks: the message names the field, never the value
            return Problem(422, "Invalid Value", "invalid-value", str(exc), extra)
        if isinstance(exc, ValidationError):
            detail = "a value cannot be stored in its column"
        else:
            detail = _INTEGRITY_DETAILS.get(exc.sqlstate, "a value breaks a rule of the schema")
        return Problem(422, "Invalid Value", "invalid-value", detail, extra)
    if isinstance(exc, InvalidRequestError):  # raised before any SQL, from our own checks
        return Problem(422, "Invalid Request", "invalid-request", str(exc))
    if isinstance(exc, TransactionError):
        return Problem(500, "Transaction Failed", "transaction", "the transaction failed and was rolled back")
    if isinstance(exc, DatabaseConnectionError):
        return Problem(500, "Database Unavailable", "database-unavailable", "the database cannot be reached")
    return Problem(500, "Database Error", "database-error", "the database could not complete the request")


def install_exception_handlers(app: FastAPI, *, retry_after: int = 1) -> None:
    """Answer every `PersistenceError` with an `application/problem+json` response (`problem_for`);
    503s carry `Retry-After: <retry_after>` seconds. 5xx errors are logged with their traceback on
    the `persistence.integrations.fastapi` logger."""

    async def handle(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, PersistenceError):  # registered for PersistenceError only
            raise exc
        problem = problem_for(exc)
        if problem.status >= 500:
            log.error("%s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        headers = {"Retry-After": str(retry_after)} if problem.status == 503 else None
        if problem.status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="api"'}
        if isinstance(exc, LimitExceeded):
            headers = exc.decision.headers()
        return JSONResponse(
            problem.body(request.url.path),
            status_code=problem.status,
            headers=headers,
            media_type="application/problem+json",
        )

    app.add_exception_handler(PersistenceError, handle)


# -- API keys -------------------------------------------------------------------------------------------
API_KEYS_STATE = "persistence_api_keys"
"""The `app.state` attribute holding the app's `ApiKeys` (set your own before the first request to
choose the pepper in code; otherwise one is built from the environment, `PERSISTENCE_API_KEY_*`)."""

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer sk_live_...")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: sk_live_...")


def api_keys_of(app: FastAPI) -> ApiKeys:
    """The app's `ApiKeys` (built on first use over the lifespan's engine; closed by the lifespan)."""
    keys = getattr(app.state, API_KEYS_STATE, None)
    if not isinstance(keys, ApiKeys):
        keys = ApiKeys(engine_of(app))
        setattr(app.state, API_KEYS_STATE, keys)
    return keys


async def api_key_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_api_key_header)],
) -> ApiKeyPrincipal:
    """Dependency: the principal of the request's key (`Authorization: Bearer <key>` or
    `X-API-Key: <key>`); a missing, invalid, expired or revoked key is a 401 problem."""
    given = {key for key in (bearer.credentials if bearer is not None else None, header) if key}
    if not given:
        raise InvalidApiKey(_Failure.MISSING)
    if len(given) > 1:  # two different keys: refuse rather than pick one
        raise InvalidApiKey()
    return await api_keys_of(request.app).authenticate(given.pop())


ApiKeyPrincipalDep = Annotated[ApiKeyPrincipal, Depends(api_key_principal)]


def require_scopes(*scopes: str) -> Callable[[ApiKeyPrincipal], Awaitable[ApiKeyPrincipal]]:
    """Dependency factory: the principal, if its key has every one of `scopes` (else a 403 problem)."""

    async def dependency(principal: ApiKeyPrincipalDep) -> ApiKeyPrincipal:
        principal.require(*scopes)
        return principal

    return dependency


# -- limits -------------------------------------------------------------------------------------------
LIMITS_STATE = "persistence_limits"
"""The `app.state` attribute holding the app's `Limits` (set your own before the first request to
choose its options; otherwise one is built over the lifespan's engine and the app's `ApiKeys`)."""


def limits_of(app: FastAPI) -> Limits:
    """The app's `Limits` (built on first use; closed by the lifespan)."""
    limits = getattr(app.state, LIMITS_STATE, None)
    if not isinstance(limits, Limits):
        limits = Limits(engine_of(app), api_keys=api_keys_of(app))
        setattr(app.state, LIMITS_STATE, limits)
    return limits


def get_limits(request: Request) -> Limits:
    """Dependency: the app's `Limits`. `(await limits.admit(principal, ...)).granted()` raises
    `LimitExceeded`, answered as a 429 problem with `Retry-After` and `RateLimit-*` headers."""
    return limits_of(request.app)


LimitsDep = Annotated[Limits, Depends(get_limits)]


# -- list endpoints -------------------------------------------------------------------------------------
_OPERATORS = frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "isnull"})
_RESERVED = frozenset({"order_by", "limit", "after"})
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

FilterSpec = Mapping[str, EllipsisType | str | Sequence[str]]
"""Allowed filters: field -> `...` (equality only), one operator, or a list of them."""


@dataclass(frozen=True, slots=True)
class ListQuery(Generic[ModelT]):
    """A list request's checked lookups (values typed like their columns), order, limit and cursor."""

    model: type[ModelT]
    lookups: Mapping[str, object]
    order_by: tuple[str, ...]
    limit: int
    after: str | None

    async def page(self, repository: Reads[ModelT]) -> Page[ModelT]:
        """`repository.page(...)` with these parameters; `next_cursor` goes back as `?after=`."""
        self._check(repository)
        return await repository.page(
            order_by=self.order_by, limit=self.limit, after=self.after, load=(), **self.lookups
        )

    async def list(self, repository: Reads[ModelT]) -> list[ModelT]:
        """`repository.list(...)` with these lookups, order and limit (a cursor is refused)."""
        self._check(repository)
        if self.after is not None:
            raise QueryParameterError("after", "after: this endpoint does not page by cursor")
        return await repository.list(
            order_by=self.order_by, limit=self.limit, offset=0, load=(), **self.lookups
        )

    def _check(self, repository: Reads[ModelT]) -> None:
        if repository.model is not self.model:
            raise InvalidRequestError(
                f"a {self.model.__name__} query cannot run on a repository of {repository.model.__name__}"
            )


@dataclass(frozen=True, slots=True)
class _Allowed:
    key: str  # the model attribute
    op: str
    column: Column[Any]


def list_params(
    model: type[ModelT],
    *,
    filters: FilterSpec | None = None,
    order: Sequence[str] = (),
    default_limit: int | None = None,
    max_limit: int = 100,
    extra: Collection[str] = (),
) -> Callable[[Request], Awaitable[ListQuery[ModelT]]]:
    """A dependency that reads `?field=v&field__gte=v&order_by=-created_at&limit=20&after=<cursor>`.

    Only the `filters` given are accepted (`field` for equality, `field__op` otherwise; `__in` and
    `__not_in` take comma-separated values, `__isnull` true/false); values are checked and converted
    by the column's type (`confidence__gte=0.5` becomes a Decimal). `order_by` must be one of `order`
    (each entry a field or comma-separated fields, `-` for descending; the first is the default).
    `limit` defaults to `default_limit` (50 or `max_limit` if smaller).
    `extra` names the endpoint's own query parameters; any other parameter is a 422 problem.
    Mistakes in the arguments themselves raise `InvalidRequestError` when the app is built.
    """
    if default_limit is None:
        default_limit = min(50, max_limit)
    if not 1 <= default_limit <= max_limit <= MAX_LIMIT:
        raise InvalidRequestError(f"list_params: need 1 <= default_limit <= max_limit <= {MAX_LIMIT}")
    allowed = _allowed_filters(model, filters or {})
    orders: dict[str, tuple[str, ...]] = {}
    for entry in order:
        names = tuple(name.strip() for name in entry.split(","))
        order_terms(model, names)  # every field exists, none twice
        orders[entry] = names
    default_order = orders[order[0]] if order else ()
    clash = (set(allowed) | set(extra)) & _RESERVED or set(allowed) & set(extra)
    if clash:
        raise InvalidRequestError(
            f"list_params: query parameter names used twice: {', '.join(sorted(clash))}"
        )
    known = sorted(allowed)

    def parse(request: Request) -> ListQuery[ModelT]:
        params = request.query_params
        lookups: dict[str, object] = {}
        for name in params:
            values = params.getlist(name)
            if len(values) > 1:
                raise QueryParameterError(name, f"{name}: given more than once")
            if name in _RESERVED or name in extra:
                continue
            spec = allowed.get(name)
            if spec is None:
                shown = ", ".join(known) or "none"
                raise QueryParameterError(name, f"{name}: not a filter of this endpoint (filters: {shown})")
            lookups[name] = _parse(model, name, spec, values[0])
        order_by = default_order
        raw_order = params.get("order_by")
        if raw_order is not None:
            if raw_order not in orders:
                shown = ", ".join(orders) or "none"
                raise QueryParameterError(
                    "order_by", f"order_by: not an order of this endpoint (orders: {shown})"
                )
            order_by = orders[raw_order]
        limit = _limit(params.get("limit"), default_limit, max_limit)
        return ListQuery(model, lookups, order_by, limit, params.get("after"))

    return _ListDependency(parse, _signature(allowed, list(orders), max_limit))


class _ListDependency(Generic[ModelT]):
    """The dependency `list_params` returns. Its signature lists the query parameters, so they show
    in the OpenAPI schema; their values are read (and checked) from the request itself, so that a
    bad or unknown one is our 422 problem."""

    def __init__(self, parse: Callable[[Request], ListQuery[ModelT]], signature: Signature) -> None:
        self._parse = parse
        self.__signature__ = signature

    async def __call__(self, request: Request, **_: object) -> ListQuery[ModelT]:
        return self._parse(request)


def _signature(allowed: Mapping[str, _Allowed], orders: Sequence[str], max_limit: int) -> Signature:
    def query(name: str, alias: str, description: str) -> Parameter:
        annotation = Annotated[str | None, Query(alias=alias, description=description)]
        return Parameter(name, Parameter.KEYWORD_ONLY, default=None, annotation=annotation)

    params = [Parameter("request", Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    for n, (name, spec) in enumerate(sorted(allowed.items())):
        how = {"in": "comma-separated values", "not_in": "comma-separated values", "isnull": "true or false"}
        params.append(query(f"filter_{n}", name, f"{spec.key} {spec.op}: {how.get(spec.op, 'a value')}"))
    if orders:
        params.append(query("order_by", "order_by", f"one of: {' | '.join(orders)} (default {orders[0]})"))
    params.append(query("limit", "limit", f"rows per page, 1 to {max_limit}"))
    params.append(query("after", "after", "the next_cursor of the previous page"))
    return Signature(params)


def _allowed_filters(model: type[Any], filters: FilterSpec) -> dict[str, _Allowed]:
    allowed: dict[str, _Allowed] = {}
    mapper = inspect(model)
    for name, spec in filters.items():
        key = field_key(model, name)
        ops = ["eq"] if spec is ... else [spec] if isinstance(spec, str) else list(spec)
        [column] = mapper.column_attrs[key].columns[:1]
        if not isinstance(column, Column):
            raise InvalidRequestError(f"list_params: {name} is not a table column")
        for op in ops:
            if op not in _OPERATORS:
                raise InvalidRequestError(
                    f"list_params: unknown operator {op!r} for {name} (operators: {', '.join(sorted(_OPERATORS))})"
                )
            allowed[name if op == "eq" else f"{name}__{op}"] = _Allowed(key, op, column)
    return allowed


def _parse(model: type[Any], name: str, spec: _Allowed, raw: str) -> object:
    if spec.op == "isnull":
        return _bool(name, raw)
    if spec.op in ("in", "not_in"):
        items = raw.split(",")
        if not all(items):
            raise QueryParameterError(name, f"{name}: expects comma-separated values, none empty")
        return [_value(model, name, spec, item) for item in items]
    return _value(model, name, spec, raw)


def _value(model: type[Any], name: str, spec: _Allowed, raw: str) -> object:
    value: object = _bool(name, raw) if isinstance(spec.column.type, Boolean) else raw
    try:
        return check_value(model.__name__, name, spec.column, value, filtering=True)
    except ValidationError as exc:
        raise QueryParameterError(name, str(exc)) from exc


def _bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise QueryParameterError(name, f"{name}: expects true or false")


def _limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if len(raw) > 9 or not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise QueryParameterError("limit", f"limit: expects an integer from 1 to {maximum}")
    return int(raw)
