"""Repository vs SQLAlchemy Core: every repository operation against the same work written in Core.

    python bench/bench_repository.py            # full run (~2 min on 2 cores)
    python bench/bench_repository.py --quick    # short run (~30 s), for a smoke check
    DATABASE_URL=postgresql+asyncpg://... python bench/bench_repository.py   # an existing server

Without DATABASE_URL the script starts its own throwaway PostgreSQL (`ThrowawayPostgres`, fsync off)
and migrates a fresh database; with it, it migrates that database to head and writes rows into it
(AI calls, claims, reconciliation reports and their audit rows; nothing is cleaned up).

Both sides run on one pooled engine, outside any `transaction()` block: each call is its own short
transaction, as a service would make it. Core builds its statements per call (idiomatic Core; the
compiled cache serves both). Rounds interleave Core and repository (the order alternates per round),
after warm-up rounds; a sample is the mean time of `inner` consecutive calls, and the table reports
the median and p90 of the samples and the ratio of the medians (repository / Core).

See bench/README.md for what each operation does on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import platform
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
import sqlalchemy
from sqlalchemy import Table, delete, func, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.models import AICall, AuditLog, Claim, ReconciliationReport
from persistence.repository import Repository

TARGET = 1.5
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


@dataclass
class Op:
    name: str
    model: str
    inner: int
    core: Call
    repo: Call
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=lambda: {"core": [], "repo": []})


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
class Pools:
    """Rows made before timing for the operations that consume one per call (delete, delete_many)."""

    ai_ids: list[int]
    claim_ids: list[uuid.UUID]
    ai_tags: list[str]
    claim_tags: list[str]


async def make_pools(engine: AsyncEngine, per_side: dict[str, int], batch: int) -> Pools:
    ai_repo, claim_repo = AICallRepository(engine), ClaimRepository(engine)
    n_delete, n_delete_many = per_side["delete"] * 2, per_side["delete_many"] * 2
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
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))
    return Pools([a.id for a in ai], [c.id for c in cl], ai_tags, claim_tags)


async def build_ops(engine: AsyncEngine, per_side: dict[str, int], delete_batch: int) -> list[Op]:
    ai_repo, report_repo, claim_repo = (
        AICallRepository(engine),
        ReportRepository(engine),
        ClaimRepository(engine),
    )
    async with engine.connect() as conn:
        ids = list((await conn.scalars(select(calls.c.id).order_by(calls.c.id))).all())
    since = T0 + dt.timedelta(days=10)
    get_ids = ids[::97][:200]
    many_ids = ids[1000:1100]

    # A cursor in the middle of provider 'anthropic' ordered by -created_at, for page().
    first = await ai_repo.page(AICall.provider == "anthropic", order_by="-created_at", limit=1000)
    assert first.next_cursor is not None
    cursor = first.next_cursor
    last = first.items[-1]
    cursor_values = (last.created_at, last.id)

    # Rows the update/upsert operations change (fixed ids, alternating values so every audit has changes).
    claim_targets = await claim_repo.add_many([claim_row(i, prefix="upd") for i in range(50)], returning=True)
    await claim_repo.add_many([claim_row(i, claim_type="um", prefix="um") for i in range(100)])
    update_ai = ids[:50]
    pools = await make_pools(engine, per_side, delete_batch)

    def pick(seq: Sequence[Any], i: int) -> Any:
        return seq[i % len(seq)]

    # -- reads (AI calls, not audited) --
    async def core_get(i: int) -> object:
        async with engine.connect() as conn:
            return (await conn.execute(select(calls).where(calls.c.id == pick(get_ids, i)))).one()

    async def repo_get(i: int) -> object:
        return await ai_repo.get(pick(get_ids, i))

    async def core_get_or_none(i: int) -> object:
        async with engine.connect() as conn:
            return (await conn.execute(select(calls).where(calls.c.id == pick(get_ids, i)))).one_or_none()

    async def repo_get_or_none(i: int) -> object:
        return await ai_repo.get_or_none(pick(get_ids, i))

    async def core_get_many(i: int) -> object:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(calls).where(calls.c.id.in_(many_ids)))).all()
        by_id = {row.id: row for row in rows}
        return [by_id[k] for k in many_ids if k in by_id]

    async def repo_get_many(i: int) -> object:
        return await ai_repo.get_many(many_ids)

    async def core_list(i: int) -> object:
        stmt = (
            select(calls)
            .where(calls.c.provider == "anthropic", calls.c.created_at >= since)
            .order_by(calls.c.created_at.desc(), calls.c.id.desc())
            .limit(100)
        )
        async with engine.connect() as conn:
            return (await conn.execute(stmt)).all()

    async def repo_list(i: int) -> object:
        return await ai_repo.list(
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
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return rows[:100], (rows[99].created_at, rows[99].id) if len(rows) > 100 else None

    async def repo_page(i: int) -> object:
        return await ai_repo.page(
            AICall.provider == "anthropic", order_by="-created_at", limit=100, after=cursor
        )

    async def core_count(i: int) -> object:
        async with engine.connect() as conn:
            return await conn.scalar(
                select(func.count()).select_from(calls).where(calls.c.provider == "anthropic")
            )

    async def repo_count(i: int) -> object:
        return await ai_repo.count(provider="anthropic")

    async def core_exists(i: int) -> object:
        async with engine.connect() as conn:
            return await conn.scalar(
                select(select(calls.c.id).where(calls.c.customer_id == "cust-7").exists())
            )

    async def repo_exists(i: int) -> object:
        return await ai_repo.exists(customer_id="cust-7")

    async def core_stream(i: int) -> object:
        n = 0
        async with engine.connect() as conn:
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
        async for _row in ai_repo.stream(AICall.provider == "openai", batch_size=1000):
            n += 1
        return n

    # -- writes, not audited (AI calls, reconciliation reports) --
    async def core_add(i: int) -> object:
        async with engine.begin() as conn:
            return (
                await conn.execute(
                    insert(calls).values(ai_row(i, customer="add", provider=WRITTEN)).returning(calls)
                )
            ).one()

    async def repo_add(i: int) -> object:
        return await ai_repo.add(**ai_row(i, customer="add", provider=WRITTEN))

    bulk = [ai_row(i, customer="bulk", provider=WRITTEN) for i in range(1000)]

    async def core_add_many(i: int) -> object:
        async with engine.begin() as conn:
            return (await conn.execute(insert(calls), bulk)).rowcount

    async def repo_add_many(i: int) -> object:
        return await ai_repo.add_many(bulk)

    async def core_update(i: int) -> object:
        stmt = update(calls).where(calls.c.id == pick(update_ai, i)).values(latency_ms=i).returning(calls)
        async with engine.begin() as conn:
            return (await conn.execute(stmt)).one()

    async def repo_update(i: int) -> object:
        return await ai_repo.update(pick(update_ai, i), latency_ms=i)

    async def core_update_many(i: int) -> object:
        stmt = update(calls).where(calls.c.customer_id == "cust-7").values(latency_ms=i)
        async with engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount

    async def repo_update_many(i: int) -> object:
        return await ai_repo.update_many(customer_id="cust-7", values={"latency_ms": i})

    ai_core_delete, ai_repo_delete = pools.ai_ids[0::2], pools.ai_ids[1::2]
    ai_core_tags, ai_repo_tags = pools.ai_tags[0::2], pools.ai_tags[1::2]

    async def core_delete(i: int) -> object:
        stmt = delete(calls).where(calls.c.id == ai_core_delete.pop()).returning(calls.c.id)
        async with engine.begin() as conn:
            return (await conn.execute(stmt)).one()

    async def repo_delete(i: int) -> object:
        await ai_repo.delete(ai_repo_delete.pop())
        return None

    async def core_delete_many(i: int) -> object:
        async with engine.begin() as conn:
            return (
                await conn.execute(delete(calls).where(calls.c.customer_id == ai_core_tags.pop()))
            ).rowcount

    async def repo_delete_many(i: int) -> object:
        return await ai_repo.delete_many(customer_id=ai_repo_tags.pop())

    report_conflict = "uq_reconciliation_reports_period_start_period_end_source"
    report_set = ("total_calls", "total_cost_usd", "total_tokens", "period_start", "period_end", "status")

    async def core_upsert(i: int) -> object:
        ins = pg_insert(reports).values(report_row(i % 50, i))
        stmt = ins.on_conflict_do_update(
            constraint=report_conflict, set_={k: ins.excluded[k] for k in report_set}
        ).returning(reports)
        async with engine.begin() as conn:
            return (await conn.execute(stmt)).one()

    async def repo_upsert(i: int) -> object:
        return await report_repo.upsert(report_row(i % 50, i), on=report_conflict)

    async def core_upsert_many(i: int) -> object:
        rows = [report_row(1000 + d, i) for d in range(1000)]
        ins = pg_insert(reports)
        stmt = ins.on_conflict_do_update(
            constraint=report_conflict, set_={k: ins.excluded[k] for k in report_set}
        ).returning(reports, sort_by_parameter_order=True)
        async with engine.begin() as conn:
            return (await conn.execute(stmt, rows)).all()

    async def repo_upsert_many(i: int) -> object:
        rows = [report_row(1000 + d, i) for d in range(1000)]
        return await report_repo.upsert_many(rows, on=report_conflict)

    # -- writes, audited (claims): Core = the write + an INSERT INTO audit_log, one transaction --
    async def core_add_audited(i: int) -> object:
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    insert(claims).values(as_columns(claim_row(i, prefix="a-core"))).returning(claims)
                )
            ).one()
            await conn.execute(insert(audit_log).values(audit_values(row, "insert", row_changes(row))))
            return row

    async def repo_add_audited(i: int) -> object:
        return await claim_repo.add(**claim_row(i, prefix="a-repo"))

    async def core_add_many_audited(i: int) -> object:
        rows = [as_columns(claim_row(k, prefix=f"am-core-{i}")) for k in range(1000)]
        async with engine.begin() as conn:
            new = (await conn.execute(insert(claims).returning(claims), rows)).all()
            await conn.execute(
                insert(audit_log), [audit_values(row, "insert", row_changes(row)) for row in new]
            )
            return len(new)

    async def repo_add_many_audited(i: int) -> object:
        return await claim_repo.add_many([claim_row(k, prefix=f"am-repo-{i}") for k in range(1000)])

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
        async with engine.begin() as conn:
            row = (await conn.execute(stmt)).one()
            if row.old_content != row.content:
                changes = {"content": [row.old_content, row.content]}
                await conn.execute(insert(audit_log).values(audit_values(row, "update", changes)))
            return row

    async def repo_update_audited(i: int) -> object:
        return await claim_repo.update(pick(claim_targets, i).id, content=f"content {i}")

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
        async with engine.begin() as conn:
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
        return await claim_repo.update_many(claim_type="um", values={"content": f"bulk content {i}"})

    cl_core_delete, cl_repo_delete = pools.claim_ids[0::2], pools.claim_ids[1::2]
    cl_core_tags, cl_repo_tags = pools.claim_tags[0::2], pools.claim_tags[1::2]

    async def core_delete_audited(i: int) -> object:
        async with engine.begin() as conn:
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
        await claim_repo.delete(cl_repo_delete.pop())
        return None

    async def core_delete_many_audited(i: int) -> object:
        async with engine.begin() as conn:
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
        return await claim_repo.delete_many(claim_type=cl_repo_tags.pop())

    claim_conflict = "uq_claims_external_id"

    async def core_upsert_audited(i: int) -> object:
        values = claim_row(i % 50, prefix="up")
        values["content"] = f"upserted {i}"
        async with engine.begin() as conn:
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
        return await claim_repo.upsert(values, on=claim_conflict)

    def upsert_rows(i: int) -> list[dict[str, Any]]:
        rows = [claim_row(k, prefix="um1000") for k in range(1000)]
        for row in rows:
            row["content"] = f"upserted {i}"
        return rows

    async def core_upsert_many_audited(i: int) -> object:
        rows = [as_columns(row) for row in upsert_rows(i)]
        keys = [row["external_id"] for row in rows]
        async with engine.begin() as conn:
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
            ins = pg_insert(claims)
            stmt = ins.on_conflict_do_update(
                constraint=claim_conflict,
                set_={k: ins.excluded[k] for k in ("content", "claim_type", "source", "metadata")},
            ).returning(claims, sort_by_parameter_order=True)
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
        return await claim_repo.upsert_many(upsert_rows(i), on=claim_conflict)

    ai, rr, cl = "ai_calls", "reconciliation_reports", "claims (audited)"
    audit_note = "Core: write + INSERT audit_log"
    return [
        Op("get", ai, 20, core_get, repo_get),
        Op("get_or_none", ai, 20, core_get_or_none, repo_get_or_none),
        Op("get_many (100 ids)", ai, 20, core_get_many, repo_get_many),
        Op("list (2 filters, order, limit 100)", ai, 10, core_list, repo_list),
        Op("page (keyset, 100 rows)", ai, 10, core_page, repo_page),
        Op("count", ai, 20, core_count, repo_count),
        Op("exists", ai, 20, core_exists, repo_exists),
        Op("stream (4000 rows)", ai, 1, core_stream, repo_stream, "Core: server-side cursor, yield_per"),
        Op("add", ai, 20, core_add, repo_add),
        Op("add_many (1000 rows)", ai, 1, core_add_many, repo_add_many, "Core: executemany"),
        Op("update", ai, 20, core_update, repo_update),
        Op("update_many (100 rows)", ai, 10, core_update_many, repo_update_many),
        Op("delete", ai, per_side["delete_inner"], core_delete, repo_delete),
        Op("delete_many (20 rows)", ai, per_side["delete_many_inner"], core_delete_many, repo_delete_many),
        Op("upsert", rr, 20, core_upsert, repo_upsert),
        Op("upsert_many (1000 rows)", rr, 1, core_upsert_many, repo_upsert_many, "Core: executemany"),
        Op("add", cl, 20, core_add_audited, repo_add_audited, audit_note),
        Op("add_many (1000 rows)", cl, 1, core_add_many_audited, repo_add_many_audited, audit_note),
        Op("update", cl, 20, core_update_audited, repo_update_audited, audit_note),
        Op("update_many (100 rows)", cl, 5, core_update_many_audited, repo_update_many_audited, audit_note),
        Op("delete", cl, per_side["delete_inner"], core_delete_audited, repo_delete_audited, audit_note),
        Op(
            "delete_many (20 rows)",
            cl,
            per_side["delete_many_inner"],
            core_delete_many_audited,
            repo_delete_many_audited,
            audit_note,
        ),
        Op(
            "upsert",
            cl,
            20,
            core_upsert_audited,
            repo_upsert_audited,
            "Core: SELECT FOR UPDATE + upsert + audit",
        ),
        Op(
            "upsert_many (1000 rows)",
            cl,
            1,
            core_upsert_many_audited,
            repo_upsert_many_audited,
            "Core: SELECT FOR UPDATE + upsert + audit",
        ),
    ]


# -- running ------------------------------------------------------------------------------------------


async def sample(fn: Call, inner: int, counter: list[int]) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        counter[0] += 1
        await fn(counter[0])
    return (time.perf_counter() - start) / inner


async def run(ops: list[Op], rounds: int, warmup: int) -> None:
    counter = [0]
    for number in range(warmup + rounds):
        for op in ops:
            sides = [("core", op.core), ("repo", op.repo)]
            if number % 2:
                sides.reverse()
            gc.collect()
            for side, fn in sides:
                elapsed = await sample(fn, op.inner, counter)
                if number >= warmup:
                    op.samples[side].append(elapsed)
        print(f"round {number + 1}/{warmup + rounds}", file=sys.stderr, flush=True)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


def fmt(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def table(ops: list[Op]) -> tuple[str, float, str]:
    lines = [
        "| operation | model | Core median µs | Core p90 µs | repo median µs | repo p90 µs | repo/Core"
        " | paired | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    worst, worst_name = 0.0, ""
    for op in ops:
        core, repo = op.samples["core"], op.samples["repo"]
        ratio = statistics.median(repo) / statistics.median(core)
        # The same round's samples ran back to back: their ratio cancels load that drifts between rounds.
        paired = statistics.median(r / c for r, c in zip(repo, core, strict=True))
        if ratio > worst:
            worst, worst_name = ratio, f"{op.name} on {op.model}"
        flag = " ⚠" if ratio > TARGET else ""
        lines.append(
            f"| {op.name} | {op.model} | {fmt(statistics.median(core))} | {fmt(p90(core))} | "
            f"{fmt(statistics.median(repo))} | {fmt(p90(repo))} | {ratio:.2f}x{flag} | {paired:.2f}x | {op.note} |"
        )
    return "\n".join(lines), worst, worst_name


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def environment(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        server = await conn.scalar(text("SHOW server_version"))
    return (
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}\n"
        f"- versions: Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"asyncpg {asyncpg.__version__}, PostgreSQL {server}"
    )


async def bench(config: DatabaseConfig, args: argparse.Namespace) -> str:
    rounds, warmup = (6, 2) if args.quick else (args.rounds, 3)
    engine = build_engine(config)
    try:
        await migrations.upgrade(engine)
        await seed(engine)
        delete_inner, delete_many_inner = 20, 5
        per_side = {
            "delete": (rounds + warmup) * delete_inner,
            "delete_many": (rounds + warmup) * delete_many_inner,
            "delete_inner": delete_inner,
            "delete_many_inner": delete_many_inner,
        }
        ops = await build_ops(engine, per_side, delete_batch=20)
        load_before = load_average()
        started = time.perf_counter()
        await run(ops, rounds, warmup)
        elapsed = time.perf_counter() - started
        load_after = load_average()
        body, worst, worst_name = table(ops)
        env = await environment(engine)
    finally:
        await engine.dispose()
    verdict = (
        f"every operation within {TARGET}x of Core"
        if worst <= TARGET
        else f"target {TARGET}x MISSED: {worst_name} at {worst:.2f}x"
    )
    return (
        f"- date: {dt.datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n{env}\n"
        f"- run: {rounds} rounds after {warmup} warm-up rounds, Core and repository interleaved "
        f"({elapsed:.0f} s){' (--quick)' if args.quick else ''}; 1-minute load average "
        f"{load_before} before, {load_after} after (above ~1 means other processes shared the CPUs)\n"
        f"- worst ratio: {worst:.2f}x ({worst_name}); {verdict}\n\n{body}\n"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (6 rounds)")
    parser.add_argument("--rounds", type=int, default=30, help="measured rounds (default 30)")
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
