"""What every repository shares: the model, the engine, and the session of the current transaction."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from sqlalchemy import FromClause, inspect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper

from persistence.errors import ArgumentTypeError
from persistence.transaction import connection_scope, session_scope


class MappedModel(Protocol):
    """Any ORM-mapped class: ours (`persistence.models.Base`) or a service's on its own
    `DeclarativeBase` (or `DeclarativeBaseNoMeta`, `MappedAsDataclass`), so `Repository[MyModel]`
    type-checks for both. A class that is not mapped is rejected by mypy here and at runtime by
    `RepositoryBase.__init__`."""

    __mapper__: ClassVar[Mapper[Any]]
    __table__: ClassVar[FromClause]


ModelT = TypeVar("ModelT", bound=MappedModel)


class RepositoryBase(Generic[ModelT]):
    """Binds a model to an engine. Subclasses set `model`.

    Repositories never commit or roll back themselves: inside a `transaction()` block they run on
    its session; outside one, each call is its own short transaction.
    """

    model: ClassVar[type[Any]]

    def __init__(self, engine: AsyncEngine) -> None:
        if not hasattr(type(self), "model"):
            raise TypeError(f"{type(self).__name__} must set the class attribute `model`")
        if not isinstance(inspect(type(self).model, raiseerr=False), Mapper):
            raise TypeError(f"{type(self).__name__}.model must be a mapped class, got {type(self).model!r}")
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
