# mypy: disable-error-code="arg-type,list-item,call-overload"
# (every call here passes a wrong type on purpose)
"""Every public repository method, given a wrong-typed or out-of-range non-column argument (limit,
offset, order_by, cursor, batch_size, flags, ids, durations, mappings), raises a `PersistenceError`
naming that argument before any SQL is sent, so nothing is written."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.errors import PersistenceError
from persistence.models import Claim, ReconciliationReport
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


class Claims(Repository[Claim]):
    model = Claim


class Reports(Repository[ReconciliationReport]):
    model = ReconciliationReport


ROW = {"external_id": "e-1", "content": "text"}
DECISION = {
    "claim_id": "c-1",
    "consensus_result": {"ok": True},
    "participating_frameworks": ["a"],
    "consensus_type": "majority",
    "consensus_confidence": 0.5,
}
CHECKPOINT = {"model_name": "m", "version": "1", "checkpoint_path": "/m"}
Call = Callable[[AsyncEngine], Any]

# (argument named in the error, call): each call is wrong in exactly that argument.
CASES: list[tuple[str, Call]] = [
    ("engine", lambda e: Claims(None)),
    ("engine", lambda e: ClaimRepository("postgresql://")),
    ("ids", lambda e: Claims(e).get_many("abc")),
    ("ids", lambda e: Claims(e).get_many(5)),
    ("ids", lambda e: Claims(e).get_many({uuid.uuid4(): 1})),
    ("ids", lambda e: TrainingDataRepository(e).mark_used_in_batch({uuid.uuid4(): 1}, "b")),
    ("limit", lambda e: Claims(e).list(limit="5")),
    ("limit", lambda e: Claims(e).list(limit=1.5)),
    ("limit", lambda e: Claims(e).list(limit=True)),
    ("limit", lambda e: Claims(e).list(limit=0)),
    ("offset", lambda e: Claims(e).list(offset=-1)),
    ("offset", lambda e: Claims(e).list(offset=1.0)),
    ("offset", lambda e: Claims(e).list(offset="1")),
    ("order_by", lambda e: Claims(e).list(order_by="")),
    ("order_by", lambda e: Claims(e).list(order_by=[""])),
    ("order_by", lambda e: Claims(e).list(order_by="-")),
    ("order_by", lambda e: Claims(e).list(order_by=5)),
    ("order_by", lambda e: Claims(e).list(order_by=b"")),
    ("order_by", lambda e: Claims(e).list(order_by=[5])),
    ("order_by", lambda e: Claims(e).page(order_by="")),
    ("limit", lambda e: Claims(e).page(limit="50")),
    ("limit", lambda e: Claims(e).page(limit=10**9)),
    ("after", lambda e: Claims(e).page(after=5)),
    ("after", lambda e: Claims(e).page(after="not-a-cursor")),
    ("batch_size", lambda e: Claims(e).stream(batch_size=0)),
    ("batch_size", lambda e: Claims(e).stream(batch_size="10")),
    ("order_by", lambda e: Claims(e).stream(order_by=None)),
    ("rows", lambda e: Claims(e).add_many(ROW)),
    ("rows", lambda e: Claims(e).add_many("abc")),
    ("rows", lambda e: Claims(e).add_many([("external_id", "e")])),
    ("returning", lambda e: Claims(e).add_many([ROW], returning="yes")),
    ("values", lambda e: Claims(e).update_many(values=[("content", "x")], external_id="e-1")),
    ("values", lambda e: Claims(e).upsert([("external_id", "e")], on="uq_claims_external_id")),
    ("on", lambda e: Claims(e).upsert(ROW, on=5)),
    ("update", lambda e: Claims(e).upsert(ROW, on="uq_claims_external_id", update="content")),
    ("update", lambda e: Claims(e).upsert_many([ROW], on="uq_claims_external_id", update=5)),
    ("rows", lambda e: Claims(e).upsert_many(ROW, on="uq_claims_external_id")),
    ("Claim", lambda e: Claims(e).add(5)),
    # None for a key that must be given would become IS NULL (a silent empty result) or set NULL.
    ("entity_id", lambda e: AuditLogRepository(e).for_entity("claims", None)),
    ("entity_type", lambda e: AuditLogRepository(e).for_entity(None, "x")),
    ("claim_id", lambda e: ConsensusRepository(e).get_for_claim(None)),
    ("claim_id", lambda e: VerificationRepository(e).get_by_claim_id(None)),
    ("external_id", lambda e: ClaimRepository(e).get_by_external_id(None)),
    ("version", lambda e: CheckpointRepository(e).activate("m", None)),
    ("model_name", lambda e: CheckpointRepository(e).get_active(None)),
    ("framework", lambda e: TrainingDataRepository(e).unused_for_framework(None)),
    ("batch_id", lambda e: TrainingDataRepository(e).mark_used_in_batch([uuid.uuid4()], None)),
    # Wrong types of those keys are refused by the column's check.
    ("model_name", lambda e: CheckpointRepository(e).activate(5, "1")),
    ("training_batch_id", lambda e: TrainingDataRepository(e).mark_used_in_batch([uuid.uuid4()], 5)),
    ("id__in", lambda e: TrainingDataRepository(e).mark_used_in_batch(["x"], "b")),
    ("filters", lambda e: Claims(e).list("external_id = 'x'")),
    ("filters", lambda e: Claims(e).delete_many(None)),
    # Primary keys: malformed or out of the column's integer range (was a bare 22000 DataError).
    ("id", lambda e: Claims(e).get("nope")),
    ("id", lambda e: Claims(e).delete(1.5)),
    ("id", lambda e: Reports(e).get(2**40)),
    ("id", lambda e: Reports(e).get_many([2**70])),
    ("id", lambda e: Reports(e).delete(-(2**31) - 1)),
    ("id", lambda e: Reports(e).update(2**63, status="PASS")),
    ("limit", lambda e: AuditLogRepository(e).recent(limit=0)),
    ("limit", lambda e: AuditLogRepository(e).recent(limit="100")),
    ("metrics", lambda e: CheckpointRepository(e).register(**CHECKPOINT, metrics=[1])),
    (
        "training_config",
        lambda e: CheckpointRepository(e).register(**CHECKPOINT, metrics={}, training_config=[]),
    ),
    ("claim", lambda e: ClaimRepository(e).create_claim([("external_id", "e")])),
    ("limit", lambda e: ClaimRepository(e).search_by_type("t", limit="5")),
    ("limit", lambda e: ClaimRepository(e).search_by_type("t", limit=-1)),
    ("replace", lambda e: ConsensusRepository(e).record_decision(**DECISION, replace="yes")),
    ("replace", lambda e: ConsensusRepository(e).record_decision(**DECISION, replace=1)),
    (
        "consensus_result",
        lambda e: ConsensusRepository(e).record_decision(**{**DECISION, "consensus_result": [1]}),
    ),
    (
        "participating_frameworks",
        lambda e: ConsensusRepository(e).record_decision(**{**DECISION, "participating_frameworks": "a"}),
    ),
    ("status", lambda e: ServiceHealthRepository(e).heartbeat("api", "i", status=1)),
    ("metadata", lambda e: ServiceHealthRepository(e).heartbeat("api", "i", metadata=[1])),
    ("older_than", lambda e: ServiceHealthRepository(e).stale_instances(timedelta(days=10**6))),
    ("older_than", lambda e: ServiceHealthRepository(e).stale_instances(timedelta.max)),
    ("older_than", lambda e: ServiceHealthRepository(e).stale_instances(timedelta(0))),
    ("older_than", lambda e: ServiceHealthRepository(e).stale_instances(60)),
    ("examples", lambda e: TrainingDataRepository(e).add_examples({"framework": "fw"})),
    ("examples", lambda e: TrainingDataRepository(e).add_examples("abc")),
    ("limit", lambda e: TrainingDataRepository(e).unused_for_framework("fw", limit=1.5)),
    ("ids", lambda e: TrainingDataRepository(e).mark_used_in_batch("abc", "b")),
    ("ids", lambda e: TrainingDataRepository(e).mark_used_in_batch(None, "b")),
    (
        "result",
        lambda e: VerificationRepository(e).create_verification(
            claim_id="c", framework="f", result=[1], confidence=0.5
        ),
    ),
    ("limit", lambda e: VerificationRepository(e).get_recent_verifications(limit="10")),
    ("limit", lambda e: VerificationRepository(e).get_recent_verifications(limit=0)),
]


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


async def _run(call: Call, engine: AsyncEngine) -> None:
    result = call(engine)
    if hasattr(result, "__anext__"):
        await result.__anext__()
    elif hasattr(result, "__await__"):
        await result


@pytest.mark.parametrize(
    ("argument", "call"), CASES, ids=[f"{i}-{name}" for i, (name, _) in enumerate(CASES)]
)
async def test_a_wrong_argument_is_a_persistence_error_naming_it(
    engine: AsyncEngine, statements: list[str], argument: str, call: Call
) -> None:
    with pytest.raises(PersistenceError) as info:
        await _run(call, engine)
    assert argument in str(info.value), str(info.value)
    assert statements == []
    async with engine.connect() as conn:
        written = await conn.scalar(
            text(
                "SELECT (SELECT count(*) FROM claims) + (SELECT count(*) FROM consensus_decisions)"
                " + (SELECT count(*) FROM service_health) + (SELECT count(*) FROM training_data)"
                " + (SELECT count(*) FROM model_checkpoints) + (SELECT count(*) FROM verification_results)"
                " + (SELECT count(*) FROM audit_log)"
            )
        )
    assert written == 0
