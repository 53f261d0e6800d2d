"""Declarative base: one MetaData with a naming convention, so every constraint has a stable name.

Stable names matter twice: Alembic can drop what it created, and `persistence.errors` maps a
violated constraint to a typed error by its name, never by message text.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, MetaData, Numeric, String, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSON = dict[str, Any]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        JSON: JSONB,
        datetime: DateTime(timezone=True),
        uuid.UUID: UUID(as_uuid=True),
        Decimal: Numeric,
        str: String,
    }

    def __repr__(self) -> str:
        mapper = self.__mapper__
        keys = [mapper.get_property_by_column(column).key for column in mapper.primary_key]
        pk = ", ".join(f"{key}={getattr(self, key, None)!r}" for key in keys)
        return f"{type(self).__name__}({pk})"


class UUIDPrimaryKey:
    """A UUID key made in Python (no RETURNING needed for bulk inserts) with a server default for raw SQL."""

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()"), sort_order=-100
    )


class CreatedAt:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), nullable=False, sort_order=100)


class Timestamps(CreatedAt):
    updated_at: Mapped[datetime] = mapped_column(
        server_default=func.now(), onupdate=func.now(), nullable=False, sort_order=101
    )
