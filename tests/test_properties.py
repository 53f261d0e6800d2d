"""Property: whatever a caller passes to a public write method or filter, the call ends either with the
value stored verbatim (read back equal, under the documented lossless conversions) or with a typed
`PersistenceError` and nothing written. Against the real server, with generated strings (NUL, lone
surrogates, up to 1 MB), numbers (NaN, inf, -0.0, 2**63, huge Decimals), wrong types, naive datetimes
and non-JSON values.

Outcomes are counted per target and printed at the end of the module (group totals; per target with -v),
so the counts can be quoted: `stored`/`answered` (a write kept the value / a filter ran), `ValidationError`,
`other PersistenceError` (e.g. a check constraint or a unique key, refused by the server).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import sqltypes

from persistence.ai_calls import AICallLogger
from persistence.ai_calls.batch import BatchLogger
from persistence.errors import PersistenceError, ValidationError
from persistence.models import (
    AICall,
    Claim,
    ConsensusDecision,
    ModelCheckpoint,
    ServiceHealth,
    TrainingData,
    VerificationResult,
)
from persistence.repositories import (
    AuditLogRepository,
    CheckpointRepository,
    ClaimRepository,
    ConsensusRepository,
    ServiceHealthRepository,
    TrainingDataRepository,
    VerificationRepository,
)
from persistence.repository import Repository

OUTCOMES: Counter[tuple[str, str]] = Counter()
OTHER: Counter[str] = Counter()
_serial = itertools.count()

PROPERTY_SETTINGS = settings(
    max_examples=60,
    derandomize=True,  # the same cases on every run: CI stays stable
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
"""One database per test function, shared by its examples on purpose: each example measures the
row counts before and after itself, so rows left by earlier examples do not matter."""


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    targets = sorted({target for target, _ in OUTCOMES})
    lines = ["property outcomes (target: stored-or-answered / ValidationError / other PersistenceError):"]
    groups: dict[str, Counter[str]] = {}
    for target in targets:
        row = Counter({kind: OUTCOMES[(target, kind)] for kind in ("ok", "ValidationError", "other")})
        group = (
            "ledger log_call"
            if target.startswith("log_call")
            else "ledger log_batch / BatchLogger"
            if target.startswith(("log_batch", "BatchLogger"))
            else "generic filters"
            if "(filter)" in target
            else "generic writes"
            if "." in target
            else "domain methods"
        )
        groups.setdefault(group, Counter()).update(row)
        groups.setdefault("total", Counter()).update(row)
        if request.config.get_verbosity() > 0:  # per target with -v; the group totals always
            lines.append(f"  {target:42} {row['ok']:5} / {row['ValidationError']:5} / {row['other']:5}")
    for group, row in groups.items():
        lines.append(f"  {'= ' + group:42} {row['ok']:5} / {row['ValidationError']:5} / {row['other']:5}")
    lines.append(
        "  other PersistenceErrors by class: " + ", ".join(f"{k}: {v}" for k, v in OTHER.most_common())
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        for line in lines:
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)


# -- generated values ---------------------------------------------------------------------------------------

any_char = st.characters(exclude_categories=())  # lone surrogates and NUL included
texts = st.one_of(
    st.text(any_char, max_size=20),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
    st.sampled_from(["", " ", "a" * 255 + "  ", "\x00", "\ud800", "x\udfffy", "é", "None", "0.5", "12"]),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["a", "é", "\x00", "\ud83d"]), st.sampled_from([1_048_576])
    ),
)
numbers = st.one_of(
    st.integers(),
    st.sampled_from(
        [0, -1, 1, 2**15, 2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1]
    ),
    st.floats(),
    st.sampled_from([0.0, -0.0, 0.1, 0.5, 5.0, 1e16, 1e300, float("nan"), float("inf"), float("-inf")]),
    st.decimals(),
    st.sampled_from(
        [
            Decimal("0.5"),
            Decimal("0.1234567"),
            Decimal("1e999999"),
            Decimal("-0"),
            Decimal("NaN"),
            Decimal("1" * 60),
        ]
    ),
)
times = st.one_of(
    st.datetimes(),  # naive
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])),
    st.dates(),
    st.sampled_from(["2024-05-01T12:00:00+02:00", "2024-05-01T12:00:00", "2024-05-01", "yesterday"]),
)
uuids = st.one_of(st.uuids(), st.uuids().map(str), st.sampled_from(["not-a-uuid", "", "0" * 32]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts.filter(lambda s: len(s) < 1000)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(any_char, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


wrong: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(
        [None, True, False, b"bytes", _Opaque(), {1, 2}, frozenset(), ("a",), ["a", "b"], {"k": 1}]
    ),
    st.builds(lambda: {"s": {1}}),
    st.builds(lambda: {"d": Decimal("1.5"), "t": datetime(2024, 1, 1, tzinfo=UTC)}),
    st.builds(lambda: {1: "int key"}),
    st.sampled_from([_deep(50), _deep(101), _deep(5000)]),
)
anything = st.one_of(texts, numbers, times, uuids, json_values, wrong)


def valid_for(col: Column[Any]) -> st.SearchStrategy[Any]:
    """Values of the column's own type (so that some cases are stored)."""
    type_ = col.type
    if isinstance(type_, sqltypes.String):
        return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=type_.length or 50)
    if isinstance(type_, sqltypes.Boolean):
        return st.booleans()
    if isinstance(type_, sqltypes.Integer):
        return st.integers(0, 2**31 - 1)
    if isinstance(type_, sqltypes.Float):
        return st.floats(0, 1)
    if isinstance(type_, sqltypes.Numeric):
        return st.decimals(0, 999, places=type_.scale or 0, allow_nan=False)
    if isinstance(type_, sqltypes.DateTime):
        return st.datetimes(timezones=st.just(UTC))
    if isinstance(type_, sqltypes.Uuid):
        return st.uuids()
    if isinstance(type_, sqltypes.JSON):
        return json_values
    return st.none()


def values_for(col: Column[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid_for(col), anything)


# -- the oracle -------------------------------------------------------------------------------------------


def _dec(number: Any) -> Decimal:
    return Decimal(repr(number)) if isinstance(number, float) else Decimal(number)


def same(given: Any, stored: Any) -> bool:
    """`stored` is `given` read back, allowing only the documented lossless conversions."""
    if isinstance(given, bool) or isinstance(stored, bool) or given is None or stored is None:
        return given is stored
    if isinstance(given, uuid.UUID) and isinstance(stored, str):  # a claim's UUID, kept as text
        return str(given) == stored
    if isinstance(given, str) and not isinstance(stored, str):
        if isinstance(stored, int | float | Decimal):
            return _dec(stored) == Decimal(given)
        if isinstance(stored, uuid.UUID):
            return stored == uuid.UUID(given)
        if isinstance(stored, datetime):
            return stored == datetime.fromisoformat(given)
        return False
    if isinstance(given, int | float | Decimal) and isinstance(stored, int | float | Decimal):
        return _dec(given) == _dec(stored)
    if isinstance(given, list | tuple):
        return isinstance(stored, list) and len(given) == len(stored) and all(map(same, given, stored))
    if isinstance(given, Mapping):
        return (
            isinstance(stored, dict)
            and given.keys() == stored.keys()
            and all(same(value, stored[key]) for key, value in given.items())
        )
    if isinstance(given, datetime) and isinstance(stored, datetime):
        return given.tzinfo is not None and given == stored
    return bool(type(given) is type(stored) and given == stored)


async def counts(engine: AsyncEngine, table: str) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(f"SELECT (SELECT count(*) FROM {table}), (SELECT count(*) FROM audit_log)")
            )
        ).one()
    return int(row[0]), int(row[1])


def record(target: str, error: BaseException | None) -> None:
    if error is None:
        OUTCOMES[(target, "ok")] += 1
    elif isinstance(error, ValidationError):
        OUTCOMES[(target, "ValidationError")] += 1
    else:
        OUTCOMES[(target, "other")] += 1
        OTHER[type(error).__name__] += 1


async def outcome(target: str, call: Callable[[], Awaitable[Any]]) -> tuple[Any, BaseException | None]:
    """Runs the call; anything but a PersistenceError fails the property."""
    try:
        result = await call()
    except PersistenceError as exc:
        record(target, exc)
        return None, exc
    except Exception as exc:
        pytest.fail(f"{target}: {type(exc).__name__} escaped: {str(exc)[:200]}")
    record(target, None)
    return result, None


# -- the models and their valid rows ---------------------------------------------------------------------


def base_row(model: type[Any]) -> dict[str, Any]:
    n = next(_serial)
    if model is VerificationResult:
        return {"claim_id": f"c{n}", "framework": "fw", "result": {"v": 1}, "confidence": 0.5}
    if model is Claim:
        return {"external_id": f"e{n}", "content": "text", "metadata_": {"k": "v"}}
    if model is ServiceHealth:
        return {
            "service_name": "api",
            "instance_id": f"i{n}",
            "status": "healthy",
            "last_heartbeat": datetime.now(UTC),
        }
    if model is TrainingData:
        return {"framework": "fw", "claim_text": "t", "evidence": {}, "validity": True, "confidence": 0.5}
    if model is ModelCheckpoint:
        return {"model_name": f"m{n}", "version": "1", "checkpoint_path": "/p", "metrics": {"f1": 0.5}}
    if model is ConsensusDecision:
        return {
            "claim_id": f"c{n}",
            "consensus_result": {},
            "participating_frameworks": ["a"],
            "consensus_type": "t",
            "consensus_confidence": 0.5,
        }
    assert model is AICall
    return {"provider": "p", "model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": Decimal("0.01")}


UPSERT_ON = {
    VerificationResult: "pk_verification_results",
    Claim: "uq_claims_external_id",
    ServiceHealth: "uq_service_health_service_name_instance_id",
    TrainingData: "pk_training_data",
    ModelCheckpoint: "uq_model_checkpoints_model_name_version",
    ConsensusDecision: "uq_consensus_decisions_claim_id",
}
MODELS = [VerificationResult, Claim, ServiceHealth, TrainingData, ModelCheckpoint, ConsensusDecision, AICall]


def writable(model: type[Any]) -> list[str]:
    mapper = inspect(model)
    table = mapper.local_table
    keys = []
    for prop in mapper.column_attrs:
        col = prop.columns[0]
        if col.table is table and col.computed is None and prop.key not in ("id", "created_at", "updated_at"):
            keys.append(prop.key)
    return keys


def column_of(model: type[Any], key: str) -> Column[Any]:
    col: Column[Any] = inspect(model).column_attrs[key].columns[0]
    return col


def repo_of(model: type[Any], engine: AsyncEngine) -> Repository[Any]:
    repo: Repository[Any] = type(f"{model.__name__}Repo", (Repository,), {"model": model})(engine)
    return repo


@dataclass(frozen=True)
class Case:
    field: str
    value: Any


def cases(model: type[Any]) -> st.SearchStrategy[Case]:
    return st.sampled_from(writable(model)).flatmap(
        lambda key: values_for(column_of(model, key)).map(lambda value: Case(key, value))
    )


WRITES = ["add", "add_many", "update", "update_many", "upsert", "upsert_many"]


async def check_write(engine: AsyncEngine, model: type[Any], op: str, case: Case) -> None:
    repo = repo_of(model, engine)
    table = model.__table__.name
    target = f"{model.__name__}.{op}"
    existing = None
    if op in ("update", "update_many") or (op.startswith("upsert") and model is not AICall):
        existing = await repo.add(**base_row(model))
    row = {**base_row(model), case.field: case.value}
    if op.startswith("upsert") and existing is not None:
        # Half of the upserts hit the existing row (update), half insert a new one.
        key_row = {k: getattr(existing, k) for k in ("id",)} if UPSERT_ON[model].startswith("pk_") else {}
        if case.field not in key_row:
            row.update(key_row)
    before = await counts(engine, table)
    stored_id: Any = None
    if op == "add":
        result, error = await outcome(target, lambda: repo.add(**row))
        stored_id = result.id if error is None else None
    elif op == "add_many":
        result, error = await outcome(
            target, lambda: repo.add_many([row, base_row(model) | {case.field: case.value}], returning=True)
        )
        stored_id = result[0].id if error is None else None
    elif op == "update":
        assert existing is not None
        result, error = await outcome(target, lambda: repo.update(existing.id, **{case.field: case.value}))
        stored_id = existing.id if error is None else None
    elif op == "update_many":
        assert existing is not None
        result, error = await outcome(
            target, lambda: repo.update_many(id=existing.id, values={case.field: case.value})
        )
        stored_id = existing.id if error is None else None
    elif op == "upsert":
        result, error = await outcome(target, lambda: repo.upsert(row, on=UPSERT_ON[model]))
        stored_id = result.id if error is None else None
    else:
        result, error = await outcome(target, lambda: repo.upsert_many([row], on=UPSERT_ON[model]))
        stored_id = result[0].id if error is None else None
    if error is not None:
        assert await counts(engine, table) == before, f"{target}: refused, but rows were written"
        if existing is not None:
            again = await repo.get(existing.id)
            assert same(getattr(existing, case.field), getattr(again, case.field)), (
                f"{target}: refused, but changed"
            )
        return
    stored = getattr(await repo.get(stored_id), case.field)
    assert same(case.value, stored), (
        f"{target}: {case.field} stored as something else ({type(stored).__name__})"
    )


FILTER_OPS = ["", "__ne", "__lt", "__lte", "__gt", "__gte", "__in", "__not_in", "__isnull", "__contains"]


async def check_filter(engine: AsyncEngine, model: type[Any], method: str, op: str, case: Case) -> None:
    repo = repo_of(model, engine)
    table = model.__table__.name
    value = [case.value] if op in ("__in", "__not_in") and not isinstance(case.value, list) else case.value
    lookups: dict[str, Any] = {case.field + op: value}
    target = f"{model.__name__}.{method}(filter)"
    before = await counts(engine, table)
    if method == "list":
        await outcome(target, lambda: repo.list(limit=5, **lookups))
    elif method == "count":
        await outcome(target, lambda: repo.count(**lookups))
    elif method == "exists":
        await outcome(target, lambda: repo.exists(**lookups))
    elif method == "page":
        await outcome(target, lambda: repo.page(limit=5, **lookups))
    elif method == "stream":

        async def drain() -> int:
            return len([row async for row in repo.stream(batch_size=50, **lookups)])

        await outcome(target, drain)
    elif method == "delete_many":  # a second filter that matches nothing: only the value is exercised
        await outcome(target, lambda: repo.delete_many(id=uuid.uuid4(), **lookups))
    else:
        key, valid = next(iter(base_row(model).items()))
        await outcome(target, lambda: repo.update_many(id=uuid.uuid4(), values={key: valid}, **lookups))
    assert await counts(engine, table) == before


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@PROPERTY_SETTINGS
@given(data=st.data())
async def test_generic_writes_store_verbatim_or_raise_typed(
    engine: AsyncEngine, model: type[Any], data: st.DataObject
) -> None:
    ops = [op for op in WRITES if not (model is AICall and op.startswith("upsert"))]
    op = data.draw(st.sampled_from(ops), label="op")
    case = data.draw(cases(model), label="case")
    await check_write(engine, model, op, case)


@pytest.mark.parametrize(
    "model", [VerificationResult, Claim, ServiceHealth, TrainingData, AICall], ids=lambda m: m.__name__
)
@PROPERTY_SETTINGS
@given(data=st.data())
async def test_filters_answer_or_raise_typed(
    engine: AsyncEngine, model: type[Any], data: st.DataObject
) -> None:
    method = data.draw(
        st.sampled_from(["list", "count", "exists", "page", "stream", "delete_many", "update_many"])
    )
    op = data.draw(st.sampled_from(FILTER_OPS), label="lookup")
    case = data.draw(cases(model), label="case")
    if method == "page" and isinstance(column_of(model, case.field).type, sqltypes.JSON):
        method = "list"
    await check_filter(engine, model, method, op, case)


# -- domain repositories and the ledger --------------------------------------------------------------------

DOMAIN_ARGS: dict[str, tuple[str, ...]] = {
    "create_verification": (
        "claim_id",
        "framework",
        "result",
        "confidence",
        "evidence",
        "processing_time_ms",
        "model_version",
    ),
    "record_decision": (
        "claim_id",
        "consensus_result",
        "participating_frameworks",
        "consensus_type",
        "consensus_confidence",
        "decision_time_ms",
    ),
    "create_claim": ("external_id", "content", "claim_type", "source", "metadata"),
    "register": ("model_name", "version", "checkpoint_path", "metrics", "framework", "training_config"),
    "heartbeat": ("service_name", "instance_id", "status", "metadata"),
    "add_examples": (
        "framework",
        "claim_id",
        "claim_text",
        "evidence",
        "validity",
        "confidence",
        "metadata",
        "training_batch_id",
    ),
    "mark_used_in_batch": ("ids", "batch_id"),
    "get_by_claim_id": ("claim_id",),
    "get_by_external_id": ("external_id",),
    "search_by_type": ("claim_type", "limit"),
    "get_active": ("model_name", "framework"),
    "activate": ("model_name", "version"),
    "stale_instances": ("older_than", "service_name"),
    "get_for_claim": ("claim_id",),
    "for_entity": ("entity_type", "entity_id"),
    "unused_for_framework": ("framework", "limit"),
    "get_recent_verifications": ("limit", "framework"),
}
DOMAIN_TABLE = {
    "create_verification": ("verification_results", "claim_id"),
    "record_decision": ("consensus_decisions", "claim_id"),
    "create_claim": ("claims", "external_id"),
    "register": ("model_checkpoints", "model_name"),
    "heartbeat": ("service_health", "instance_id"),
    "add_examples": ("training_data", None),
}


def domain_valid(method: str, n: int) -> dict[str, Any]:
    """Valid keyword arguments of each domain method (`n` keeps keys unique)."""
    valid: dict[str, dict[str, Any]] = {
        "create_verification": {"claim_id": f"c{n}", "framework": "fw", "result": {}, "confidence": 0.5},
        "record_decision": {
            "claim_id": f"c{n}",
            "consensus_result": {},
            "participating_frameworks": ["a"],
            "consensus_type": "t",
            "consensus_confidence": 0.5,
        },
        "create_claim": {"external_id": f"e{n}", "content": "c"},
        "register": {"model_name": f"m{n}", "version": "1", "checkpoint_path": "/p", "metrics": {}},
        "heartbeat": {"service_name": "api", "instance_id": f"i{n}"},
        "add_examples": {"framework": "fw", "claim_text": "t", "evidence": {}, "validity": True},
        "mark_used_in_batch": {"ids": [uuid.uuid4()], "batch_id": "b"},
        "get_by_claim_id": {"claim_id": "c"},
        "get_by_external_id": {"external_id": "e"},
        "search_by_type": {"claim_type": "t"},
        "get_active": {"model_name": "m"},
        "activate": {"model_name": "m", "version": "1"},
        "stale_instances": {"older_than": timedelta(minutes=5)},
        "get_for_claim": {"claim_id": "c"},
        "for_entity": {"entity_type": "claim", "entity_id": "x"},
        "unused_for_framework": {"framework": "fw"},
        "get_recent_verifications": {},
    }
    return valid[method]


async def call_domain(engine: AsyncEngine, method: str, kwargs: dict[str, Any]) -> Any:
    if method in ("create_verification", "get_by_claim_id", "get_recent_verifications"):
        return await getattr(VerificationRepository(engine), method)(**kwargs)
    if method in ("record_decision", "get_for_claim"):
        return await getattr(ConsensusRepository(engine), method)(**kwargs)
    if method in ("create_claim", "get_by_external_id", "search_by_type"):
        return await getattr(ClaimRepository(engine), method)(**kwargs)
    if method in ("register", "get_active", "activate"):
        return await getattr(CheckpointRepository(engine), method)(**kwargs)
    if method in ("heartbeat", "stale_instances"):
        repo = ServiceHealthRepository(engine)
        if method == "heartbeat":
            return await repo.heartbeat(kwargs.pop("service_name"), kwargs.pop("instance_id"), **kwargs)
        return await repo.stale_instances(kwargs.pop("older_than"), **kwargs)
    if method == "for_entity":
        return await AuditLogRepository(engine).for_entity(**kwargs)
    training = TrainingDataRepository(engine)
    if method == "add_examples":
        return await training.add_examples([kwargs])
    if method == "mark_used_in_batch":
        return await training.mark_used_in_batch(kwargs["ids"], kwargs["batch_id"])
    return await getattr(training, method)(**kwargs)


@settings(PROPERTY_SETTINGS, max_examples=400)
@given(data=st.data())
async def test_domain_methods_store_verbatim_or_raise_typed(engine: AsyncEngine, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(sorted(DOMAIN_ARGS)), label="method")
    argument = data.draw(st.sampled_from(DOMAIN_ARGS[method]), label="argument")
    value = data.draw(anything, label="value")
    kwargs = {**domain_valid(method, next(_serial)), argument: value}
    target = f"{method}({argument})"
    table, _ = DOMAIN_TABLE.get(method, ("audit_log", None))
    before = await counts(engine, table)
    result, error = await outcome(target, lambda: call_domain(engine, method, dict(kwargs)))
    if error is not None or method not in DOMAIN_TABLE:
        if method != "activate":  # activating an existing checkpoint is a write; none exists here
            assert await counts(engine, table) == before, f"{target}: rows were written"
        return
    if method == "add_examples":
        return  # returns a count; the generic add_many property covers what is stored
    field = "metadata_" if argument == "metadata" else argument
    stored = getattr(result, field)
    assert same(value, stored), f"{target}: stored as something else ({type(stored).__name__})"


LEDGER_ARGS = (
    "provider", "model", "input_tokens", "output_tokens", "cost_usd", "latency_ms", "customer_id",
    "organization_id", "product_id", "environment", "request_id", "trace_id", "usage", "status", "created_at",
)  # fmt: skip
LEDGER_DRAWN = LEDGER_ARGS + ("usage", "cost_usd", "created_at") * 2  # the converted ones, more often
MICRO = Decimal("0.000001")


def ledger_values(argument: str) -> st.SearchStrategy[Any]:
    """`anything` half the time, values of the argument's own kind the other half (so that some
    cases are stored; `st.one_of` would flatten `anything`'s branches and drown them)."""
    own: st.SearchStrategy[Any]
    if argument == "usage":
        keys = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
        plain = st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                      st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)),
            lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
            max_leaves=8,
        )  # fmt: skip
        own = st.one_of(
            st.dictionaries(keys, plain, max_size=4), st.dictionaries(keys, json_values, max_size=3)
        )
    elif argument == "cost_usd":
        own = st.one_of(
            st.floats(0, 9999),
            st.decimals(0, 9999, places=6),
            st.decimals(0, 1, places=7),  # one place too many: refused, never rounded
        )
    elif argument == "created_at":
        edge = [timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))]  # datetime.min/max overflow
        own = st.datetimes(timezones=st.sampled_from([UTC, *edge]))
    else:
        return anything
    return st.booleans().flatmap(lambda mine: own if mine else anything)


def ledger_call(argument: str, value: Any) -> dict[str, Any]:
    """A valid call with `argument` replaced by `value`; its `trace_id` (else its `request_id`) finds it."""
    n = next(_serial)
    return {
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1,
        "output_tokens": 1,
        "cost_usd": Decimal("0.01"),
        "request_id": f"r{n}",
        "trace_id": f"t{n}",
        argument: value,
    }


def ledger_expected(argument: str, value: Any) -> Any:
    """What the ledger documents it stores for `value`: a float cost at its shortest repr, rounded
    half-up to 6 places (seed 000's `Decimal(str(cost))`); everything else verbatim (an exact cost
    with more than 6 places is refused)."""
    if argument == "cost_usd" and isinstance(value, float):
        return Decimal(repr(value)).quantize(MICRO, rounding=ROUND_HALF_UP)
    return value


async def check_ledger_row(
    engine: AsyncEngine, target: str, argument: str, value: Any, call: Mapping[str, Any]
) -> None:
    """The one row of `call` holds `value` as given (under `ledger_expected`)."""
    if argument in ("status", "provider"):
        return  # normalised by design (provider lower-cased): see the ai_calls tests
    marker, where = (
        ("request_id", call["request_id"]) if argument == "trace_id" else ("trace_id", call["trace_id"])
    )
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text(f"SELECT {argument} FROM ai_calls WHERE {marker} = :m"), {"m": where})
        ).all()
    assert len(rows) == 1, f"{target}: {len(rows)} rows for one call"
    stored = rows[0][0]
    if argument == "usage" and isinstance(stored, str):
        stored = json.loads(stored)
    expected = ledger_expected(argument, value)
    assert same(expected, stored), f"{target}: stored as something else ({type(stored).__name__})"


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(data=st.data())
async def test_ledger_log_call_stores_verbatim_or_raises_typed(
    engine: AsyncEngine, data: st.DataObject
) -> None:
    argument = data.draw(st.sampled_from(LEDGER_DRAWN), label="argument")
    value = data.draw(ledger_values(argument), label="value")
    kwargs = ledger_call(argument, value)
    before = await counts(engine, "ai_calls")
    async with AICallLogger(engine, fold_every=None) as logger:
        _, error = await outcome(f"log_call({argument})", lambda: logger.log_call(**kwargs))
    if error is not None:
        assert await counts(engine, "ai_calls") == before, (
            f"log_call({argument}): refused, but rows were written"
        )
        return
    await check_ledger_row(engine, f"log_call({argument})", argument, value, kwargs)


@settings(PROPERTY_SETTINGS, max_examples=60)
@given(data=st.data())
async def test_ledger_log_batch_stores_verbatim_or_raises_typed(
    engine: AsyncEngine, data: st.DataObject
) -> None:
    argument = data.draw(st.sampled_from(LEDGER_DRAWN), label="argument")
    value = data.draw(ledger_values(argument), label="value")
    kwargs = ledger_call(argument, value)
    target = f"log_batch({argument})"
    before = await counts(engine, "ai_calls")
    async with AICallLogger(engine, fold_every=None) as logger:
        written, error = await outcome(target, lambda: logger.log_batch([kwargs]))
    if error is not None:
        assert await counts(engine, "ai_calls") == before, f"{target}: refused, but rows were written"
        return
    assert written == 1, f"{target}: {written} new rows for one call"
    await check_ledger_row(engine, target, argument, value, kwargs)


@settings(PROPERTY_SETTINGS, max_examples=60)
@given(data=st.data())
async def test_batch_logger_log_stores_verbatim_or_raises_typed(
    engine: AsyncEngine, data: st.DataObject
) -> None:
    argument = data.draw(st.sampled_from(LEDGER_DRAWN), label="argument")
    value = data.draw(ledger_values(argument), label="value")
    kwargs = ledger_call(argument, value)
    target = f"BatchLogger.log({argument})"
    before = await counts(engine, "ai_calls")
    async with AICallLogger(engine, fold_every=None) as logger:
        batcher = BatchLogger(logger, flush_interval=3600)  # no spool: a refusal is raised by flush()

        async def log_and_flush() -> None:
            try:
                await batcher.log(kwargs)
                await batcher.flush()
            finally:
                with contextlib.suppress(PersistenceError):
                    await batcher.close(timeout=30)

        _, error = await outcome(target, log_and_flush)
    if error is not None:
        assert await counts(engine, "ai_calls") == before, f"{target}: refused, but rows were written"
        return
    await check_ledger_row(engine, target, argument, value, kwargs)
