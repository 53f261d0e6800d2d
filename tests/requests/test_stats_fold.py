"""`request_stats` from appended deltas and their fold (revision 0024): finishing statements never
update a shared rollup row, the statistics are exact before and after a fold, and concurrent folds
and completions count every request once."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.errors import InvalidRequestError
from persistence.requests import Requests, Worker
from persistence.testing.database import ThrowawayPostgres
from tests.test_migrations import alembic, empty_db

__all__ = ["empty_db"]  # the fixture, shared with tests/test_migrations.py

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = date(2026, 3, 10)
LEASE = timedelta(minutes=5)

SCAN = """
SELECT company_id, (created_at AT TIME ZONE 'UTC')::date AS day, user_id, model_id, count(*) AS request_count,
       count(*) FILTER (WHERE status = 'completed') AS completed_count,
       count(*) FILTER (WHERE status = 'failed') AS failure_count,
       coalesce(sum(processing_time_ms), 0) AS processing_time_ms_sum,
       count(processing_time_ms) AS processing_time_count, coalesce(sum(total_tokens), 0) AS total_tokens
  FROM request_history GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
ROLLUP = """
SELECT company_id, day, user_id, model_id, request_count, completed_count, failure_count,
       processing_time_ms_sum, processing_time_count, total_tokens
  FROM request_stats_daily ORDER BY 1, 2, 3, 4
"""


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _finish(requests: Requests, n: int, *, user: str = "u1", start: float = 0) -> None:
    for k in range(n):
        await requests.create("acme", user, "gpt-4o", f"p{k}", now=at(start))
    claims = await requests.claim(Worker("w"), n, lease=LEASE, now=at(start + 1))
    for k, claim in enumerate(claims):
        if k % 3 == 2:
            await requests.fail(claim, "boom", now=at(start + 2))
        else:
            await requests.complete(claim, total_tokens=10 + k, now=at(start + 1 + (k + 1) / 10))


async def _rows(conn: AsyncConnection, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in (await conn.execute(text(sql))).all()]


async def test_finishing_appends_deltas_and_never_updates_the_rollup(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    requests = Requests(engine, max_attempts=1)
    await _finish(requests, 6)
    before = await requests.stats("acme", DAY, DAY + timedelta(days=1))
    assert await _rows(connection, ROLLUP) == []  # nothing folded: the view adds the deltas
    deltas = await connection.scalar(text("SELECT count(*) FROM request_stats_deltas"))
    assert deltas == 6  # one per finishing statement
    assert await requests.fold_stats() == 6
    assert await connection.scalar(text("SELECT count(*) FROM request_stats_deltas")) == 0
    assert await _rows(connection, ROLLUP) == await _rows(connection, SCAN)
    after = await requests.stats("acme", DAY, DAY + timedelta(days=1))
    assert after == before and after[0].request_count == 6 and after[0].failure_count == 2

    # More work after the fold: the rollup row stays as it was, the view counts the new request.
    folded = await _rows(connection, ROLLUP)
    await _finish(requests, 1, start=10)
    assert await _rows(connection, ROLLUP) == folded
    [row] = await requests.stats("acme", DAY, DAY + timedelta(days=1))
    assert row.request_count == 7 and row.completed_count == 5
    assert await requests.fold_stats(limit=1) == 1
    assert await _rows(connection, ROLLUP) == await _rows(connection, SCAN)


async def test_a_fold_in_small_steps_folds_everything(
    engine: AsyncEngine, connection: AsyncConnection
) -> None:
    requests = Requests(engine, max_attempts=1)
    await _finish(requests, 5, user="u1")
    await _finish(requests, 4, user="u2", start=20)
    assert await requests.fold_stats(limit=2) == 9
    assert await _rows(connection, ROLLUP) == await _rows(connection, SCAN)
    assert await requests.fold_stats() == 0
    with pytest.raises(InvalidRequestError):
        await requests.fold_stats(limit=0)


async def test_the_sweeper_folds(engine: AsyncEngine, connection: AsyncConnection) -> None:
    requests = Requests(engine, max_attempts=1)
    await _finish(requests, 3)
    await requests.sweep(now=at(100))
    assert await connection.scalar(text("SELECT count(*) FROM request_stats_deltas")) == 0
    assert await _rows(connection, ROLLUP) == await _rows(connection, SCAN)


@pytest.mark.commits
async def test_concurrent_folds_and_completions_count_every_request_once(engine: AsyncEngine) -> None:
    requests = Requests(engine, max_attempts=1, connections=6)
    n = 400
    for k in range(n):
        await requests.create("acme", f"u{k % 3}", f"m{k % 2}", f"p{k}")
    done = asyncio.Event()

    async def worker(w: int) -> None:
        while claims := await requests.claim(Worker(f"w{w}"), 5):
            for claim in claims:
                await requests.complete(claim, total_tokens=7)

    async def folder() -> int:
        folded = 0
        while not done.is_set():
            folded += await requests.fold_stats(limit=7)
            await asyncio.sleep(0)
        return folded

    async with requests:
        folders = [asyncio.create_task(folder()) for _ in range(2)]
        await asyncio.gather(*(worker(w) for w in range(4)))
        done.set()
        folded = sum(await asyncio.gather(*folders)) + await requests.fold_stats()
    assert folded == n  # each finishing statement appended one delta, each was folded once
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM request_stats_deltas")) == 0
        assert await _rows(conn, ROLLUP) == await _rows(conn, SCAN)
        assert await conn.scalar(text("SELECT sum(request_count) FROM request_stats_daily")) == n


def test_0024_downgrade_folds_what_is_left(pg: ThrowawayPostgres, empty_db: str) -> None:
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    up = alembic(empty_db, "upgrade", "0024")
    assert up.returncode == 0, up.stderr
    pg.server.psql(
        "INSERT INTO request_stats_daily (company_id, day, user_id, model_id, request_count, completed_count)"
        " VALUES ('acme', '2026-03-10', 'u1', 'm', 5, 5);"
        "INSERT INTO request_stats_deltas (company_id, day, user_id, model_id, request_count, failure_count)"
        " VALUES ('acme', '2026-03-10', 'u1', 'm', 1, 1), ('acme', '2026-03-10', 'u2', 'm', 2, 0);",
        database=database,
    )
    stats = "SELECT user_id, request_count, failure_count, completed_count FROM request_stats ORDER BY 1;"
    assert pg.server.psql(stats, database=database).splitlines() == ["u1|6|1|5", "u2|2|0|0"]
    down = alembic(empty_db, "downgrade", "-1")
    assert down.returncode == 0, down.stderr
    assert pg.server.psql(stats, database=database).splitlines() == ["u1|6|1|5", "u2|2|0|0"]
    assert (
        pg.server.psql("SELECT to_regclass('request_stats_deltas') IS NULL;", database=database).strip()
        == "t"
    )
