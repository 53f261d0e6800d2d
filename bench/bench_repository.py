"""Repository vs SQLAlchemy Core (and raw asyncpg): every repository operation against the same work.

    python bench/bench_repository.py            # full run, 20 rounds (~2-5 min on 2 cores)
    python bench/bench_repository.py --quick    # short run (~1 min), for a smoke check
    DATABASE_URL=postgresql+asyncpg://... python bench/bench_repository.py   # an existing server

Without DATABASE_URL the script starts its own throwaway PostgreSQL (`ThrowawayPostgres`, fsync off)
and migrates a fresh database; with it, it migrates that database to head and writes rows into it
(AI calls, claims, reconciliation reports and their audit rows; nothing is cleaned up).

Three contenders, each on its OWN pool built with its library's defaults (nothing shared, so no
side pays another's pre-ping): SQLAlchemy Core on `create_async_engine(url)`, the repository on
`build_engine(config)` (the package's defaults), and raw asyncpg on `asyncpg.create_pool()` for the
operations that are plain SQL (not the audited writes). Calls run outside any `transaction()`
block: each is its own short transaction (asyncpg: autocommit), as a service would make it. Core
builds its statements per call (idiomatic Core). Rounds interleave the sides (the order rotates
per round), after warm-up rounds; a sample is the mean time of `inner` consecutive calls, and the
table reports medians, the repository's p90, and the ratio of the medians to Core (the target:
repository <= 1.5x Core).

Before timing, a counting pass (separate pools, same defaults) logs every request each side sends
to the server for one steady-state call (asyncpg protocol calls: a prepare, a bind/execute, a
simple query), so the table lists the round trips per call beside the times.

See bench/README.md for what each operation does on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import itertools
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from benchenv import environment, load_average
from sqlalchemy import Table, delete, event, func, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from persistence import migrations
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.models import AICall, AuditLog, Claim, ReconciliationReport
from persistence.repository import Repository

TARGET = 1.5
COUNTING_CALLS = 3
UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
AI_ROWS = 20_000
PROVIDERS = ("openai", "anthropic", "google", "mistral", "cohere")
WRITTEN = "bench-writes"  # the provider of rows written during the run: the sets the reads select stay fixed

calls: Table = AICall.__table__  # type: ignore[assignment]
claims: Table = Claim.__table__  # type: ignore[assignment]
reports: Table = ReconciliationReport.__table__  # type: ignore[assignment]
audit_log: Table = AuditLog.__table__  # type: ignore[assignment]


class AICallRepository(Repository[AICall]):
    model = AICall


class ReportRepository(Repository[ReconciliationReport]):
    model = ReconciliationReport


class ClaimRepository(Repository[Claim]):
    model = Claim


Call = Callable[[int], Awaitable[object]]


SIDES = ("core", "repo", "asyncpg")


@dataclass
class Op:
    name: str
    model: str
    inner: int
    core: Call
    repo: Call
    raw: Call | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})
    sends: dict[str, list[str]] = field(default_factory=dict)

    def side(self, name: str) -> Call | None:
        return {"core": self.core, "repo": self.repo, "asyncpg": self.raw}[name]


# -- data -------------------------------------------------------------------------------------------


def ai_row(i: int, *, customer: str | None = None, provider: str | None = None) -> dict[str, Any]:
    return {
        "provider": provider or PROVIDERS[i % len(PROVIDERS)],
        "model": f"model-{i % 7}",
        "input_tokens": 100 + i % 900,
        "output_tokens": 50 + i % 400,
        "cost_usd": Decimal(i % 1000) / Decimal(10000),
        "latency_ms": 20 + i % 3000,
        "customer_id": customer if customer is not None else f"cust-{i % 200}",
        "organization_id": f"org-{i % 20}",
        "environment": "prod",
    }


def report_row(day: int, value: int) -> dict[str, Any]:
    start = T0 + dt.timedelta(days=day)
    return {
        "report_date": start.date(),
        "source": "bench",
        "period_start": start,
        "period_end": start + dt.timedelta(days=1),
        "total_calls": value,
        "total_cost_usd": Decimal(value) / 100,
        "total_tokens": value * 10,
        "status": "PASS",
    }


def claim_row(i: int, *, claim_type: str = "fact", prefix: str = "c") -> dict[str, Any]:
    return {
        "external_id": f"{prefix}-{i}",
        "content": f"claim number {i}",
        "claim_type": claim_type,
        "source": "bench",
        "metadata_": {"topic": f"t{i % 10}"},
    }


def as_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A claim row keyed by column name, for Core (the attribute `metadata_` is the column `metadata`)."""
    return {("metadata" if key == "metadata_" else key): value for key, value in row.items()}


def jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def audit_values(row: Any, action: str, changes: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "entity_type": "claim",
        "entity_id": str(row.id),
        "action": action,
        "user_id": None,
        "changes": changes,
        "metadata": None,
    }


def diff(old: Any, new: Any) -> dict[str, Any]:
    """What an update audits: [old, new] of every column whose value changed."""
    return {
        str(name): [jsonable(o), jsonable(n)]
        for (name, o), n in zip(old._mapping.items(), new, strict=True)
        if o != n
    }


def row_changes(row: Any, *, deleted: bool = False) -> dict[str, Any]:
    """What an insert or a delete audits: every non-NULL column as [null, value] or [value, null]."""
    items = row._mapping.items()
    if deleted:
        return {col: [jsonable(v), None] for col, v in items if v is not None}
    return {col: [None, jsonable(v)] for col, v in items if v is not None}


async def seed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        rows = []
        for i in range(AI_ROWS):
            row = ai_row(i)
            row["created_at"] = T0 + dt.timedelta(seconds=i * 97)
            rows.append(row)
        await conn.execute(insert(calls), rows)
        await conn.execute(text("ANALYZE"))


# -- the operations -----------------------------------------------------------------------------------


@dataclass
class Sides:
    """The contenders, each on its own pool built with its own library's defaults (nothing shared).

    `core`: `create_async_engine(url)` (QueuePool 5 + 10 overflow, no pre-ping); `ours`:
    `persistence.engine.build_engine(config)` (the package's defaults: pool 20 + 10, a ping only for a
    connection idle 5 s or more); `pg`: `asyncpg.create_pool(...)` (10 connections; it sends its reset
    query when a connection is released).
    """

    core: AsyncEngine
    ours: AsyncEngine
    pg: asyncpg.Pool
    ai_repo: AICallRepository = field(init=False)
    report_repo: ReportRepository = field(init=False)
    claim_repo: ClaimRepository = field(init=False)

    def __post_init__(self) -> None:
        self.ai_repo = AICallRepository(self.ours)
        self.report_repo = ReportRepository(self.ours)
        self.claim_repo = ClaimRepository(self.ours)

    async def close(self) -> None:
        await self.core.dispose()
        await self.ours.dispose()
        await self.pg.close()


def pg_connect_args(config: DatabaseConfig) -> dict[str, Any]:
    return {
        "host": config.host,
        "port": config.port,
        "database": config.database,
        "user": config.user,
        "password": config.password.get_secret_value() if config.password else None,
    }


async def open_sides(config: DatabaseConfig, *, counting: list[str] | None = None) -> Sides:
    """The three contenders; with `counting`, every request they send is logged there (see RoundTrips)."""
    core = create_async_engine(config.sqlalchemy_url())
    ours = build_engine(config)
    init = None
    if counting is not None:
        for engine in (core, ours):
            event.listen(engine.sync_engine.pool, "connect", counting_listener(counting))

        async def init(conn: asyncpg.Connection) -> None:
            conn._protocol = CountingProtocol(conn._protocol, counting)  # type: ignore[attr-defined]

    pg = await asyncpg.create_pool(**pg_connect_args(config), init=init)
    return Sides(core, ours, pg)


# -- round trips ----------------------------------------------------------------------------------------

# asyncpg protocol methods that send a request and wait for the server's answer: one round trip each.
_REQUESTS = frozenset(
    {
        "prepare",
        "bind_execute",
        "bind_execute_many",
        "bind",
        "execute",
        "query",
        "copy_in",
        "copy_out",
        "close_statement",
    }
)


class CountingProtocol:
    """Stands in for an asyncpg connection's protocol; logs each request as its statement's first word."""

    def __init__(self, inner: Any, log: list[str]) -> None:
        self._inner = inner
        self._log = log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in _REQUESTS:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else kwargs.get("state")
            if name == "prepare":
                label = "Parse"  # a statement asyncpg had not prepared on this connection yet
            elif name == "bind_execute_many":
                label = f"{_verb(getattr(first, 'query', first))} x N (pipelined executemany)"
            elif isinstance(first, str):
                label = _verb(first)
            else:
                label = _verb(getattr(first, "query", name))
            self._log.append(label)
            return attr(*args, **kwargs)

        return counted


def _verb(query: object) -> str:
    words = str(query).replace(";", " ").split()
    if not words:
        return "(empty)"
    if words[0].upper() == "SELECT" and "pg_advisory_unlock_all()" in str(query):
        return "RESET (pool release)"
    return words[0].upper()


def counting_listener(log: list[str]) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        driver = dbapi_connection.driver_connection
        driver._protocol = CountingProtocol(driver._protocol, log)

    return on_connect


# -- the operations -----------------------------------------------------------------------------------


@dataclass
class Pools:
    """Rows made before timing for the operations that consume one per call (delete, delete_many)."""

    ai_ids: list[int]
    claim_ids: list[uuid.UUID]
    ai_tags: list[str]
    claim_tags: list[str]


async def make_pools(ctx: Sides, per_side: dict[str, int], batch: int) -> Pools:
    ai_repo, claim_repo = ctx.ai_repo, ctx.claim_repo
    n_delete, n_delete_many = per_side["delete"] * 3, per_side["delete_many"] * 3
    ai = await ai_repo.add_many(
        [ai_row(i, customer="pool", provider=WRITTEN) for i in range(n_delete)], returning=True
    )
    cl = await claim_repo.add_many(
        [claim_row(i, claim_type="pool", prefix="pool") for i in range(n_delete)], returning=True
    )
    ai_tags = [f"del-{n}" for n in range(n_delete_many)]
    claim_tags = [f"del-{n}" for n in range(n_delete_many)]
    await ai_repo.add_many(
        [ai_row(i, customer=tag, provider=WRITTEN) for tag in ai_tags for i in range(batch)]
    )
    await claim_repo.add_many(
        [claim_row(i, claim_type=tag, prefix=tag) for tag in claim_tags for i in range(batch)]
    )
    async with ctx.ours.begin() as conn:
        await conn.execute(text("ANALYZE"))
    return Pools([a.id for a in ai], [c.id for c in cl], ai_tags, claim_tags)


AI_INSERT = (
    "INSERT INTO ai_calls (provider, model, input_tokens, output_tokens, cost_usd, latency_ms,"
    " customer_id, organization_id, environment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *"
)
REPORT_UPSERT = (
    "INSERT INTO reconciliation_reports (report_date, source, period_start, period_end, total_calls,"
    " total_cost_usd, total_tokens, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT ON CONSTRAINT uq_reconciliation_reports_period_start_period_end_source DO UPDATE SET"
    " total_calls = EXCLUDED.total_calls, total_cost_usd = EXCLUDED.total_cost_usd,"
    " total_tokens = EXCLUDED.total_tokens, period_start = EXCLUDED.period_start,"
    " period_end = EXCLUDED.period_end, status = EXCLUDED.status RETURNING *"
)
assert tuple(ai_row(0)) == (
    "provider", "model", "input_tokens", "output_tokens", "cost_usd", "latency_ms",
    "customer_id", "organization_id", "environment",
)  # fmt: skip
assert tuple(report_row(0, 0)) == (
    "report_date", "source", "period_start", "period_end", "total_calls", "total_cost_usd",
    "total_tokens", "status",
)  # fmt: skip


async def build_ops(ctx: Sides, per_side: dict[str, int], delete_batch: int) -> list[Op]:
    async with ctx.core.connect() as conn:
        ids = list((await conn.scalars(select(calls.c.id).order_by(calls.c.id))).all())
    since = T0 + dt.timedelta(days=10)
    get_ids = ids[::97][:200]
    many_ids = ids[1000:1100]

    # A cursor in the middle of provider 'anthropic' ordered by -created_at, for page().
    first = await ctx.ai_repo.page(AICall.provider == "anthropic", order_by="-created_at", limit=1000)
    assert first.next_cursor is not None
    cursor = first.next_cursor
    last = first.items[-1]
    cursor_values = (last.created_at, last.id)

    # Rows the update/upsert operations change (fixed ids, alternating values so every audit has changes).
    claim_targets = await ctx.claim_repo.add_many(
        [claim_row(i, prefix="upd") for i in range(50)], returning=True
    )
    await ctx.claim_repo.add_many([claim_row(i, claim_type="um", prefix="um") for i in range(100)])
    update_ai = ids[:50]
    pools = await make_pools(ctx, per_side, delete_batch)

    def pick(seq: Sequence[Any], i: int) -> Any:
        return seq[i % len(seq)]

    # -- reads (AI calls, not audited) --
    async def core_get(i: int) -> object:
        async with ctx.core.connect() as conn:
            return (await conn.execute(select(calls).where(calls.c.id == pick(get_ids, i)))).one()

    async def repo_get(i: int) -> object:
        return await ctx.ai_repo.get(pick(get_ids, i))

    async def core_get_or_none(i: int) -> object:
        async with ctx.core.connect() as conn:
            return (await conn.execute(select(calls).where(calls.c.id == pick(get_ids, i)))).one_or_none()

    async def repo_get_or_none(i: int) -> object:
        return await ctx.ai_repo.get_or_none(pick(get_ids, i))

    async def core_get_many(i: int) -> object:
        async with ctx.core.connect() as conn:
            rows = (await conn.execute(select(calls).where(calls.c.id.in_(many_ids)))).all()
        by_id = {row.id: row for row in rows}
        return [by_id[k] for k in many_ids if k in by_id]

    async def repo_get_many(i: int) -> object:
        return await ctx.ai_repo.get_many(many_ids)

    async def core_list(i: int) -> object:
        stmt = (
            select(calls)
            .where(calls.c.provider == "anthropic", calls.c.created_at >= since)
            .order_by(calls.c.created_at.desc(), calls.c.id.desc())
            .limit(100)
        )
        async with ctx.core.connect() as conn:
            return (await conn.execute(stmt)).all()

    async def repo_list(i: int) -> object:
        return await ctx.ai_repo.list(
            provider="anthropic", created_at__gte=since, order_by="-created_at", limit=100
        )

    async def core_page(i: int) -> object:
        stmt = (
            select(calls)
            .where(
                calls.c.provider == "anthropic",
                tuple_(calls.c.created_at, calls.c.id) < tuple_(*cursor_values),
            )
            .order_by(calls.c.created_at.desc(), calls.c.id.desc())
            .limit(101)
        )
        async with ctx.core.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return rows[:100], (rows[99].created_at, rows[99].id) if len(rows) > 100 else None

    async def repo_page(i: int) -> object:
        return await ctx.ai_repo.page(
            AICall.provider == "anthropic", order_by="-created_at", limit=100, after=cursor
        )

    async def core_count(i: int) -> object:
        async with ctx.core.connect() as conn:
            return await conn.scalar(
                select(func.count()).select_from(calls).where(calls.c.provider == "anthropic")
            )

    async def repo_count(i: int) -> object:
        return await ctx.ai_repo.count(provider="anthropic")

    async def core_exists(i: int) -> object:
        async with ctx.core.connect() as conn:
            return await conn.scalar(
                select(select(calls.c.id).where(calls.c.customer_id == "cust-7").exists())
            )

    async def repo_exists(i: int) -> object:
        return await ctx.ai_repo.exists(customer_id="cust-7")

    async def core_stream(i: int) -> object:
        n = 0
        async with ctx.core.connect() as conn:
            result = await conn.stream(
                select(calls)
                .where(calls.c.provider == "openai")
                .order_by(calls.c.id)
                .execution_options(yield_per=1000)
            )
            async for _row in result:
                n += 1
        return n

    async def repo_stream(i: int) -> object:
        n = 0
        async for _row in ctx.ai_repo.stream(AICall.provider == "openai", batch_size=1000):
            n += 1
        return n

    # -- writes, not audited (AI calls, reconciliation reports) --
    async def core_add(i: int) -> object:
        async with ctx.core.begin() as conn:
            return (
                await conn.execute(
                    insert(calls).values(ai_row(i, customer="add", provider=WRITTEN)).returning(calls)
                )
            ).one()

    async def repo_add(i: int) -> object:
        return await ctx.ai_repo.add(**ai_row(i, customer="add", provider=WRITTEN))

    bulk = [ai_row(i, customer="bulk", provider=WRITTEN) for i in range(1000)]

    async def core_add_many(i: int) -> object:
        async with ctx.core.begin() as conn:
            return (await conn.execute(insert(calls), bulk)).rowcount

    async def repo_add_many(i: int) -> object:
        return await ctx.ai_repo.add_many(bulk)

    async def core_update(i: int) -> object:
        stmt = update(calls).where(calls.c.id == pick(update_ai, i)).values(latency_ms=i).returning(calls)
        async with ctx.core.begin() as conn:
            return (await conn.execute(stmt)).one()

    async def repo_update(i: int) -> object:
        return await ctx.ai_repo.update(pick(update_ai, i), latency_ms=i)

    async def core_update_many(i: int) -> object:
        stmt = update(calls).where(calls.c.customer_id == "cust-7").values(latency_ms=i)
        async with ctx.core.begin() as conn:
            return (await conn.execute(stmt)).rowcount

    async def repo_update_many(i: int) -> object:
        return await ctx.ai_repo.update_many(customer_id="cust-7", values={"latency_ms": i})

    ai_core_delete, ai_repo_delete, ai_raw_delete = pools.ai_ids[0::3], pools.ai_ids[1::3], pools.ai_ids[2::3]
    ai_core_tags, ai_repo_tags, ai_raw_tags = pools.ai_tags[0::3], pools.ai_tags[1::3], pools.ai_tags[2::3]

    async def core_delete(i: int) -> object:
        stmt = delete(calls).where(calls.c.id == ai_core_delete.pop()).returning(calls.c.id)
        async with ctx.core.begin() as conn:
            return (await conn.execute(stmt)).one()

    async def repo_delete(i: int) -> object:
        await ctx.ai_repo.delete(ai_repo_delete.pop())
        return None

    async def core_delete_many(i: int) -> object:
        async with ctx.core.begin() as conn:
            return (
                await conn.execute(delete(calls).where(calls.c.customer_id == ai_core_tags.pop()))
            ).rowcount

    async def repo_delete_many(i: int) -> object:
        return await ctx.ai_repo.delete_many(customer_id=ai_repo_tags.pop())

    report_conflict = "uq_reconciliation_reports_period_start_period_end_source"
    report_set = ("total_calls", "total_cost_usd", "total_tokens", "period_start", "period_end", "status")

    async def core_upsert(i: int) -> object:
        ins = pg_insert(reports).values(report_row(i % 50, i))
        stmt = ins.on_conflict_do_update(
            constraint=report_conflict, set_={k: ins.excluded[k] for k in report_set}
        ).returning(reports)
        async with ctx.core.begin() as conn:
            return (await conn.execute(stmt)).one()

    async def repo_upsert(i: int) -> object:
        return await ctx.report_repo.upsert(report_row(i % 50, i), on=report_conflict)

    async def core_upsert_many(i: int) -> object:
        # An executemany that SQLAlchemy's "insertmanyvalues" sends as ONE multi-row statement. With
        # `returning(..., sort_by_parameter_order=True)` it may send one INSERT per row instead (it
        # does for claims: 1,000 statements), and `.values(rows)` recompiles 1,000 rows per call.
        rows = [report_row(1000 + d, i) for d in range(1000)]
        ins = pg_insert(reports)
        stmt = ins.on_conflict_do_update(
            constraint=report_conflict, set_={k: ins.excluded[k] for k in report_set}
        ).returning(reports)
        async with ctx.core.begin() as conn:
            return (await conn.execute(stmt, rows)).all()

    async def repo_upsert_many(i: int) -> object:
        rows = [report_row(1000 + d, i) for d in range(1000)]
        return await ctx.report_repo.upsert_many(rows, on=report_conflict)

    # -- writes, audited (claims): Core = the write + an INSERT INTO audit_log, one transaction --
    async def core_add_audited(i: int) -> object:
        async with ctx.core.begin() as conn:
            row = (
                await conn.execute(
                    insert(claims).values(as_columns(claim_row(i, prefix="a-core"))).returning(claims)
                )
            ).one()
            await conn.execute(insert(audit_log).values(audit_values(row, "insert", row_changes(row))))
            return row

    async def repo_add_audited(i: int) -> object:
        return await ctx.claim_repo.add(**claim_row(i, prefix="a-repo"))

    async def core_add_many_audited(i: int) -> object:
        rows = [as_columns(claim_row(k, prefix=f"am-core-{i}")) for k in range(1000)]
        async with ctx.core.begin() as conn:
            new = (await conn.execute(insert(claims).returning(claims), rows)).all()
            await conn.execute(
                insert(audit_log), [audit_values(row, "insert", row_changes(row)) for row in new]
            )
            return len(new)

    async def repo_add_many_audited(i: int) -> object:
        return await ctx.claim_repo.add_many([claim_row(k, prefix=f"am-repo-{i}") for k in range(1000)])

    async def core_update_audited(i: int) -> object:
        target = pick(claim_targets, i).id
        content = f"content {i}"
        old = select(claims.c.id, claims.c.content).where(claims.c.id == target).with_for_update().subquery()
        stmt = (
            update(claims)
            .where(claims.c.id == old.c.id)
            .values(content=content)
            .returning(claims, old.c.content.label("old_content"))
        )
        async with ctx.core.begin() as conn:
            row = (await conn.execute(stmt)).one()
            if row.old_content != row.content:
                changes = {"content": [row.old_content, row.content]}
                await conn.execute(insert(audit_log).values(audit_values(row, "update", changes)))
            return row

    async def repo_update_audited(i: int) -> object:
        return await ctx.claim_repo.update(pick(claim_targets, i).id, content=f"content {i}")

    async def core_update_many_audited(i: int) -> object:
        content = f"bulk content {i}"
        old = (
            select(claims.c.id, claims.c.content)
            .where(claims.c.claim_type == "um")
            .with_for_update()
            .subquery()
        )
        stmt = (
            update(claims)
            .where(claims.c.id == old.c.id)
            .values(content=content)
            .returning(claims.c.id, claims.c.content, old.c.content.label("old_content"))
        )
        async with ctx.core.begin() as conn:
            rows = (await conn.execute(stmt)).all()
            audits = [
                audit_values(row, "update", {"content": [row.old_content, row.content]})
                for row in rows
                if row.old_content != row.content
            ]
            if audits:
                await conn.execute(insert(audit_log), audits)
            return len(rows)

    async def repo_update_many_audited(i: int) -> object:
        return await ctx.claim_repo.update_many(claim_type="um", values={"content": f"bulk content {i}"})

    cl_core_delete, cl_repo_delete = pools.claim_ids[0::3], pools.claim_ids[1::3]
    cl_core_tags, cl_repo_tags = pools.claim_tags[0::3], pools.claim_tags[1::3]

    async def core_delete_audited(i: int) -> object:
        async with ctx.core.begin() as conn:
            row = (
                await conn.execute(
                    delete(claims).where(claims.c.id == cl_core_delete.pop()).returning(claims)
                )
            ).one()
            await conn.execute(
                insert(audit_log).values(audit_values(row, "delete", row_changes(row, deleted=True)))
            )
            return row

    async def repo_delete_audited(i: int) -> object:
        await ctx.claim_repo.delete(cl_repo_delete.pop())
        return None

    async def core_delete_many_audited(i: int) -> object:
        async with ctx.core.begin() as conn:
            rows = (
                await conn.execute(
                    delete(claims).where(claims.c.claim_type == cl_core_tags.pop()).returning(claims)
                )
            ).all()
            await conn.execute(
                insert(audit_log),
                [audit_values(row, "delete", row_changes(row, deleted=True)) for row in rows],
            )
            return len(rows)

    async def repo_delete_many_audited(i: int) -> object:
        return await ctx.claim_repo.delete_many(claim_type=cl_repo_tags.pop())

    claim_conflict = "uq_claims_external_id"

    async def core_upsert_audited(i: int) -> object:
        values = claim_row(i % 50, prefix="up")
        values["content"] = f"upserted {i}"
        async with ctx.core.begin() as conn:
            old = (
                await conn.execute(
                    select(claims).where(claims.c.external_id == values["external_id"]).with_for_update()
                )
            ).one_or_none()
            ins = pg_insert(claims).values(as_columns(values))
            stmt = ins.on_conflict_do_update(
                constraint=claim_conflict,
                set_={k: ins.excluded[k] for k in ("content", "claim_type", "source", "metadata")},
            ).returning(claims)
            row = (await conn.execute(stmt)).one()
            changes = row_changes(row) if old is None else diff(old, row)
            if changes:
                action = "insert" if old is None else "update"
                await conn.execute(insert(audit_log).values(audit_values(row, action, changes)))
            return row

    async def repo_upsert_audited(i: int) -> object:
        values = claim_row(i % 50, prefix="up")
        values["content"] = f"upserted {i}"
        return await ctx.claim_repo.upsert(values, on=claim_conflict)

    def upsert_rows(i: int) -> list[dict[str, Any]]:
        rows = [claim_row(k, prefix="um1000") for k in range(1000)]
        for row in rows:
            row["content"] = f"upserted {i}"
        return rows

    async def core_upsert_many_audited(i: int) -> object:
        rows = [as_columns(row) for row in upsert_rows(i)]
        keys = [row["external_id"] for row in rows]
        async with ctx.core.begin() as conn:
            old = {
                row.external_id: row
                for row in (
                    await conn.execute(
                        select(claims)
                        .where(claims.c.external_id.in_(keys))
                        .order_by(claims.c.id)
                        .with_for_update()
                    )
                ).all()
            }
            # One multi-row upsert statement (see core_upsert_many), then one audit INSERT.
            ins = pg_insert(claims)
            stmt = ins.on_conflict_do_update(
                constraint=claim_conflict,
                set_={k: ins.excluded[k] for k in ("content", "claim_type", "source", "metadata")},
            ).returning(claims)
            new = (await conn.execute(stmt, rows)).all()
            audits = []
            for row in new:
                before = old.get(row.external_id)
                if before is None:
                    audits.append(audit_values(row, "insert", row_changes(row)))
                    continue
                changes = diff(before, row)
                if changes:
                    audits.append(audit_values(row, "update", changes))
            if audits:
                await conn.execute(insert(audit_log), audits)
            return new

    async def repo_upsert_many_audited(i: int) -> object:
        return await ctx.claim_repo.upsert_many(upsert_rows(i), on=claim_conflict)

    # -- raw asyncpg: hand-written SQL, one pool acquire per call, autocommit (no BEGIN/COMMIT) --
    select_page = (
        "SELECT * FROM ai_calls WHERE provider = $1 AND (created_at, id) < ($2, $3) "
        "ORDER BY created_at DESC, id DESC LIMIT 101"
    )

    async def raw_get(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM ai_calls WHERE id = $1", pick(get_ids, i))
        assert row is not None
        return row

    async def raw_get_or_none(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.fetchrow("SELECT * FROM ai_calls WHERE id = $1", pick(get_ids, i))

    async def raw_get_many(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM ai_calls WHERE id = ANY($1::bigint[])", many_ids)
        by_id = {row["id"]: row for row in rows}
        return [by_id[k] for k in many_ids if k in by_id]

    async def raw_list(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.fetch(
                "SELECT * FROM ai_calls WHERE provider = $1 AND created_at >= $2 "
                "ORDER BY created_at DESC, id DESC LIMIT 100",
                "anthropic",
                since,
            )

    async def raw_page(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            rows = await conn.fetch(select_page, "anthropic", *cursor_values)
        return rows[:100], (rows[99]["created_at"], rows[99]["id"]) if len(rows) > 100 else None

    async def raw_count(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM ai_calls WHERE provider = $1", "anthropic")

    async def raw_exists(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM ai_calls WHERE customer_id = $1)", "cust-7"
            )

    async def raw_stream(i: int) -> object:
        n = 0
        async with ctx.pg.acquire() as conn, conn.transaction():
            query = "SELECT * FROM ai_calls WHERE provider = $1 ORDER BY id"
            async for _row in conn.cursor(query, "openai", prefetch=1000):
                n += 1
        return n

    async def raw_add(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.fetchrow(AI_INSERT, *ai_row(i, customer="add", provider=WRITTEN).values())

    bulk_records = [tuple(row.values()) for row in bulk]

    async def raw_add_many(i: int) -> object:
        insert_many = AI_INSERT.removesuffix(" RETURNING *")
        async with ctx.pg.acquire() as conn, conn.transaction():
            await conn.executemany(insert_many, bulk_records)
        return len(bulk_records)

    async def raw_update(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.fetchrow(
                "UPDATE ai_calls SET latency_ms = $1 WHERE id = $2 RETURNING *", i, pick(update_ai, i)
            )

    async def raw_update_many(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.execute(
                "UPDATE ai_calls SET latency_ms = $1 WHERE customer_id = $2", i, "cust-7"
            )

    async def raw_delete(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.fetchval("DELETE FROM ai_calls WHERE id = $1 RETURNING id", ai_raw_delete.pop())

    async def raw_delete_many(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.execute("DELETE FROM ai_calls WHERE customer_id = $1", ai_raw_tags.pop())

    async def raw_upsert(i: int) -> object:
        async with ctx.pg.acquire() as conn:
            return await conn.fetchrow(REPORT_UPSERT, *report_row(i % 50, i).values())

    ai, rr, cl = "ai_calls", "reconciliation_reports", "claims (audited)"
    audit_note = "Core: write + INSERT audit_log"
    return [
        Op("get", ai, 20, core_get, repo_get, raw_get),
        Op("get_or_none", ai, 20, core_get_or_none, repo_get_or_none, raw_get_or_none),
        Op("get_many (100 ids)", ai, 20, core_get_many, repo_get_many, raw_get_many),
        Op("list (2 filters, order, limit 100)", ai, 10, core_list, repo_list, raw_list),
        Op("page (keyset, 100 rows)", ai, 10, core_page, repo_page, raw_page),
        Op("count", ai, 20, core_count, repo_count, raw_count),
        Op("exists", ai, 20, core_exists, repo_exists, raw_exists),
        Op(
            "stream (4000 rows)",
            ai,
            1,
            core_stream,
            repo_stream,
            raw_stream,
            "Core and asyncpg: server-side cursor, 1000 rows per fetch",
        ),
        Op("add", ai, 20, core_add, repo_add, raw_add),
        Op(
            "add_many (1000 rows)",
            ai,
            1,
            core_add_many,
            repo_add_many,
            raw_add_many,
            "Core and asyncpg: executemany",
        ),
        Op("update", ai, 20, core_update, repo_update, raw_update),
        Op("update_many (100 rows)", ai, 10, core_update_many, repo_update_many, raw_update_many),
        Op("delete", ai, per_side["delete_inner"], core_delete, repo_delete, raw_delete),
        Op(
            "delete_many (20 rows)",
            ai,
            per_side["delete_many_inner"],
            core_delete_many,
            repo_delete_many,
            raw_delete_many,
        ),
        Op("upsert", rr, 20, core_upsert, repo_upsert, raw_upsert),
        Op(
            "upsert_many (1000 rows)",
            rr,
            1,
            core_upsert_many,
            repo_upsert_many,
            None,
            "Core: executemany sent as one multi-row statement",
        ),
        Op("add", cl, 20, core_add_audited, repo_add_audited, None, audit_note),
        Op("add_many (1000 rows)", cl, 1, core_add_many_audited, repo_add_many_audited, None, audit_note),
        Op("update", cl, 20, core_update_audited, repo_update_audited, None, audit_note),
        Op(
            "update_many (100 rows)",
            cl,
            5,
            core_update_many_audited,
            repo_update_many_audited,
            None,
            audit_note,
        ),
        Op(
            "delete",
            cl,
            per_side["delete_inner"],
            core_delete_audited,
            repo_delete_audited,
            None,
            audit_note,
        ),
        Op(
            "delete_many (20 rows)",
            cl,
            per_side["delete_many_inner"],
            core_delete_many_audited,
            repo_delete_many_audited,
            None,
            audit_note,
        ),
        Op(
            "upsert",
            cl,
            20,
            core_upsert_audited,
            repo_upsert_audited,
            None,
            "Core: SELECT FOR UPDATE + upsert + audit INSERT",
        ),
        Op(
            "upsert_many (1000 rows)",
            cl,
            1,
            core_upsert_many_audited,
            repo_upsert_many_audited,
            None,
            "Core: SELECT FOR UPDATE + one multi-row upsert + audit INSERT",
        ),
    ]


# -- running ------------------------------------------------------------------------------------------


async def sample(fn: Call, inner: int, counter: list[int]) -> tuple[float, float]:
    """(wall, client CPU) seconds per call, the mean over `inner` consecutive calls."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(inner):
        counter[0] += 1
        await fn(counter[0])
    return (time.perf_counter() - start) / inner, (time.process_time() - cpu) / inner


async def run(ops: list[Op], rounds: int, warmup: int) -> None:
    counter = [0]
    orders = list(itertools.permutations(SIDES))
    for number in range(warmup + rounds):
        for op in ops:
            gc.collect()
            for side in orders[number % len(orders)]:
                fn = op.side(side)
                if fn is None:
                    continue
                elapsed, cpu = await sample(fn, op.inner, counter)
                if number >= warmup:
                    op.samples[side].append(elapsed)
                    op.cpu[side].append(cpu)
        print(f"round {number + 1}/{warmup + rounds}", file=sys.stderr, flush=True)


async def count_round_trips(ops: list[Op], ctx: Sides, config: DatabaseConfig) -> None:
    """Fill `op.sends`: the requests one steady-state call of each side sends (the 3rd of 3 calls,
    so statements are already prepared), on separate counting pools with the same defaults."""
    log: list[str] = []
    counting = await open_sides(config, counting=log)
    saved = (ctx.core, ctx.ours, ctx.pg, ctx.ai_repo, ctx.report_repo, ctx.claim_repo)
    ctx.core, ctx.ours, ctx.pg = counting.core, counting.ours, counting.pg
    ctx.ai_repo, ctx.report_repo, ctx.claim_repo = counting.ai_repo, counting.report_repo, counting.claim_repo
    number = 10_000_000  # call numbers the timed run never reaches (they make unique keys)
    try:
        for op in ops:
            for side in SIDES:
                fn = op.side(side)
                if fn is None:
                    continue
                for _ in range(COUNTING_CALLS):
                    number += 1
                    log.clear()
                    await fn(number)
                op.sends[side] = list(log)
    finally:
        ctx.core, ctx.ours, ctx.pg, ctx.ai_repo, ctx.report_repo, ctx.claim_repo = saved
        await counting.close()


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


def fmt(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def trips(op: Op, side: str) -> str:
    sent = op.sends.get(side)
    return "—" if sent is None else str(len(sent))


def table(ops: list[Op]) -> tuple[str, float, str]:
    lines = [
        "| operation | model | Core median µs | repo median µs | repo p90 µs | repo/Core | paired"
        " | repo CPU - Core CPU µs | asyncpg median µs | asyncpg/Core | round trips Core / repo / asyncpg"
        " | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|",
    ]
    worst, worst_name = 0.0, ""
    for op in ops:
        core, repo, raw = op.samples["core"], op.samples["repo"], op.samples["asyncpg"]
        ratio = statistics.median(repo) / statistics.median(core)
        # The same round's samples ran back to back: their ratio cancels load that drifts between rounds.
        paired = statistics.median(r / c for r, c in zip(repo, core, strict=True))
        if ratio > worst:
            worst, worst_name = ratio, f"{op.name} on {op.model}"
        flag = " ⚠" if ratio > TARGET else ""
        extra_cpu = (statistics.median(op.cpu["repo"]) - statistics.median(op.cpu["core"])) * 1e6
        raw_cells = (
            f"{fmt(statistics.median(raw))} | {statistics.median(raw) / statistics.median(core):.2f}x"
            if raw
            else "— | —"
        )
        lines.append(
            f"| {op.name} | {op.model} | {fmt(statistics.median(core))} | {fmt(statistics.median(repo))} | "
            f"{fmt(p90(repo))} | {ratio:.2f}x{flag} | {paired:.2f}x | {extra_cpu:+,.0f} | {raw_cells} | "
            f"{trips(op, 'core')} / {trips(op, 'repo')} / {trips(op, 'asyncpg')} | {op.note} |"
        )
    return "\n".join(lines), worst, worst_name


def sends_table(ops: list[Op]) -> str:
    """What one steady-state call of each side sends, request by request."""
    lines = [
        "| operation | model | Core sends | repository sends | asyncpg sends |",
        "|---|---|---|---|---|",
    ]
    for op in ops:
        cells = [" · ".join(op.sends[side]) if side in op.sends else "—" for side in SIDES]
        lines.append(f"| {op.name} | {op.model} | {' | '.join(cells)} |")
    return "\n".join(lines)


async def bench(config: DatabaseConfig, args: argparse.Namespace) -> str:
    rounds, warmup = (5, 2) if args.quick else (args.rounds, 3)
    setup = build_engine(config)
    try:
        await migrations.upgrade(setup)
        await seed(setup)
        env = await environment(setup)
    finally:
        await setup.dispose()
    ctx = await open_sides(config)
    try:
        delete_inner, delete_many_inner = 20, 5
        per_side = {
            # every timed call of a side, plus the counting pass's calls
            "delete": (rounds + warmup) * delete_inner + COUNTING_CALLS,
            "delete_many": (rounds + warmup) * delete_many_inner + COUNTING_CALLS,
            "delete_inner": delete_inner,
            "delete_many_inner": delete_many_inner,
        }
        ops = await build_ops(ctx, per_side, delete_batch=20)
        await count_round_trips(ops, ctx, config)
        load_before = load_average()
        started = time.perf_counter()
        await run(ops, rounds, warmup)
        elapsed = time.perf_counter() - started
        load_after = load_average()
        body, worst, worst_name = table(ops)
    finally:
        await ctx.close()
    verdict = (
        f"every operation within {TARGET}x of Core"
        if worst <= TARGET
        else f"target {TARGET}x MISSED: {worst_name} at {worst:.2f}x"
    )
    return (
        f"- date: {dt.datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n{env}\n"
        f"- contenders, each on its own pool with its library's defaults: Core = `create_async_engine(url)` "
        f"(QueuePool 5 + 10, no pre-ping); repo = `build_engine(DatabaseConfig)` (pool 20 + 10, ping only "
        f"after {config.pool_ping_idle_s:g} s idle); asyncpg = `asyncpg.create_pool()` (10 connections, "
        f"reset query at release, statements in autocommit)\n"
        f"- run: {rounds} rounds after {warmup} warm-up rounds, the three sides interleaved in rotating "
        f"order ({elapsed:.0f} s){' (--quick)' if args.quick else ''}; 1-minute load average "
        f"{load_before} before, {load_after} after (above ~1 means other processes shared the CPUs)\n"
        f"- worst ratio: {worst:.2f}x ({worst_name}); {verdict}\n\n{body}\n\n"
        f"Round trips: requests one steady-state call sends and waits for (asyncpg protocol calls: "
        f"Parse = preparing a statement not yet cached on that connection; executemany is pipelined, "
        f"one wait for all rows).\n\n{sends_table(ops)}\n"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (5 rounds, ~1 min): a smoke check")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20, ~2-5 min)")
    parser.add_argument("--output", type=Path, help="also write the result (markdown) to this file")
    args = parser.parse_args()
    if os.environ.get("DATABASE_URL"):
        report = await bench(DatabaseConfig(), args)
    else:
        from persistence.testing.database import ThrowawayPostgres

        pg = ThrowawayPostgres()
        pg.start()
        try:
            await pg.create_migrated_template()
            report = await bench(pg.config(pg.clone("persistence_bench")), args)
        finally:
            pg.stop()
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    asyncio.run(main())
