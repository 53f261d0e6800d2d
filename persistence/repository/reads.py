"""The read side of a repository: get, get_many, list, keyset pages, count, exists and stream.

Every result is an ORM instance of the repository's model, as the database has it: inside a
`transaction()` block a read sees the block's own writes, and refreshes (`populate_existing`) an
instance of the same row already in the block's session. Outside a block each call has a fresh
session, so that refresh (which costs up to a third more per row on large results) is skipped.

Field names that callers pass (`order_by`, keyword lookups) are checked against the model before any
SQL is built (`persistence.repository.filters`); values are always bound parameters.

Keyset pages, their cursors and how NULLs sort: `persistence.repository.keyset`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic

from sqlalchemy import Executable, Select, func, literal_column, select

from persistence.errors import InvalidRequestError, NotFoundError
from persistence.repository.base import ModelT, RepositoryBase
from persistence.repository.coerce import describe
from persistence.repository.filters import Filter, where_clauses
from persistence.repository.keyset import SortPlan, sort_plan
from persistence.repository.loading import Load, load_options
from persistence.repository.meta import model_info
from persistence.repository.retry import retry_read
from persistence.transaction import in_transaction

MAX_LIMIT = 10_000
"""The largest `limit` (list, page) and `batch_size` (stream) a caller may ask for."""

_MAX_OFFSET = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Page(Generic[ModelT]):
    """One keyset page: `items`, and the cursor of the next page (None on the last page)."""

    items: list[ModelT]
    next_cursor: str | None


class Reads(RepositoryBase[ModelT]):
    """Typed reads of `model`. Outside a `transaction()` block each call is one short transaction."""

    max_ids_per_query: ClassVar[int] = 10_000
    """`get_many` sends at most this many ids per `= ANY(:ids)` query (all in one transaction)."""

    async def get(self, id: Any, *, load: Load = ()) -> ModelT:
        """The row with primary key `id`, or `NotFoundError(entity, key)`.

        `load` names relationships to load with the row (`load=("training_examples",)`); every other
        relationship raises when touched (`persistence.repository.loading`). So for every read."""
        found = await self.get_or_none(id, load=load)
        if found is None:
            raise NotFoundError(self.model.__name__, model_info(self.model).coerce_key(id))
        return found

    async def get_or_none(self, id: Any, *, load: Load = ()) -> ModelT | None:
        """The row with primary key `id`, or None. A malformed key raises `InvalidRequestError`."""
        info = model_info(self.model)
        key = info.coerce_key(id)
        found = await self._fetch(_loading(info.get_stmt, self.model, load), [{"key": key}])
        return found[0] if found else None

    async def get_many(self, ids: Sequence[Any], *, load: Load = ()) -> builtins.list[ModelT]:
        """The rows with these primary keys, in the order of `ids`; missing ids are skipped and a
        repeated id is returned once. One `= ANY(:ids)` query per `max_ids_per_query` ids."""
        if isinstance(ids, str | bytes | Mapping) or not isinstance(ids, Iterable):
            raise InvalidRequestError(f"get_many takes a sequence of ids, got {_short(ids)}")
        info = model_info(self.model)
        stmt = _loading(info.get_many_stmt, self.model, load)
        keys = builtins.list(dict.fromkeys(info.coerce_key(id_) for id_ in ids))
        if not keys:
            return []
        step = self.max_ids_per_query
        chunks = [{"keys": keys[start : start + step]} for start in range(0, len(keys), step)]
        found = {getattr(row, info.pk_key): row for row in await self._fetch(stmt, chunks)}
        return [found[key] for key in keys if key in found]

    async def list(
        self,
        *filters: Filter,
        order_by: str | Sequence[str] = (),
        limit: int | None = None,
        offset: int = 0,
        load: Load = (),
        **lookups: Any,
    ) -> builtins.list[ModelT]:
        """Rows matching every filter and lookup (`confidence__gte=0.9`, `claim_id__in=[...]`).

        With `order_by` the primary key is appended as a tiebreaker, so `limit`/`offset` windows are
        stable; without it the order is whatever PostgreSQL returns. Prefer `page()` for paging.
        """
        if limit is not None:
            _check_count(limit, "limit")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= _MAX_OFFSET:
            raise InvalidRequestError(f"offset must be an integer >= 0, got {_short(offset)}")
        clauses = where_clauses(self.model, filters, lookups)
        stmt = self._select(clauses, load)
        order = _order_key(order_by)
        if order:
            stmt = stmt.order_by(*sort_plan(self.model, order).clauses)
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        return await self._fetch(stmt)

    async def page(
        self,
        *filters: Filter,
        order_by: str | Sequence[str] = (),
        limit: int = 50,
        after: str | None = None,
        load: Load = (),
        **lookups: Any,
    ) -> Page[ModelT]:
        """One keyset page of at most `limit` rows after the cursor `after` (None: the first page).

        Pass `page.next_cursor` back as `after` with the same `order_by` (and filters) for the next
        page. Ordering ends with the primary key; see the module docstring for NULLs and the cursor.
        """
        _check_count(limit, "limit")
        plan = sort_plan(self.model, _order_key(order_by))
        plan.require_codecs()
        clauses = where_clauses(self.model, filters, lookups)
        if after is not None:
            clauses.append(plan.after(plan.decode(after)))
        stmt = self._select(clauses, load).order_by(*plan.clauses).limit(limit + 1)
        rows = await self._fetch(stmt)
        if len(rows) <= limit:
            return Page(rows, None)
        del rows[limit:]
        return Page(rows, plan.encode(rows[-1]))

    async def count(self, *filters: Filter, **lookups: Any) -> int:
        """How many rows match."""
        clauses = where_clauses(self.model, filters, lookups)
        stmt = select(func.count()).select_from(self.model).where(*clauses)
        return int(await self._value(stmt) or 0)

    async def exists(self, *filters: Filter, **lookups: Any) -> bool:
        """Whether any row matches: `SELECT EXISTS (...)`, which stops at the first row."""
        clauses = where_clauses(self.model, filters, lookups)
        stmt = select(select(literal_column("1")).select_from(self.model).where(*clauses).exists())
        return bool(await self._value(stmt))

    def stream(
        self,
        *filters: Filter,
        order_by: str | Sequence[str] = (),
        batch_size: int = 1000,
        load: Load = (),
        **lookups: Any,
    ) -> AsyncGenerator[ModelT, None]:
        """Every matching row, in order, fetched `batch_size` rows per query: `async for row in repo.stream()`.

        Built on keyset batches rather than a server-side cursor. Each batch is one ordinary query
        (ordered by `order_by`, then the primary key, "after" the last row of the previous batch),
        fully fetched before its rows are handed out, so nothing is held open while the caller works:
        outside a `transaction()` block each batch is its own short transaction and its connection
        goes straight back to the pool, and a consumer that stops early (`break`, an exception, a
        generator that is never closed) leaks no connection, cursor or transaction. A server-side
        cursor would pin a pooled connection and an open transaction (holding back VACUUM) for as
        long as the consumer takes, and its release would depend on the generator being closed.

        The price: outside a block, batches are separate snapshots, so rows changed concurrently may
        be seen in their old or new state (each row still at most once per position in the order).
        For one consistent snapshot, iterate inside `transaction(isolation_level="REPEATABLE READ")`.
        Arguments are checked when `stream()` is called, before iteration starts.
        """
        _check_count(batch_size, "batch_size")
        plan = sort_plan(self.model, _order_key(order_by))
        clauses = where_clauses(self.model, filters, lookups)
        base = self._select(clauses, load).order_by(*plan.clauses).limit(batch_size)
        return self._stream(base, plan, batch_size)

    async def _stream(
        self, base: Select[Any], plan: SortPlan, batch_size: int
    ) -> AsyncGenerator[ModelT, None]:
        stmt = base
        while True:
            batch = await self._fetch(stmt)
            if len(batch) < batch_size:
                for item in batch:
                    yield item
                return
            # Taken before the rows are handed out: the caller may change them.
            last = [getattr(batch[-1], key.key) for key in plan.keys]
            for item in batch:
                yield item
            stmt = base.where(plan.after(last))

    # The reads' only I/O: arguments are checked and statements built before, once, so the one retry
    # after a lost connection (`retry_read`, outside a block) re-runs exactly the same SQL.
    @retry_read
    async def _fetch(
        self, stmt: Executable, params: Sequence[Mapping[str, Any]] = ({},)
    ) -> builtins.list[ModelT]:
        """The instances `stmt` loads for each parameter set, in one session."""
        options = _load_options()
        rows: builtins.list[ModelT] = []
        async with self.session() as session:
            for each in params:
                rows.extend(await session.scalars(stmt, each, execution_options=options))
        return rows

    @retry_read
    async def _value(self, stmt: Executable) -> Any:
        async with self.connection() as conn:
            return await conn.scalar(stmt)

    def _select(self, clauses: Sequence[Filter], load: Load) -> Select[Any]:
        return select(self.model).where(*clauses).options(*load_options(self.model, load))


def _loading(prebuilt: Select[Any], model: type[Any], load: Load) -> Select[Any]:
    """A prebuilt get statement (every relationship raising) with the relationships `load` asks for."""
    return prebuilt if isinstance(load, tuple) and not load else prebuilt.options(*load_options(model, load))


_REFRESH: dict[str, Any] = {"populate_existing": True}
_PLAIN: dict[str, Any] = {}


def _load_options() -> dict[str, Any]:
    """Refresh identity-mapped instances only where there can be any: in a block's shared session."""
    return _REFRESH if in_transaction() else _PLAIN


# -- validation ---------------------------------------------------------------------------------------


def _check_count(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise InvalidRequestError(f"{name} must be an integer from 1 to {MAX_LIMIT}, got {_short(value)}")


def _order_key(order_by: object) -> tuple[str, ...]:
    """`order_by` as a hashable tuple of non-empty strings (the cache key of its plan)."""
    if isinstance(order_by, str) and order_by.lstrip("-"):
        return (order_by,)
    if (
        isinstance(order_by, Sequence)
        and not isinstance(order_by, str | bytes | bytearray)
        and all(isinstance(name, str) and name.lstrip("-") for name in order_by)
    ):
        return tuple(order_by)
    raise InvalidRequestError(f"order_by takes a field name or a sequence of them, got {_short(order_by)}")


def _short(value: object) -> str:
    return describe(value)
