"""Values checked against their column's type before any SQL: stored exactly as given, or a
`ValidationError` naming field and reason with nothing sent (each test rolled back by the plugin's `engine`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.errors import InvalidRequestError, PersistenceError, ValidationError
from persistence.models import (
    AICall,
    Claim,
    ReconciliationReport,
    ServiceHealth,
    TrainingData,
    VerificationResult,
)
from persistence.repositories import (
    CheckpointRepository,
    ClaimRepository,
    ConsensusRepository,
    ServiceHealthRepository,
    TrainingDataRepository,
    VerificationRepository,
)
from persistence.repository import Repository
from persistence.repository.coerce import MAX_JSON_DEPTH
from persistence.transaction import transaction

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Verifications(Repository[VerificationResult]):
    model = VerificationResult


class Claims(Repository[Claim]):
    model = Claim


class Health(Repository[ServiceHealth]):
    model = ServiceHealth


class Training(Repository[TrainingData]):
    model = TrainingData


class Calls(Repository[AICall]):
    model = AICall


_SAVEPOINT_STATEMENTS = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement sent on the engine (an event hook, not a mock)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        if not args[2].startswith(_SAVEPOINT_STATEMENTS):  # the isolating fixture's, not the code's
            seen.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine.sync_engine, "before_cursor_execute", record)


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


def verification(**overrides: Any) -> dict[str, Any]:
    return {"claim_id": "c-1", "framework": "fw", "result": {"valid": True}, "confidence": 0.5, **overrides}


async def refused(call: Callable[[], Any], field: str, reason: str) -> ValidationError:
    """`call()` raises a ValidationError whose message names `field` and contains `reason`."""
    with pytest.raises(ValidationError) as info:
        await call()
    message = str(info.value)
    assert field in message and reason in message, message
    return info.value


# -- writes: lossy or ambiguous values are refused, nothing is sent ---------------------------------------


async def test_lossy_numbers_are_refused_before_any_sql(engine: AsyncEngine, statements: list[str]) -> None:
    repo = Verifications(engine)
    error = await refused(
        lambda: repo.add(**verification(processing_time_ms=0.1)), "processing_time_ms", "fractional"
    )
    assert (error.table, error.column) == ("verification_results", "processing_time_ms")
    await refused(lambda: repo.add(**verification(processing_time_ms=2**31)), "processing_time_ms", "range")
    await refused(lambda: repo.add(**verification(processing_time_ms=True)), "processing_time_ms", "bool")
    await refused(lambda: repo.add(**verification(confidence=float("nan"))), "confidence", "finite")
    await refused(lambda: repo.add(**verification(confidence="inf")), "confidence", "plain decimal")
    await refused(
        lambda: repo.add(**verification(confidence=Decimal("0.50000000000000000001"))), "confidence", "exact"
    )
    await refused(
        lambda: repo.add_many([verification(), verification(confidence=[1])]), "row 1", "confidence"
    )
    calls = Calls(engine)
    call = {"provider": "p", "model": "m", "input_tokens": 1, "output_tokens": 1}
    await refused(lambda: calls.add(**call, cost_usd=Decimal("0.1234567")), "cost_usd", "6")  # rounded today
    await refused(lambda: calls.add(**call, cost_usd=Decimal("12345")), "cost_usd", "digits")
    await refused(lambda: calls.add(**call, cost_usd=Decimal("1e999999")), "cost_usd", "digits")
    await refused(lambda: calls.add(**call, cost_usd=0, id=2**63), "AICall.id", "range")
    assert statements == []


async def test_lossless_conversions_are_stored_as_the_value_they_denote(engine: AsyncEngine) -> None:
    stored = await Verifications(engine).add(
        **verification(processing_time_ms="12", confidence=Decimal("0.1"), evidence=("a", 1))
    )
    read: tuple[Any, ...] = (stored.processing_time_ms, stored.confidence, stored.evidence)
    assert read == (12, 0.1, ["a", 1])
    again = await Verifications(engine).update(stored.id, processing_time_ms=5.0, confidence="0.25")
    assert (again.processing_time_ms, again.confidence) == (5, 0.25)
    claim = await Claims(engine).add(external_id="e", content="c")
    example = await Training(engine).add(
        framework="fw", claim_id=str(claim.id), claim_text="t", evidence={}, validity=True
    )
    assert example.claim_id == claim.id
    beat = await Health(engine).add(
        service_name="api", instance_id="i", status="healthy", last_heartbeat="2024-05-01T14:00:00+02:00"
    )
    assert beat.last_heartbeat == NOW
    call = await Calls(engine).add(provider="p", model="m", input_tokens=1, output_tokens=2, cost_usd=0.1)
    assert call.cost_usd == Decimal("0.1")


async def test_text_is_never_altered(engine: AsyncEngine, statements: list[str]) -> None:
    repo = Verifications(engine)
    # PostgreSQL would silently cut trailing spaces beyond varchar(255): refused instead.
    await refused(lambda: repo.add(**verification(claim_id="c" * 255 + "   ")), "claim_id", "at most 255")
    await refused(lambda: repo.add(**verification(framework="a\x00b")), "framework", "NUL")
    await refused(lambda: repo.add(**verification(framework="a\ud800")), "framework", "surrogate")
    await refused(lambda: repo.add(**verification(framework=42)), "framework", "expects text")
    await refused(lambda: repo.add(**verification(framework=uuid.uuid4())), "framework", "expects text")
    await refused(lambda: repo.add(**verification(claim_id=None)), "claim_id", "NOT NULL")
    assert statements == []
    assert await count(engine, "verification_results") == 0


async def test_json_values_are_plain_json_or_refused(engine: AsyncEngine, statements: list[str]) -> None:
    repo = Verifications(engine)
    await refused(lambda: repo.add(**verification(result={"a": {1, 2}})), "result", "not a JSON value")
    await refused(lambda: repo.add(**verification(result={"at": NOW})), "result", "not a JSON value")
    await refused(
        lambda: repo.add(**verification(result={"x": Decimal("1.5")})), "result", "not a JSON value"
    )
    await refused(lambda: repo.add(**verification(result={1: "a"})), "result", "keys must be strings")
    await refused(lambda: repo.add(**verification(result={"a\x00": 1})), "result", "key contains NUL")
    await refused(lambda: repo.add(**verification(result=["\udfff"])), "result", "surrogate")
    await refused(lambda: repo.add(**verification(result={"n": float("nan")})), "result", "JSON number")
    await refused(lambda: repo.add(**verification(result=[1e300])), "result", "read back")
    deep: Any = "x"
    for _ in range(10_000):  # a RecursionError must never escape
        deep = [deep]
    await refused(lambda: repo.add(**verification(result=deep)), "result", f"deeper than {MAX_JSON_DEPTH}")
    assert statements == []
    nested: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        nested = {"k": nested}
    stored = await repo.add(**verification(result=nested, evidence=[-0.0, 2**70, "é"]))
    read: tuple[Any, ...] = (stored.result, stored.evidence)
    assert read == (nested, [0.0, 2**70, "é"])


async def test_naive_datetimes_are_refused(engine: AsyncEngine, statements: list[str]) -> None:
    repo = Health(engine)
    beat = {"service_name": "api", "instance_id": "i", "status": "healthy"}
    naive_noon = datetime(2024, 5, 1, 12)  # noqa: DTZ001
    await refused(lambda: repo.add(**beat, last_heartbeat=naive_noon), "last_heartbeat", "naive")
    await refused(lambda: repo.add(**beat, last_heartbeat="2024-05-01T12:00:00"), "last_heartbeat", "naive")
    await refused(lambda: repo.add(**beat, last_heartbeat=NOW.date()), "last_heartbeat", "datetime")
    naive = datetime(2024, 5, 1)  # noqa: DTZ001
    await refused(lambda: repo.list(last_heartbeat__lt=naive), "last_heartbeat__lt", "naive")
    assert statements == []
    eastern = datetime(2024, 5, 1, 8, tzinfo=timezone(timedelta(hours=-4)))
    assert (await repo.add(**beat, last_heartbeat=eastern)).last_heartbeat == NOW


class Reports(Repository[ReconciliationReport]):
    model = ReconciliationReport


async def test_datetimes_and_dates_the_driver_would_store_as_infinity_are_refused(
    engine: AsyncEngine, statements: list[str]
) -> None:
    """asyncpg sends datetime.max/min (also an aware value equal to them in UTC) and date.max/min as
    'infinity', read back naive or as another value: each is refused, in writes and in filters."""
    repo = Health(engine)
    beat = {"service_name": "api", "instance_id": "i", "status": "healthy"}
    plus14 = timezone(timedelta(hours=14))
    bounds = [
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        datetime(1, 1, 1, 14, 0, tzinfo=plus14),  # datetime.min in UTC
        datetime(1, 1, 1, 13, 0, tzinfo=plus14),  # before datetime.min in UTC (astimezone overflows)
        datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-2))),  # beyond datetime.max in UTC
        "9999-12-31T23:59:59.999999+00:00",
    ]
    for value in bounds:
        await refused(partial(repo.add, **beat, last_heartbeat=value), "last_heartbeat", "out of range")
        await refused(partial(repo.list, last_heartbeat__lt=value), "last_heartbeat__lt", "out of range")
    report = {
        "period_start": NOW,
        "period_end": NOW + timedelta(days=1),
        "total_calls": 0,
        "total_cost_usd": Decimal(0),
        "total_tokens": 0,
    }
    for day in (date.max, date.min, "9999-12-31"):
        await refused(partial(Reports(engine).add, **report, report_date=day), "report_date", "out of range")
        await refused(
            partial(Reports(engine).count, report_date__gte=day), "report_date__gte", "out of range"
        )
    assert statements == []
    assert await count(engine, "service_health") == 0
    almost = datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)
    assert (await repo.add(**beat, last_heartbeat=almost)).last_heartbeat == almost
    stored = await Reports(engine).add(**report, report_date=date(9999, 12, 30))
    assert stored.report_date == date(9999, 12, 30)


# -- filters ----------------------------------------------------------------------------------------------


async def test_filter_values_are_bound_with_the_column_type(
    engine: AsyncEngine, statements: list[str]
) -> None:
    repo = Verifications(engine)
    await repo.add_many([verification(confidence=0.3), verification(confidence=0.7)])
    assert [v.confidence for v in await repo.list(confidence__gte="0.5")] == [0.7]
    assert await repo.count(confidence__in=["0.3", Decimal("0.7")]) == 2
    statements.clear()
    await refused(lambda: repo.list(confidence__gte=None), "confidence__gte", "__isnull")
    await refused(lambda: repo.list(confidence__gte="half"), "confidence__gte", "number")
    await refused(lambda: repo.count(processing_time_ms__lt=0.5), "processing_time_ms__lt", "fractional")
    await refused(lambda: repo.list(claim_id__in=["a", None]), "claim_id__in", "__isnull")
    await refused(lambda: repo.exists(result__contains={"s": {1}}), "result__contains", "JSON")
    await refused(lambda: Training(engine).list(claim_id="not-a-uuid"), "claim_id", "not a UUID")
    await refused(lambda: Training(engine).delete_many(claim_id__in=["nope"]), "claim_id__in", "UUID")
    await refused(lambda: repo.update_many(framework=7, values={"framework": "x"}), "framework", "text")
    assert statements == []


# -- seed aliases -----------------------------------------------------------------------------------------


async def test_the_seed_column_name_metadata_works_in_every_form(engine: AsyncEngine) -> None:
    claims = ClaimRepository(engine)
    one = await claims.create_claim(external_id="a", content="c", metadata={"topic": "x"})
    assert one.metadata_ == {"topic": "x"}
    two = await claims.create_claim({"external_id": "b", "content": "c", "metadata": {"topic": "y"}})
    assert await claims.count(metadata={"topic": "y"}) == 1
    assert [c.id for c in await claims.list(metadata__contains={"topic": "x"})] == [one.id]
    assert [c.id for c in await claims.list(order_by=["-metadata"])] == [two.id, one.id]
    await claims.add_many([{"external_id": "c", "content": "c", "metadata": None}])
    upserted = await claims.upsert(
        {"external_id": "a", "content": "c2", "metadata": {"topic": "z"}},
        on="uq_claims_external_id",
        update=["metadata"],
    )
    assert (upserted.content, upserted.metadata_) == ("c", {"topic": "z"})
    assert (await claims.update(one.id, metadata=None)).metadata_ is None
    with pytest.raises(InvalidRequestError, match="given twice"):
        await claims.add(external_id="d", content="c", metadata={}, metadata_={})
    example = await TrainingDataRepository(engine).add_examples(
        [{"framework": "f", "claim_text": "t", "evidence": {}, "validity": True, "metadata": {"k": 1}}]
    )
    assert example == 1
    health = await ServiceHealthRepository(engine).heartbeat("api", "i", metadata={"v": 1})
    assert (await Health(engine).get(health.id)).metadata_ == {"v": 1}


# -- domain repositories: arguments of the wrong type -----------------------------------------------------


async def test_domain_methods_refuse_wrong_types_naming_the_argument(
    engine: AsyncEngine, statements: list[str]
) -> None:
    verifications = VerificationRepository(engine)
    await refused(
        lambda: verifications.create_verification(claim_id=None, framework="f", result={}, confidence=0.5),  # type: ignore[arg-type]
        "claim_id",
        "NOT NULL",
    )  # stored as the text 'None' before
    await refused(
        lambda: verifications.create_verification(claim_id="c", framework="f", result=[1, 2], confidence=0.5),  # type: ignore[arg-type]
        "result",
        "mapping",
    )
    await refused(
        lambda: verifications.create_verification(
            claim_id="c",
            framework="f",
            result={},
            confidence=0.5,
            processing_time_ms=0.1,  # type: ignore[arg-type]
        ),
        "processing_time_ms",
        "fractional",
    )  # stored as 0 before
    consensus = ConsensusRepository(engine)
    await refused(
        lambda: consensus.record_decision(
            claim_id="c",
            consensus_result={},
            participating_frameworks="empirical",
            consensus_type="t",
            consensus_confidence=0.5,
        ),
        "participating_frameworks",
        "list",
    )  # stored as a list of characters before
    await refused(lambda: verifications.create_claim(5), "claim", "mapping")  # type: ignore[arg-type]
    await refused(
        lambda: verifications.create_claim(external_id=None, content="c"), "external_id", "NOT NULL"
    )
    checkpoints = CheckpointRepository(engine)
    await refused(
        lambda: checkpoints.register(model_name="m", version="1", checkpoint_path="/p", metrics="f1"),  # type: ignore[arg-type]
        "metrics",
        "mapping",
    )
    await refused(lambda: checkpoints.activate("m", 1), "version", "text")  # type: ignore[arg-type]
    training = TrainingDataRepository(engine)
    await refused(lambda: training.add_examples([["framework", "f"]]), "rows", "mapping")  # type: ignore[list-item]
    await refused(lambda: training.mark_used_in_batch(5, "b"), "ids", "list")  # type: ignore[arg-type]
    not_ids: Any = ["x"]
    await refused(lambda: training.mark_used_in_batch(not_ids, "b"), "id__in", "UUID")
    health = ServiceHealthRepository(engine)
    await refused(lambda: health.heartbeat("api", "i", metadata=[("k", 1)]), "metadata", "mapping")  # type: ignore[arg-type]
    await refused(lambda: health.stale_instances(5), "older_than", "timedelta")  # type: ignore[arg-type]
    five: Any = 5
    pairs: Any = [("framework", "x")]
    await refused(lambda: Verifications(engine).add_many(five), "rows", "sequence")
    await refused(lambda: Verifications(engine).update_many(values=pairs, framework="f"), "values", "mapping")
    await refused(lambda: Health(engine).upsert({}, on="pk_service_health", update=5), "update", "list")  # type: ignore[arg-type]
    assert statements == []


async def test_every_refusal_is_a_persistence_error(engine: AsyncEngine) -> None:
    """The hierarchy callers rely on: a ValidationError is a PersistenceError, never a TypeError."""
    with pytest.raises(PersistenceError) as info:
        await Verifications(engine).add(**verification(result=object()))
    assert not isinstance(info.value, TypeError | RecursionError)


async def test_json_filters_bind_scalars_as_json(engine: AsyncEngine) -> None:
    repo = Verifications(engine)
    await repo.add_many([verification(result="yes"), verification(result=1), verification(result={"a": 1})])
    found: list[Any] = [v.result for v in await repo.list(result="yes")]
    assert found == ["yes"]
    assert await repo.count(result=1) == 1
    assert await repo.count(result__in=["yes", 1]) == 2
    assert await repo.count(result__ne="yes") == 2
    assert await repo.count(result__contains="yes") == 1
    assert await repo.count(result__gt=0) == 2  # jsonb ordering: an object sorts above numbers


async def test_a_refused_value_leaves_the_enclosing_block_usable(engine: AsyncEngine) -> None:
    """Nothing was sent, so no statement failed: the block goes on and commits its other writes."""
    repo = Verifications(engine)
    async with transaction():
        await repo.add(**verification(claim_id="kept"))
        with pytest.raises(ValidationError):
            await repo.add(**verification(processing_time_ms=0.1))
        await repo.add(**verification(claim_id="also kept"))
    assert sorted(v.claim_id for v in await repo.list()) == ["also kept", "kept"]
