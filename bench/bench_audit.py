"""Audited writes of a row with a huge JSON value vs the plain write of the same row, in one run.

    python bench/bench_audit.py                       # 100k and 400k keys, 5 rounds (~6 min on 2 cores)
    python bench/bench_audit.py --sizes 400000 --rounds 3
    python bench/bench_audit.py --output result.md    # also write the markdown result to a file
    DATABASE_URL=postgresql+asyncpg://... python bench/bench_audit.py   # an existing server

Issue 13 section 5: the audit diff used to take a JSON document apart with `jsonb_object_agg`, whose
cost grew with the square of the document's size (a 400k-key insert took 14 s). The diff is now
built column by column, each column one whole value; this script shows the audited write costs a
small constant factor of the plain write, whatever the size (target: at most 3x at 400k keys).

Without DATABASE_URL the script starts its own throwaway PostgreSQL (`ThrowawayPostgres`, fsync off)
and migrates a fresh database; with it, it migrates that database to head and writes into it
(rows are deleted again after each insert, their audit rows too; use a scratch database).

Three contenders write the same row (the same table, the same JSON value) on the same server, each on
its own pooled engine (`build_engine`), each call its own short transaction:

- **Core**: `insert(table).values(row)` / `update(table).where(id).values(json=...)`, nothing
  returned, no audit. The baseline of the target.
- **Core RETURNING**: the same with `RETURNING` every column (decoded into Python), no audit: the
  work the repository does besides the audit, since it returns the row as stored.
- **repository (audited)**: `Repository.add(**row)` / `.update(id, json=...)`: one statement that
  writes the row and its `audit_log` row (the whole JSON value in `changes`) and returns the row.

Two rows: `verification_results.evidence` (no index on the JSON column: the strictest ratio) and
`claims.metadata` (a GIN `jsonb_path_ops` index, which both sides pay). Each update swaps between two
documents that differ in one key, so every update really changes the value (and is audited). Rounds
interleave the contenders (the order rotates per round) after a warm-up round; the table reports the
median and the ratios of the medians to Core.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchenv import environment, load_average
from sqlalchemy import Table, delete, insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.models import Claim, VerificationResult
from persistence.repository import Repository

TARGET = 3.0
UTC = dt.UTC
SIDES = ("core", "core_returning", "repo")
LABELS = {"core": "Core", "core_returning": "Core RETURNING", "repo": "repository (audited)"}


class Verifications(Repository[VerificationResult]):
    model = VerificationResult


class Claims(Repository[Claim]):
    model = Claim


@dataclass(frozen=True)
class Subject:
    """One audited table and its JSON column."""

    name: str
    table: Table
    repo: type[Repository[Any]]
    column: str  # the JSON column's name (and key)
    attribute: str  # the model attribute of that column

    def row(self, document: dict[str, Any], n: int) -> dict[str, Any]:
        """The row's values by model attribute (the repository's keywords)."""
        if self.table.name == "claims":
            return {"external_id": f"bench-{uuid.uuid4()}", "content": f"claim {n}", self.attribute: document}
        return {
            "claim_id": f"bench-{n}",
            "framework": "bench",
            "result": {"valid": True},
            "confidence": 0.5,
            self.attribute: document,
        }

    def columns(self, row: dict[str, Any]) -> dict[str, Any]:
        """The same row keyed by column name (for Core)."""
        return {(self.column if key == self.attribute else key): value for key, value in row.items()}


SUBJECTS = {
    "evidence": Subject(
        "verification_results.evidence (no index)",
        VerificationResult.__table__,  # type: ignore[arg-type]
        Verifications,
        "evidence",
        "evidence",
    ),
    "claims": Subject(
        "claims.metadata (GIN index)",
        Claim.__table__,  # type: ignore[arg-type]
        Claims,
        "metadata",
        "metadata_",
    ),
}


@dataclass
class Case:
    subject: Subject
    keys: int
    operation: str  # "insert" or "update"
    samples: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})


def documents(keys: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two documents of `keys` keys that differ in one value (what an update changes)."""
    first = {f"k{i}": i for i in range(keys)}
    return first, {**first, "k0": -1}


# -- the contenders -----------------------------------------------------------------------------------

Write = Callable[[int], Awaitable[None]]


class Bench:
    def __init__(self, engines: dict[str, AsyncEngine], cleanup: AsyncEngine) -> None:
        self.engines = engines
        self.cleanup = cleanup
        self.counter = 0

    async def insert(self, side: str, subject: Subject, document: dict[str, Any]) -> float:
        """Time one insert, then delete the row and its audit rows (untimed)."""
        self.counter += 1
        row = subject.row(document, self.counter)
        table, engine = subject.table, self.engines[side]
        start = time.perf_counter()
        if side == "repo":
            stored = await subject.repo(engine).add(**row)
            elapsed = time.perf_counter() - start
            key = stored.id
        else:
            stmt = insert(table).values(subject.columns(row))
            async with engine.begin() as conn:
                if side == "core_returning":
                    key = (await conn.execute(stmt.returning(*table.c))).one().id
                else:
                    key = (await conn.execute(stmt.returning(table.c.id))).scalar_one()
            elapsed = time.perf_counter() - start
        await self.forget(table, key)
        return elapsed

    async def update(self, side: str, subject: Subject, key: uuid.UUID, document: dict[str, Any]) -> float:
        table, engine = subject.table, self.engines[side]
        start = time.perf_counter()
        if side == "repo":
            await subject.repo(engine).update(key, **{subject.attribute: document})
        else:
            stmt = update(table).where(table.c.id == key).values({subject.column: document})
            async with engine.begin() as conn:
                if side == "core_returning":
                    (await conn.execute(stmt.returning(*table.c))).one()
                else:
                    await conn.execute(stmt)
        return time.perf_counter() - start

    async def forget(self, table: Table, key: uuid.UUID) -> None:
        async with self.cleanup.begin() as conn:
            await conn.execute(delete(table).where(table.c.id == key))
            await conn.execute(text("DELETE FROM audit_log WHERE entity_id = :id"), {"id": str(key)})

    async def target_rows(self, subject: Subject, document: dict[str, Any]) -> dict[str, uuid.UUID]:
        """One row per contender for its updates (written by Core, not audited)."""
        keys = {}
        for side in SIDES:
            self.counter += 1
            row = subject.columns(subject.row(document, self.counter))
            async with self.cleanup.begin() as conn:
                stmt = insert(subject.table).values(row).returning(subject.table.c.id)
                keys[side] = (await conn.execute(stmt)).scalar_one()
        return keys


async def run(bench: Bench, cases: list[Case], rounds: int, warmup: int) -> None:
    docs = {case.keys: documents(case.keys) for case in cases}
    targets: dict[tuple[str, int], dict[str, uuid.UUID]] = {}
    for case in cases:
        if case.operation == "update":
            targets[(case.subject.name, case.keys)] = await bench.target_rows(
                case.subject, docs[case.keys][0]
            )
    for number in range(warmup + rounds):
        order = SIDES[number % len(SIDES) :] + SIDES[: number % len(SIDES)]
        for case in cases:
            first, second = docs[case.keys]
            for side in order:
                gc.collect()
                gc.disable()
                try:
                    if case.operation == "insert":
                        elapsed = await bench.insert(side, case.subject, first)
                    else:
                        key = targets[(case.subject.name, case.keys)][side]
                        # every update changes the value: the documents alternate per round
                        elapsed = await bench.update(
                            side, case.subject, key, second if number % 2 == 0 else first
                        )
                finally:
                    gc.enable()
                if number >= warmup:
                    case.samples[side].append(elapsed)
        print(f"round {number + 1}/{warmup + rounds}", file=sys.stderr, flush=True)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def table(cases: list[Case]) -> tuple[str, float, str]:
    lines = [
        "| row | JSON keys | operation | Core ms | Core RETURNING ms | repository (audited) ms "
        "| audited / Core | audited / Core RETURNING |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    worst, worst_name = 0.0, ""
    for case in cases:
        core, returning, repo = (statistics.median(case.samples[side]) for side in SIDES)
        ratio = repo / core
        name = f"{case.operation} of {case.keys:,} keys into {case.subject.name}"
        if ratio > worst:
            worst, worst_name = ratio, name
        flag = " ⚠" if ratio > TARGET else ""
        lines.append(
            f"| {case.subject.name} | {case.keys:,} | {case.operation} | {fmt(core)} | {fmt(returning)} | "
            f"{fmt(repo)} | {ratio:.2f}x{flag} | {repo / returning:.2f}x |"
        )
    return "\n".join(lines), worst, worst_name


async def bench(config: DatabaseConfig, args: argparse.Namespace) -> str:
    engines = {side: build_engine(config) for side in SIDES}
    cleanup = build_engine(config)
    try:
        await migrations.upgrade(cleanup)
        cases = [
            Case(SUBJECTS[name], keys, operation)
            for name in args.tables.split(",")
            for keys in sorted(int(size) for size in args.sizes.split(","))
            for operation in ("insert", "update")
        ]
        load_before = load_average()
        started = time.perf_counter()
        await run(Bench(engines, cleanup), cases, args.rounds, args.warmup)
        elapsed = time.perf_counter() - started
        load_after = load_average()
        body, worst, worst_name = table(cases)
        env = await environment(cleanup)
    finally:
        for engine in [*engines.values(), cleanup]:
            await engine.dispose()
    verdict = f"within {TARGET:g}x of Core" if worst <= TARGET else f"target {TARGET:g}x MISSED"
    return (
        f"- date: {dt.datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n{env}\n"
        f"- run: {args.rounds} rounds after {args.warmup} warm-up round(s), contenders interleaved "
        f"({elapsed:.0f} s); 1-minute load average {load_before} before, {load_after} after "
        f"(above ~1 means other processes shared the CPUs)\n"
        f"- worst ratio audited / Core: {worst:.2f}x ({worst_name}); {verdict}\n\n{body}\n"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,400000", help="JSON keys per document, comma-separated")
    parser.add_argument("--tables", default="evidence,claims", help="evidence and/or claims, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up rounds, not recorded (default 1)")
    parser.add_argument("--output", type=Path, help="also write the result (markdown) to this file")
    args = parser.parse_args()
    unknown = set(args.tables.split(",")) - set(SUBJECTS)
    if unknown:
        parser.error(f"unknown tables: {', '.join(sorted(unknown))} (known: {', '.join(SUBJECTS)})")
    if os.environ.get("DATABASE_URL"):
        report = await bench(DatabaseConfig(), args)
    else:
        from persistence.testing.database import ThrowawayPostgres

        pg = ThrowawayPostgres()
        pg.start()
        try:
            await pg.create_migrated_template()
            report = await bench(pg.config(pg.clone("persistence_bench_audit")), args)
        finally:
            pg.stop()
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    asyncio.run(main())
