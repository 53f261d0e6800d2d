"""`Repository[MyModel]` for a model on a service's own `DeclarativeBase` (its own MetaData), at runtime.

mypy checks this module too: `Repository[Note]` below is the typing half (tests/typing has the
rejection of a class that is not mapped).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, assert_type

import pytest
import pytest_asyncio
from sqlalchemy import ForeignKey, MetaData, Numeric, String, UniqueConstraint, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from persistence.audit import audit_context, register_audited
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import InvalidRequestError, NotFoundError, ValidationError
from persistence.models import AuditLog, Claim
from persistence.repository import Page, Repository
from persistence.transaction import transaction

pytestmark = pytest.mark.commits


class ServiceBase(DeclarativeBase):
    """A service's own base: its own MetaData, nothing shared with `persistence.models.Base`."""

    metadata = MetaData(naming_convention={"uq": "uq_%(table_name)s_%(column_0_N_name)s"})


class Note(ServiceBase):
    __tablename__ = "svc_notes"
    __table_args__ = (UniqueConstraint("slug"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(40))
    claim_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(Claim.id, ondelete="SET NULL"))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    claim: Mapped[Claim | None] = relationship(Claim)


class Tag(ServiceBase):
    """An audited service model (registered below)."""

    __tablename__ = "svc_tags"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)


register_audited(Tag, "svc_tag")


class Notes(Repository[Note]):
    model = Note


class Tags(Repository[Tag]):
    model = Tag


@pytest_asyncio.fixture(loop_scope="session")
async def engine(fresh_database: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    eng = build_engine(fresh_database)
    async with eng.begin() as conn:
        await conn.run_sync(ServiceBase.metadata.create_all)
    yield eng
    await eng.dispose()


async def test_reads_writes_pages_and_upserts_on_a_service_model(engine: AsyncEngine) -> None:
    notes = Notes(engine)
    claim = await Claims(engine).add(external_id="e1", content="c")
    first = await notes.add(slug="a", price=Decimal("1.50"), claim_id=claim.id, data={"k": [1]})
    assert_type(first, Note)
    assert await notes.add_many([{"slug": f"n{i}", "price": i} for i in range(5)]) == 5
    assert (await notes.get(first.id)).data == {"k": [1]}
    assert_type(await notes.get_or_none(uuid.uuid4()), Note | None)
    assert [n.slug for n in await notes.list(price__gte=3, order_by="-price")] == ["n4", "n3"]
    assert await notes.count(claim_id__isnull=False) == 1
    page = await notes.page(order_by="slug", limit=4)
    assert_type(page, Page[Note])
    assert page.next_cursor is not None
    rest = await notes.page(order_by="slug", limit=4, after=page.next_cursor)
    assert [n.slug for n in page.items + rest.items] == ["a", "n0", "n1", "n2", "n3", "n4"]
    streamed = [n.slug async for n in notes.stream(order_by="-slug", batch_size=2)]
    assert streamed == ["n4", "n3", "n2", "n1", "n0", "a"]
    updated = await notes.update(first.id, price="2.25")
    assert updated.price == Decimal("2.25")
    upserted = await notes.upsert({"slug": "a", "price": 9}, on="uq_svc_notes_slug")
    assert upserted.id == first.id and upserted.price == Decimal("9.00")
    loaded = await notes.get(first.id, load=("claim",))
    assert loaded.claim is not None and loaded.claim.external_id == "e1"
    with pytest.raises(ValidationError, match="decimal places"):
        await notes.add(slug="b", price=Decimal("0.001"))
    with pytest.raises(InvalidRequestError, match="keys are UUIDs"):
        await notes.get("not-a-uuid")
    await notes.delete(first.id)
    with pytest.raises(NotFoundError):
        await notes.get(first.id)
    assert await notes.delete_many(slug__in=["n0", "n1"]) == 2


async def test_audit_is_off_for_a_service_model_until_it_is_registered(engine: AsyncEngine) -> None:
    async with transaction():
        with audit_context(user_id="svc"):
            await Notes(engine).add(slug="quiet", price=1)
            tag = await Tags(engine).add(name="loud")
            await Tags(engine).update(tag.id, name="louder")
    async with engine.connect() as conn:
        rows = (await conn.execute(select(AuditLog.entity_type, AuditLog.action, AuditLog.user_id))).all()
        assert sorted(map(tuple, rows)) == [("svc_tag", "insert", "svc"), ("svc_tag", "update", "svc")]
        assert await conn.scalar(select(func.count()).select_from(Note)) == 1


def test_a_class_that_is_not_mapped_is_refused(engine: AsyncEngine) -> None:
    class NotAModel:
        pass

    class Broken(Repository[Note]):
        model = NotAModel

    with pytest.raises(TypeError, match="mapped class"):
        Broken(engine)


class Claims(Repository[Claim]):
    model = Claim
