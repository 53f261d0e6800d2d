"""The write side of `Repository`, against a real server (each test rolled back by the plugin's `engine`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, func, select, text, true
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.errors import (
    ConflictError,
    IntegrityViolation,
    InvalidRequestError,
    NotFoundError,
    ValidationError,
)
from persistence.models import AICall, Claim, ModelCheckpoint, ServiceHealth, TrainingData, VerificationResult
from persistence.repository import Repository
from persistence.transaction import transaction

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
INJECTION = "x'); DROP TABLE claims; -- $1 :p0 %(p0)s"


class Claims(Repository[Claim]):
    model = Claim


class Verifications(Repository[VerificationResult]):
    model = VerificationResult


class Checkpoints(Repository[ModelCheckpoint]):
    model = ModelCheckpoint


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


async def count(engine: AsyncEngine, table: str, where: str = "true") -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table} WHERE {where}")) or 0)


async def nothing_written(engine: AsyncEngine, table: str) -> bool:
    return await count(engine, table) == 0 and await count(engine, "audit_log") == 0


def verification(**overrides: Any) -> dict[str, Any]:
    return {
        "claim_id": "claim-1",
        "framework": "fw",
        "result": {"valid": True},
        "confidence": 0.9,
        **overrides,
    }


# -- add ----------------------------------------------------------------------------------------------


async def test_add_returns_the_stored_row_with_defaults(engine: AsyncEngine, statements: list[str]) -> None:
    claim = await Claims(engine).add(external_id="e1", content="text", metadata_={"topic": "x"})
    assert isinstance(claim, Claim)
    assert isinstance(claim.id, uuid.UUID)
    assert claim.created_at.tzinfo is not None
    assert (claim.external_id, claim.content, claim.metadata_, claim.source) == (
        "e1",
        "text",
        {"topic": "x"},
        None,
    )
    assert len(statements) == 1  # INSERT ... RETURNING with its audit CTE
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT id, metadata FROM claims"))).one()
    assert row == (claim.id, {"topic": "x"})


async def test_add_takes_a_new_instance_and_keyword_values_win(engine: AsyncEngine) -> None:
    repo = Checkpoints(engine)
    draft = ModelCheckpoint(model_name="m", version="1", checkpoint_path="/a", metrics={"f1": 0.5})
    stored = await repo.add(draft, checkpoint_path="/b")
    assert stored is not draft
    assert (stored.model_name, stored.checkpoint_path, stored.is_active) == ("m", "/b", False)
    assert stored.framework is None
    with pytest.raises(InvalidRequestError, match="new ModelCheckpoint"):
        await repo.add(stored)
    with pytest.raises(InvalidRequestError, match="ModelCheckpoint instance"):
        await repo.add(Claim(external_id="x", content="y"))  # type: ignore[arg-type]


async def test_add_unknown_field_is_refused_and_writes_nothing(
    engine: AsyncEngine, statements: list[str]
) -> None:
    with pytest.raises(InvalidRequestError, match="no field 'nope'"):
        await Verifications(engine).add(**verification(nope=1))
    with pytest.raises(InvalidRequestError, match="no field"):
        await Verifications(engine).add_many([verification(**{"x; DROP TABLE claims": 1})])
    assert statements == []
    assert await nothing_written(engine, "verification_results")


async def test_confidence_out_of_range_is_an_integrity_violation_naming_the_check(
    engine: AsyncEngine,
) -> None:
    with pytest.raises(IntegrityViolation) as info:
        await Verifications(engine).add(**verification(confidence=1.5))
    assert info.value.constraint == "ck_verification_results_confidence_range"
    assert info.value.sqlstate == "23514"
    with pytest.raises(IntegrityViolation) as bulk:
        await Verifications(engine).add_many([verification(), verification(confidence=1.5)])
    assert bulk.value.constraint == "ck_verification_results_confidence_range"
    assert await nothing_written(engine, "verification_results")


async def test_too_long_claim_id_is_a_validation_error_not_truncated(engine: AsyncEngine) -> None:
    repo = Verifications(engine)
    with pytest.raises(ValidationError) as info:
        await repo.add(**verification(claim_id="c" * 300))
    assert info.value.column == "claim_id" and "at most 255" in str(info.value)
    with pytest.raises(ValidationError):  # the bulk path casts to varchar[] without a length: no truncation
        await repo.add_many([verification(claim_id="c" * 300)])
    with pytest.raises(ValidationError):
        await repo.upsert_many(
            [verification(id=uuid.uuid4(), claim_id="c" * 300)], on="pk_verification_results"
        )
    assert await nothing_written(engine, "verification_results")


async def test_sql_text_as_a_value_is_stored_verbatim(engine: AsyncEngine) -> None:
    repo = Claims(engine)
    one = await repo.add(external_id=INJECTION, content=INJECTION, metadata_={INJECTION: INJECTION})
    await repo.add_many([{"external_id": INJECTION + "2", "content": INJECTION}])
    await repo.update(one.id, source=INJECTION)
    await repo.upsert({"external_id": INJECTION + "3", "content": INJECTION}, on="uq_claims_external_id")
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT external_id, content, source, metadata FROM claims"))).all()
    assert {row.content for row in rows} == {INJECTION}
    assert {row.external_id for row in rows} == {INJECTION, INJECTION + "2", INJECTION + "3"}
    assert (INJECTION, INJECTION, INJECTION, {INJECTION: INJECTION}) in rows


async def test_duplicate_is_a_conflict_naming_the_constraint(engine: AsyncEngine) -> None:
    repo = Claims(engine)
    await repo.add(external_id="dup", content="a")
    with pytest.raises(ConflictError) as info:
        await repo.add(external_id="dup", content="b")
    assert info.value.constraint == "uq_claims_external_id"
    with pytest.raises(ConflictError):
        await repo.add_many([{"external_id": "new", "content": "a"}, {"external_id": "dup", "content": "b"}])
    assert await count(engine, "claims") == 1


async def test_none_is_sql_null_also_in_jsonb(engine: AsyncEngine) -> None:
    repo = Claims(engine)
    one = await repo.add(external_id="a", content="x", metadata_=None)
    await repo.add_many([{"external_id": "b", "content": "x", "metadata_": None}])
    await repo.update(one.id, metadata_=None)
    assert await count(engine, "claims", "metadata IS NULL") == 2


async def test_computed_columns_cannot_be_written(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError, match="computed"):
        await Calls(engine).add(
            provider="p", model="m", input_tokens=1, output_tokens=1, cost_usd=1, total_tokens=5
        )


# -- add_many ----------------------------------------------------------------------------------------------


async def test_add_many_of_5000_rows_is_one_statement(engine: AsyncEngine, statements: list[str]) -> None:
    rows = [verification(claim_id=f"c{i}", confidence=i / 5000, evidence=[i]) for i in range(5000)]
    assert await Verifications(engine).add_many(rows) == 5000
    assert len(statements) == 1
    assert await count(engine, "verification_results") == 5000
    assert (
        await count(engine, "verification_results", "evidence = '[4999]'::jsonb AND claim_id = 'c4999'") == 1
    )


async def test_add_many_chunks_and_shares_one_transaction(engine: AsyncEngine, statements: list[str]) -> None:
    class Small(Claims):
        chunk_rows = 100

    rows = [{"external_id": f"e{i}", "content": "x"} for i in range(250)]
    assert await Small(engine).add_many(rows) == 250
    assert len(statements) == 3
    with pytest.raises(ConflictError):  # the third chunk fails: the first two roll back with it
        await Small(engine).add_many(
            [{"external_id": f"n{i}", "content": "x"} for i in range(200)] + rows[:1]
        )
    assert await count(engine, "claims") == 250


async def test_add_many_of_a_model_without_audit_and_types(
    engine: AsyncEngine, statements: list[str]
) -> None:
    rows = [
        {
            "provider": "p",
            "model": "m",
            "input_tokens": i,
            "output_tokens": 1,
            "cost_usd": Decimal("0.000123"),
        }
        for i in range(1000)
    ]
    assert await Calls(engine).add_many(rows) == 1000
    assert len(statements) == 1
    assert "audit_log" not in statements[0]
    async with engine.connect() as conn:
        total, cost = (
            await conn.execute(text("SELECT sum(total_tokens), sum(cost_usd) FROM ai_calls"))
        ).one()
    assert (total, cost) == (sum(range(1000)) + 1000, Decimal("0.123000"))


async def test_add_many_returning_and_edge_cases(engine: AsyncEngine) -> None:
    repo = Training(engine)
    claim = await Claims(engine).add(external_id="e", content="c")
    rows = [
        {"framework": "fw", "claim_id": claim.id, "claim_text": f"t{i}", "evidence": {}, "validity": True}
        for i in range(3)
    ]
    stored = await repo.add_many(rows, returning=True)
    assert sorted(row.claim_text for row in stored) == ["t0", "t1", "t2"]
    assert all(isinstance(row, TrainingData) and row.used_in_training is False for row in stored)
    assert await repo.add_many([]) == 0
    assert await repo.add_many([], returning=True) == []
    with pytest.raises(InvalidRequestError, match="same fields"):
        await repo.add_many([rows[0], {"framework": "fw"}])
    with pytest.raises(ValidationError, match="sequence of rows"):
        await repo.add_many(rows[0])  # type: ignore[arg-type]
    with pytest.raises(IntegrityViolation) as info:  # foreign key
        await repo.add_many([{**rows[0], "claim_id": uuid.uuid4()}])
    assert info.value.constraint == "fk_training_data_claim_id_claims"


# -- update ----------------------------------------------------------------------------------------------


@pytest.mark.commits
async def test_update_is_partial_and_one_statement(engine: AsyncEngine, statements: list[str]) -> None:
    repo = Verifications(engine)
    added = await repo.add(**verification())
    statements.clear()
    updated = await repo.update(added.id, confidence=0.5, model_version="v2")
    assert len(statements) == 1
    assert statements[0].lstrip().upper().startswith("WITH")
    assert (updated.confidence, updated.model_version, updated.claim_id) == (0.5, "v2", "claim-1")
    assert updated.updated_at > added.updated_at  # onupdate=now() applies
    assert (await repo.get(added.id)).confidence == 0.5
    assert (await repo.update(str(added.id), confidence=0.6)).confidence == 0.6  # a UUID as text


async def test_update_refusals(engine: AsyncEngine) -> None:
    repo = Verifications(engine)
    added = await repo.add(**verification())
    missing = uuid.uuid4()
    with pytest.raises(NotFoundError) as info:
        await repo.update(missing, confidence=0.1)
    assert info.value.key == missing
    with pytest.raises(InvalidRequestError, match="no field"):
        await repo.update(added.id, confidense=0.1)
    with pytest.raises(InvalidRequestError, match="primary key"):
        await repo.update(added.id, id=uuid.uuid4())
    with pytest.raises(InvalidRequestError, match="at least one field"):
        await repo.update(added.id)
    with pytest.raises(InvalidRequestError, match="UUIDs"):
        await repo.update("not-a-uuid", confidence=0.1)
    with pytest.raises(IntegrityViolation):
        await repo.update(added.id, confidence=2.0)
    assert (await repo.get(added.id)).confidence == 0.9


async def test_update_inside_a_block_refreshes_the_loaded_instance(engine: AsyncEngine) -> None:
    repo = Verifications(engine)
    added = await repo.add(**verification())
    async with transaction():
        loaded = await repo.get(added.id)
        updated = await repo.update(added.id, confidence=0.25)
        assert updated is loaded  # one identity map: the instance the block already holds, refreshed
        assert loaded.confidence == 0.25


async def test_update_many(engine: AsyncEngine, statements: list[str]) -> None:
    repo = Verifications(engine)
    await repo.add_many([verification(claim_id=f"c{i}", confidence=i / 10) for i in range(10)])
    statements.clear()
    assert await repo.update_many(VerificationResult.confidence >= 0.5, values={"model_version": "hi"}) == 5
    assert await repo.update_many(values={"framework": "other"}, claim_id__in=["c0", "c1"]) == 2
    assert len(statements) == 2
    assert await repo.update_many(values={"model_version": "none"}, claim_id="missing") == 0
    assert await repo.count(model_version="hi") == 5
    assert await repo.count(framework="other") == 2
    with pytest.raises(InvalidRequestError, match="at least one filter"):
        await repo.update_many(values={"framework": "all"})
    with pytest.raises(InvalidRequestError, match="no field"):
        await repo.update_many(values={"nope": 1}, claim_id="c1")
    with pytest.raises(InvalidRequestError, match="no field"):
        await repo.update_many(values={"framework": "x"}, nope=1)
    with pytest.raises(InvalidRequestError, match="primary key"):
        await repo.update_many(values={"id": uuid.uuid4()}, claim_id="c1")
    assert await repo.update_many(true(), values={"framework": "all"}) == 10
    assert await Calls(engine).update_many(true(), values={"environment": "x"}) == 0  # not audited: rowcount


# -- delete ----------------------------------------------------------------------------------------------


async def test_delete_and_delete_many(engine: AsyncEngine, statements: list[str]) -> None:
    repo = Verifications(engine)
    await repo.add_many([verification(claim_id=f"c{i}", confidence=i / 10) for i in range(10)])
    first = (await repo.list(claim_id="c0"))[0]
    statements.clear()
    await repo.delete(first.id)
    assert len(statements) == 1
    with pytest.raises(NotFoundError):
        await repo.delete(first.id)
    assert await repo.delete_many(VerificationResult.confidence >= 0.5) == 5
    assert await repo.delete_many(claim_id__in=["c1", "c2", "zzz"]) == 2
    assert await repo.delete_many(claim_id="zzz") == 0
    with pytest.raises(InvalidRequestError, match="at least one filter"):
        await repo.delete_many()
    assert await count(engine, "verification_results") == 2
    assert await repo.delete_many(true()) == 2
    calls = Calls(engine)
    call = await calls.add(provider="p", model="m", input_tokens=1, output_tokens=1, cost_usd=Decimal(1))
    await calls.delete(call.id)
    with pytest.raises(NotFoundError):
        await calls.delete(call.id)
    assert await calls.delete_many(provider="p") == 0


# -- upsert ----------------------------------------------------------------------------------------------


def heartbeat(instance: str | None = "i-1", **overrides: Any) -> dict[str, Any]:
    return {
        "service_name": "api",
        "instance_id": instance,
        "status": "healthy",
        "last_heartbeat": NOW,
        **overrides,
    }


async def test_upsert_inserts_then_updates_on_a_named_constraint(
    engine: AsyncEngine, statements: list[str]
) -> None:
    repo = Health(engine)
    on = "uq_service_health_service_name_instance_id"
    first = await repo.upsert(heartbeat(), on=on)
    second = await repo.upsert(heartbeat(status="degraded", last_heartbeat=NOW + timedelta(seconds=5)), on=on)
    assert len(statements) == 2
    assert all(
        "ON CONFLICT ON CONSTRAINT uq_service_health_service_name_instance_id" in s for s in statements
    )
    assert not any(s.lstrip().upper().startswith("SELECT") for s in statements)  # never select-then-insert
    assert second.id == first.id
    assert (second.status, second.last_heartbeat) == ("degraded", NOW + timedelta(seconds=5))
    # `update` limits what an existing row gets; [] returns the existing row unchanged
    third = await repo.upsert(heartbeat(status="starting", metadata_={"v": 1}), on=on, update=["metadata_"])
    assert (third.status, third.metadata_) == ("degraded", {"v": 1})
    fourth = await repo.upsert(heartbeat(status="stopping"), on=on, update=[])
    assert (fourth.id, fourth.status) == (first.id, "degraded")
    assert await count(engine, "service_health") == 1


async def test_upsert_refusals(engine: AsyncEngine) -> None:
    repo = Health(engine)
    with pytest.raises(InvalidRequestError, match="no unique constraint or unique index named 'nope'"):
        await repo.upsert(heartbeat(), on="nope")
    with pytest.raises(InvalidRequestError, match="needs values for instance_id"):
        await repo.upsert(
            {"service_name": "a", "status": "healthy", "last_heartbeat": NOW},
            on="uq_service_health_service_name_instance_id",
        )
    with pytest.raises(ValidationError, match="instance_id: None for a NOT NULL column"):
        await repo.upsert(heartbeat(instance=None), on="uq_service_health_service_name_instance_id")
    with pytest.raises(InvalidRequestError, match="no field"):
        await repo.upsert(heartbeat(), on="uq_service_health_service_name_instance_id", update=["nope"])
    with pytest.raises(InvalidRequestError, match="primary key"):
        await repo.upsert(
            heartbeat(id=uuid.uuid4()), on="uq_service_health_service_name_instance_id", update=["id"]
        )
    with pytest.raises(InvalidRequestError, match="more than once"):
        await repo.upsert_many([heartbeat(), heartbeat()], on="uq_service_health_service_name_instance_id")
    with pytest.raises(IntegrityViolation) as info:
        await repo.upsert(heartbeat(status="sleeping"), on="uq_service_health_service_name_instance_id")
    assert info.value.constraint == "ck_service_health_status_known"
    assert await nothing_written(engine, "service_health")


async def test_upsert_on_a_partial_unique_index(engine: AsyncEngine, statements: list[str]) -> None:
    """`uq_model_checkpoints_one_active` is a unique INDEX (model_name, framework) WHERE is_active,
    NULLS NOT DISTINCT: `ON CONFLICT ON CONSTRAINT` cannot name it, so its columns and predicate are
    the conflict target."""
    repo = Checkpoints(engine)
    on = "uq_model_checkpoints_one_active"

    def checkpoint(version: str, framework: str | None = None, active: bool = True) -> dict[str, Any]:
        return {
            "model_name": "m",
            "framework": framework,
            "version": version,
            "checkpoint_path": f"/{version}",
            "metrics": {},
            "is_active": active,
        }

    one = await repo.upsert(checkpoint("1"), on=on)
    two = await repo.upsert(checkpoint("2"), on=on)  # same (m, NULL) active key: replaces the version
    assert two.id == one.id and two.version == "2"
    other = await repo.upsert(checkpoint("1", framework="torch"), on=on)
    inactive = await repo.upsert(checkpoint("0", active=False), on=on)  # outside the index: a new row
    assert len({one.id, other.id, inactive.id}) == 3
    assert "ON CONFLICT (model_name, framework) WHERE is_active DO UPDATE" in statements[0]
    assert await count(engine, "model_checkpoints") == 3
    assert await count(engine, "model_checkpoints", "is_active") == 2


async def test_upsert_many_matches_null_keys_back_on_a_nulls_not_distinct_index(engine: AsyncEngine) -> None:
    """Rows are matched back to their input position with NULL = NULL only where the target says so."""
    repo = Checkpoints(engine)
    on = "uq_model_checkpoints_one_active"

    def checkpoint(version: str, framework: str | None) -> dict[str, Any]:
        return {
            "model_name": "m",
            "framework": framework,
            "version": version,
            "checkpoint_path": f"/{version}",
            "metrics": {},
            "is_active": True,
        }

    first = await repo.upsert_many([checkpoint("1", None), checkpoint("1t", "torch")], on=on)
    again = await repo.upsert_many([checkpoint("2t", "torch"), checkpoint("2", None)], on=on)
    assert [(c.framework, c.version) for c in again] == [("torch", "2t"), (None, "2")]
    assert [c.id for c in again] == [first[1].id, first[0].id]
    assert await count(engine, "model_checkpoints") == 2


async def test_upsert_many_returns_rows_in_input_order(engine: AsyncEngine, statements: list[str]) -> None:
    repo = Health(engine)
    on = "uq_service_health_service_name_instance_id"
    existing = await repo.upsert(heartbeat("i-2"), on=on)
    statements.clear()
    rows = [heartbeat(f"i-{i}", status="degraded") for i in (3, 2, 1)]
    stored = await repo.upsert_many(rows, on=on)
    assert len(statements) == 1
    assert [s.instance_id for s in stored] == ["i-3", "i-2", "i-1"]
    assert stored[1].id == existing.id
    assert {s.status for s in stored} == {"degraded"}
    assert await repo.upsert_many([], on=on) == []
    assert await count(engine, "service_health") == 3


async def test_upsert_of_a_model_without_audit(engine: AsyncEngine) -> None:
    from persistence.models import ReconciliationReport

    class Reports(Repository[ReconciliationReport]):
        model = ReconciliationReport

    repo = Reports(engine)
    values = {
        "report_date": NOW.date(),
        "period_start": NOW,
        "period_end": NOW + timedelta(days=1),
        "total_calls": 1,
        "total_cost_usd": Decimal("1.50"),
        "total_tokens": 10,
        "source": "revenium",
    }
    first = await repo.upsert(values, on="uq_reconciliation_reports_period_start_period_end_source")
    second = await repo.upsert(
        {**values, "total_calls": 2}, on="uq_reconciliation_reports_period_start_period_end_source"
    )
    many = await repo.upsert_many(
        [{**values, "total_calls": 3}], on="uq_reconciliation_reports_period_start_period_end_source"
    )
    assert first.id == second.id == many[0].id
    assert many[0].total_calls == 3
    assert await count(engine, "audit_log") == 0


@pytest.mark.parametrize("inside", [False, True], ids=["outside", "in-own-transaction"])
async def test_50_concurrent_upserts_of_one_key_end_with_one_row(engine: AsyncEngine, inside: bool) -> None:
    repo = Health(engine)
    on = "uq_service_health_service_name_instance_id"

    async def beat(n: int) -> ServiceHealth:
        values = heartbeat(last_heartbeat=NOW + timedelta(seconds=n), metadata_={"n": n})
        if inside:
            async with transaction():
                return await repo.upsert(values, on=on)
        return await repo.upsert(values, on=on)

    results = await asyncio.gather(*(beat(n) for n in range(50)))
    assert len({r.id for r in results}) == 1
    assert await count(engine, "service_health") == 1
    assert await count(engine, "audit_log", "action = 'insert'") == 1
    assert await count(engine, "audit_log", "action = 'update'") == 49  # every upsert changed the row


async def test_50_concurrent_upsert_many_of_overlapping_keys(engine: AsyncEngine) -> None:
    repo = Health(engine)
    on = "uq_service_health_service_name_instance_id"

    async def beat(n: int) -> list[ServiceHealth]:
        return await repo.upsert_many([heartbeat(f"i-{k}", metadata_={"n": n}) for k in range(5)], on=on)

    results = await asyncio.gather(*(beat(n) for n in range(50)))
    assert all([r.instance_id for r in rows] == [f"i-{k}" for k in range(5)] for rows in results)
    assert await count(engine, "service_health") == 5
    assert await count(engine, "audit_log", "action = 'insert'") == 5
    assert await count(engine, "audit_log", "action = 'update'") == 5 * 49


# -- append-only ------------------------------------------------------------------------------------------


async def test_append_only_flag_refuses_changes(engine: AsyncEngine) -> None:
    class FrozenClaims(Claims):
        append_only = True

    repo = FrozenClaims(engine)
    claim = await repo.add(external_id="a", content="b")
    for attempt in (
        repo.update(claim.id, content="c"),
        repo.update_many(true(), values={"content": "c"}),
        repo.delete(claim.id),
        repo.delete_many(true()),
        repo.upsert({"external_id": "a", "content": "c"}, on="uq_claims_external_id"),
        repo.upsert_many([{"external_id": "a", "content": "c"}], on="uq_claims_external_id"),
    ):
        with pytest.raises(InvalidRequestError, match="append-only"):
            await attempt
    assert await count(engine, "claims", "content = 'b'") == 1


async def test_statement_count_helper_sees_nothing_for_refused_calls(
    engine: AsyncEngine, statements: list[str]
) -> None:
    repo = Claims(engine)
    with pytest.raises(InvalidRequestError):
        await repo.upsert({"external_id": "a", "content": "b"}, on="ix_claims_created_at")  # not unique
    assert statements == []
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Claim)) == 0


# -- statements without model instances share the block's connection ----------------------------------


class Boom(Exception):
    pass


@pytest.mark.commits
async def test_counts_and_bulk_writes_join_the_block_and_its_savepoints(engine: AsyncEngine) -> None:
    """count/exists/delete/delete_many/update_many/add_many run on the block's connection, not a
    session of their own: they see the block's writes, and roll back with the block or savepoint."""
    repo = Claims(engine)
    with pytest.raises(Boom):
        async with transaction():
            kept = await repo.add(external_id="k", content="c", claim_type="t")
            assert await repo.add_many([{"external_id": f"m{i}", "content": "c"} for i in range(3)]) == 3
            assert await repo.count() == 4
            assert await repo.exists(external_id="k")
            assert await repo.update_many(external_id__in=["m0", "m1"], values={"claim_type": "u"}) == 2
            with pytest.raises(Boom):
                async with transaction():
                    await repo.delete(kept.id)
                    assert await repo.delete_many(claim_type="u") == 2
                    assert await repo.count() == 1
                    raise Boom
            assert await repo.count() == 4  # the savepoint took the deletes back
            assert await count(engine, "claims") == 0  # nothing visible outside the block yet
            raise Boom
    assert await nothing_written(engine, "claims")

    async with transaction():
        assert await repo.add_many([{"external_id": "x", "content": "c"}]) == 1
        await repo.delete_many(external_id="x")
        assert not await repo.exists(external_id="x")
    assert await count(engine, "audit_log", "action = 'delete'") == 1
