"""Relationships loaded with a read (`load=`), and a clear error for those that were not."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import InvalidRequestError
from persistence.models import Claim, TrainingData
from persistence.repository import Repository
from persistence.transaction import transaction

pytestmark = pytest.mark.commits

NOT_LOADED = "is not available due to lazy='raise'"


class Claims(Repository[Claim]):
    model = Claim


class Examples(Repository[TrainingData]):
    model = TrainingData


@pytest_asyncio.fixture(loop_scope="session")
async def engine(fresh_database: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    eng = build_engine(fresh_database)
    yield eng
    await eng.dispose()


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement sent on the engine (an event hook, not a mock)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine.sync_engine, "before_cursor_execute", record)


@pytest.fixture(params=["outside", "inside"])
def block(request: pytest.FixtureRequest) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
    """Run the reads outside any transaction block, or inside one."""
    if request.param == "inside":
        return transaction
    return contextlib.nullcontext


async def _claims_with_examples(engine: AsyncEngine) -> tuple[Claim, Claim]:
    claims, examples = Claims(engine), Examples(engine)
    first = await claims.add(external_id="c1", content="the sky is blue")
    second = await claims.add(external_id="c2", content="water is wet")
    for text in ("a", "b"):
        await examples.add(
            framework="f", claim_id=first.id, claim_text=text, evidence={}, validity=True, confidence=0.5
        )
    return first, second


async def test_an_unloaded_relationship_raises_a_clear_error_not_detached_or_lazy_io(
    engine: AsyncEngine, block: Callable[[], Any]
) -> None:
    first, _ = await _claims_with_examples(engine)
    async with block():
        claim = await Claims(engine).get(first.id)
        with pytest.raises(sqlalchemy.exc.InvalidRequestError, match=NOT_LOADED):
            _ = claim.training_examples
        [example, *_] = await Examples(engine).list(claim_id=first.id)
        with pytest.raises(sqlalchemy.exc.InvalidRequestError, match=NOT_LOADED):
            _ = example.claim


async def test_every_read_loads_the_named_relationship_with_one_extra_query(
    engine: AsyncEngine, block: Callable[[], Any], statements: list[str]
) -> None:
    first, second = await _claims_with_examples(engine)
    claims = Claims(engine)
    load = ("training_examples",)
    async with block():
        statements.clear()
        got = await claims.get(first.id, load=load)
        assert sorted(e.claim_text for e in got.training_examples) == ["a", "b"]
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2
        assert (await claims.get_or_none(second.id, load=load)) is not None
        many = await claims.get_many([first.id, second.id], load=load)
        listed = await claims.list(order_by="external_id", load=load)
        page = await claims.page(order_by="external_id", limit=1, load=load)
        streamed = [c async for c in claims.stream(order_by="external_id", batch_size=1, load=load)]
    for rows in (many, listed, streamed):
        assert [len(c.training_examples) for c in rows] == [2, 0]
    assert [len(c.training_examples) for c in page.items] == [2]
    # The related rows' own relationships were not asked for: they raise too.
    with pytest.raises(sqlalchemy.exc.InvalidRequestError, match=NOT_LOADED):
        _ = got.training_examples[0].claim


async def test_load_takes_attributes_paths_and_the_many_to_one_side(engine: AsyncEngine) -> None:
    first, _ = await _claims_with_examples(engine)
    claims, examples = Claims(engine), Examples(engine)
    by_attribute = await claims.get(first.id, load=Claim.training_examples)
    assert len(by_attribute.training_examples) == 2
    by_path = await claims.get(first.id, load="training_examples.claim")
    assert {e.claim.id for e in by_path.training_examples if e.claim is not None} == {first.id}
    [example, *_] = await examples.list(claim_id=first.id, load=[TrainingData.claim])
    assert example.claim is not None and example.claim.external_id == "c1"


async def test_unknown_relationships_are_refused_before_any_sql(
    engine: AsyncEngine, statements: list[str]
) -> None:
    claims = Claims(engine)
    bad: list[Any] = [
        "nope",
        "content",  # a column, not a relationship
        "training_examples.nope",
        TrainingData.claim,  # a relationship of another model
        Claim.content,
        42,
        [None],
        "",
    ]
    statements.clear()
    for load in bad:
        with pytest.raises(InvalidRequestError):
            await claims.list(load=load)
    with pytest.raises(InvalidRequestError, match="relationships: training_examples"):
        await claims.get_or_none("00000000-0000-0000-0000-000000000000", load="nope")
    assert statements == []


async def test_rows_returned_by_writes_raise_on_relationships_too(
    engine: AsyncEngine, block: Callable[[], Any]
) -> None:
    claims = Claims(engine)
    async with block():
        added = await claims.add(external_id="w1", content="x")
        updated = await claims.update(added.id, content="y")
        upserted = await claims.upsert({"external_id": "w1", "content": "z"}, on="uq_claims_external_id")
        [many] = await claims.upsert_many([{"external_id": "w2", "content": "z"}], on="uq_claims_external_id")
        [returned] = await claims.add_many([{"external_id": "w3", "content": "z"}], returning=True)
        for row in (added, updated, upserted, many, returned):
            with pytest.raises(sqlalchemy.exc.InvalidRequestError, match=NOT_LOADED):
                _ = row.training_examples
