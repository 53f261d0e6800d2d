"""`mypy --strict` on snippets a service would write: a model on its own `DeclarativeBase` is a
repository model, a class that is not mapped is not (`Repository[X]` is a type error)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[2]

SERVICE = """
from typing import assert_type
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, DeclarativeBaseNoMeta, Mapped, MappedAsDataclass, mapped_column

from persistence import Page, Repository


class ServiceBase(DeclarativeBase):
    pass


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class NoMetaBase(DeclarativeBaseNoMeta):
    pass


class Note(ServiceBase):
    __tablename__ = "notes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    body: Mapped[str]


class Row(DataclassBase):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)


class Plain(NoMetaBase):
    __tablename__ = "plain"
    id: Mapped[int] = mapped_column(primary_key=True)


class Notes(Repository[Note]):
    model = Note


class Rows(Repository[Row]):
    model = Row


class Plains(Repository[Plain]):
    model = Plain


async def use(engine: AsyncEngine, key: uuid.UUID) -> None:
    notes = Notes(engine)
    assert_type(await notes.get(key, load=()), Note)
    assert_type(await notes.page(order_by="-body"), Page[Note])
    assert_type(await notes.add(body="x"), Note)
    assert_type(await Rows(engine).list(), list[Row])
    assert_type(await Plains(engine).get_or_none(1), Plain | None)
"""

NOT_A_MODEL = """
from persistence import Repository


class NotAModel:
    id: int


class Wrong(Repository[NotAModel]):
    model = NotAModel
"""


def test_mypy_accepts_a_service_model_and_rejects_a_class_that_is_not_mapped(tmp_path: Path) -> None:
    (tmp_path / "service_snippet.py").write_text(textwrap.dedent(SERVICE))
    (tmp_path / "wrong_snippet.py").write_text(textwrap.dedent(NOT_A_MODEL))
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--python-version=3.11",
            "--no-error-summary",
            "--show-error-codes",
            f"--config-file={ROOT / 'pyproject.toml'}",
            f"--cache-dir={ROOT / '.mypy_cache'}",
            str(tmp_path / "service_snippet.py"),
            str(tmp_path / "wrong_snippet.py"),
        ]
    )
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert not [line for line in errors if "service_snippet.py" in line], stdout + stderr
    assert len(errors) == 1 and "wrong_snippet.py:9" in errors[0], stdout + stderr
    assert 'Type argument "NotAModel" of "Repository" must be a subtype of "MappedModel"' in errors[0]
    assert "[type-var]" in errors[0] and status == 1
