"""What every repository shares: the model, the engine, and the session of the current transaction."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from persistence.errors import ArgumentTypeError
from persistence.models import Base
from persistence.transaction import connection_scope, session_scope

ModelT = TypeVar("ModelT", bound=Base)


class RepositoryBase(Generic[ModelT]):
    """Binds a model to an engine. Subclasses set `model`.

    Repositories never commit or roll back themselves: inside a `transaction()` block they run on
    its session; outside one, each call is its own short transaction.
    """

    model: ClassVar[type[Any]]

    def __init__(self, engine: AsyncEngine) -> None:
        if not hasattr(type(self), "model"):
            raise TypeError(f"{type(self).__name__} must set the class attribute `model`")
        if not isinstance(engine, AsyncEngine):  # else a confusing AttributeError at the first call
            raise ArgumentTypeError(
                f"{type(self).__name__}(engine): engine expects an AsyncEngine, got {type(engine).__name__}"
            )
        self.engine = engine

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with session_scope(self.engine) as session:
            yield session

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """For statements that load no model instances: skips the ORM session outside a block."""
        async with connection_scope(self.engine) as conn:
            yield conn

    @property
    def _pk(self) -> InstrumentedAttribute[Any]:
        """The single-column primary key (every table of the package has one)."""
        [pk] = inspect(self.model).primary_key
        attr: InstrumentedAttribute[Any] = getattr(
            self.model, inspect(self.model).get_property_by_column(pk).key
        )
        return attr
