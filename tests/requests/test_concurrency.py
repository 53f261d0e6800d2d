"""Must-show 2 under real concurrency: 8 workers on separate connections (6 tasks here, 2 in a
second process), producers and an over-eager sweeper racing them; every request is completed
exactly once and none is lost.

`REQUESTS_STRESS_N` sets the number of requests (default 5,000)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.requests import Claim, LeaseLostError, Requests, Worker
from persistence.testing.database import ThrowawayPostgres
from tests.processes import ROOT

N = int(os.environ.get("REQUESTS_STRESS_N", "5000"))
WORKERS = 6
CHILD_WORKERS = 2
PRODUCERS = 4
BATCH = 10
ABANDON_EVERY = 97  # a worker "dies" holding every 97th claim it gets


@pytest.mark.commits
async def test_8_workers_complete_every_request_exactly_once(
    engine: AsyncEngine, pg: ThrowawayPostgres, fresh_database: DatabaseConfig, tmp_path: Path
) -> None:
    # Kept connections (a worker's setup); the child process uses one pooled checkout per call.
    requests = Requests(
        engine, lease=timedelta(minutes=5), max_attempts=1000, connections=WORKERS + PRODUCERS + 1
    )
    produced = asyncio.Event()
    drained = asyncio.Event()
    completed: list[uuid.UUID] = []
    refused: list[uuid.UUID] = []
    zombies: list[Claim] = []
    sweeps: list[int] = []

    async def producer(p: int) -> None:
        for k in range(p, N, PRODUCERS):
            await requests.create(
                f"co-{k % 3}", f"u{k % 7}", f"m{k % 2}", f"prompt {k}", estimated_tokens=k % 50
            )

    async def produce() -> None:
        await asyncio.gather(*(producer(p) for p in range(PRODUCERS)))
        produced.set()

    async def worker(w: int) -> None:
        me = Worker(f"worker-{w}")
        seen = 0
        while not drained.is_set():
            claims = await requests.claim(me, BATCH)
            if not claims:
                await asyncio.sleep(0.005)
                continue
            for claim in claims:
                seen += 1
                if seen % ABANDON_EVERY == 0:
                    zombies.append(claim)  # killed mid-request: never heartbeats, never finishes
                    continue
                digest = hashlib.sha256(claim.prompt.encode()).digest()
                try:
                    await requests.complete(claim, prompt_tokens=3, completion_tokens=4, result_sha256=digest)
                except LeaseLostError:
                    refused.append(claim.request_id)  # the sweeper took it back first: someone redoes it
                else:
                    completed.append(claim.request_id)

    async def sweeper() -> None:
        """Expires every lease it sees (it sweeps as if 10 minutes had passed), live ones too: the
        fencing token, not the sweeper's timing, is what keeps completions exactly-once."""
        async with engine.connect() as conn:
            while not drained.is_set():
                now = (await conn.execute(text("SELECT now()"))).scalar_one()
                left = (await conn.execute(text("SELECT count(*) FROM request_inflight"))).scalar_one()
                await conn.rollback()
                if produced.is_set() and left == 0:
                    drained.set()  # nothing queued or processing: done, or lost (the checks below tell)
                report = await requests.sweep(now=now + timedelta(minutes=10))
                sweeps.append(len(report.requeued))
                assert report.failed == [] and report.cancelled == []
                await asyncio.sleep(0.05)

    stop = tmp_path / "stop"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DB_")}
    env["DATABASE_URL"] = pg.server.url(fresh_database.database or "")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.requests.worker_process",
        str(CHILD_WORKERS),
        str(stop),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        ready = await asyncio.wait_for(child.stdout.readline(), timeout=60)
        assert ready.strip() == b"ready"  # the second process claims before anything is produced
        async with requests:
            await asyncio.gather(produce(), sweeper(), *(worker(w) for w in range(WORKERS)))
            # The killed workers come back and finish late: every one is refused.
            for zombie in zombies:
                with pytest.raises(LeaseLostError):
                    await requests.complete(zombie, result_sha256=b"\0" * 32)
    finally:
        stop.touch()  # the child stops on this, also when the parent failed
        out, _ = await child.communicate()
    assert child.returncode == 0
    by_child = json.loads(out)
    completed += [uuid.UUID(request_id) for request_id in by_child["completed"]]
    assert by_child["completed"]  # the second process did take part

    assert len(completed) == N and len(set(completed)) == N  # none lost, none twice
    assert zombies and sum(sweeps) >= len(zombies)
    async with engine.connect() as conn:
        inflight = (await conn.execute(text("SELECT count(*) FROM request_inflight"))).scalar_one()
        history = await conn.execute(
            text("SELECT request_id, status, result_sha256, prompt FROM request_history")
        )
        rows = history.all()
        assert inflight == 0
        assert len(rows) == N and Counter(r.status for r in rows) == {"completed": N}
        assert {r.request_id for r in rows} == set(completed)
        assert all(r.result_sha256 == hashlib.sha256(r.prompt.encode()).digest() for r in rows)
        # The rollup (folded by the sweeper as it went) plus the deltas not folded yet equal a scan.
        rollup = (
            await conn.execute(
                text(
                    "SELECT company_id, day, user_id, model_id, sum(request_count), sum(completed_count), "
                    "sum(failure_count), sum(processing_time_ms_sum), sum(processing_time_count), "
                    "sum(total_tokens) FROM (SELECT * FROM request_stats_daily UNION ALL "
                    "SELECT company_id, day, user_id, model_id, request_count, completed_count, failure_count, "
                    "cancelled_count, expired_count, processing_time_ms_sum, processing_time_count, total_tokens "
                    "FROM request_stats_deltas) s GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
                )
            )
        ).all()
        scan = (
            await conn.execute(
                text(
                    "SELECT company_id, (created_at AT TIME ZONE 'UTC')::date, user_id, model_id, count(*), "
                    "count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'), "
                    "coalesce(sum(processing_time_ms), 0), count(processing_time_ms), coalesce(sum(total_tokens), 0) "
                    "FROM request_history GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
                )
            )
        ).all()
        assert [tuple(r) for r in rollup] == [tuple(r) for r in scan]
        assert sum(r[4] for r in rollup) == N
