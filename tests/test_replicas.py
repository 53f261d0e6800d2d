"""Read replicas on a real primary + streaming hot standby (tests/tools/replica.sh): whole read-only
blocks routed to the replica, read-your-writes by WAL position, fallback when the replica lags,
is paused, dies or is promoted, and what health() and the hooks report."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import random
import subprocess
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import find_bindir
from persistence.engine import create_database_engine
from persistence.errors import (
    EmbeddedServerError,
    InvalidRequestError,
    ReplicaUnavailableError,
    TransientError,
)
from persistence.observe.health import health
from persistence.observe.hooks import BaseHook, ReplicaEvent
from persistence.replicas import (
    ReplicaRouter,
    read_your_writes_token,
    router_of,
    use_read_your_writes_token,
)
from persistence.repositories.service_health import ServiceHealthRepository
from persistence.transaction import current_session, transaction

T = TypeVar("T")
SCRIPT = Path(__file__).parent / "tools" / "replica.sh"


@dataclass
class Lab:
    """A primary and its streaming replica, driven by replica.sh."""

    directory: Path
    env: dict[str, str]
    primary: str = ""
    replica: str = ""

    def run(self, *command: str, check: bool = True) -> str:
        args = [str(SCRIPT), command[0], *command[1:], str(self.directory)]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"replica.sh {' '.join(command)} failed: {done.stderr.strip()}")
        return done.stdout

    def port(self, url: str) -> int:
        return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    try:
        bindir = find_bindir(EmbeddedConfig().pg_bindir)
    except EmbeddedServerError as exc:
        pytest.skip(f"no PostgreSQL binaries: {exc}")
    if not os.access(bindir / "pg_basebackup", os.X_OK) or not os.access(bindir / "initdb", os.X_OK):
        pytest.skip(f"{bindir} has no pg_basebackup/initdb: replica.sh cannot build a standby")
    lab = Lab(tmp_path_factory.mktemp("replica-lab"), {**os.environ, "PG_BINDIR": str(bindir)})
    lab.primary, lab.replica = lab.run("start").split()
    try:
        yield lab
    finally:
        subprocess.run([str(SCRIPT), "stop", str(lab.directory)], env=lab.env, check=False, timeout=120)


@pytest.fixture(scope="module")
async def migrated(lab: Lab) -> Lab:
    engine = await create_database_engine(DatabaseConfig(url=lab.primary))
    try:
        await migrations.upgrade(engine)
    finally:
        await engine.dispose()
    lab.run("sync")
    return lab


@dataclass
class Events(BaseHook):
    replica: list[ReplicaEvent] = field(default_factory=list)

    def on_replica(self, event: ReplicaEvent) -> None:
        self.replica.append(event)


@dataclass
class Routed:
    engine: AsyncEngine
    router: ReplicaRouter
    events: Events
    lab: Lab


@contextlib.asynccontextmanager
async def _routed(lab: Lab, **settings: Any) -> AsyncIterator[Routed]:
    lab.run("resume")
    lab.run("sync")
    events = Events()
    config = DatabaseConfig(url=lab.primary, replicas=[lab.replica], pool_size=4, **settings)
    engine = await create_database_engine(config, hooks=[events])
    router = router_of(engine)
    assert router is not None
    try:
        yield Routed(engine, router, events, lab)
    finally:
        await router.dispose()
        await engine.dispose()
        lab.run("resume", check=False)


@pytest.fixture
async def routed(migrated: Lab) -> AsyncIterator[Routed]:
    # The paused-replay tests rely on the token, not on the lag limit: make that generous.
    async with _routed(migrated, replica_max_lag_s=600, replica_wait_ms=10) as value:
        yield value


async def fresh(work: Awaitable[T]) -> T:
    """Run `work` in an empty context: no read-your-writes token from earlier work."""
    return await asyncio.create_task(_await(work), context=contextvars.Context())


async def _await(work: Awaitable[T]) -> T:
    return await work


async def where(engine: AsyncEngine) -> tuple[int, bool]:
    """(port, in recovery) of the server the current block runs on."""
    session = await current_session(engine)
    row = (await session.execute(text("SELECT inet_server_port(), pg_is_in_recovery()"))).one()
    return int(row[0]), bool(row[1])


async def _cycles(routed: Routed, cycles: int, *, seed: int) -> tuple[int, int, int]:
    """Write-then-read through a repository while replay is paused and resumed at random; returns
    (stale reads, blocks run on the replica, blocks run on the primary)."""
    rng = random.Random(seed)
    repo = ServiceHealthRepository(routed.engine)
    replica_port = routed.lab.port(routed.lab.replica)
    stale = on_replica = on_primary = 0
    paused = False
    rows: list[Any] = []
    for i in range(cycles):
        if rng.random() < 0.08:
            paused = not paused
            routed.lab.run("pause" if paused else "resume")
        if not rows or rng.random() < 0.5:
            row = await repo.add(
                service_name="ryw",
                instance_id=f"{seed}-{i}",
                status="healthy",
                last_heartbeat=datetime.now(UTC),
                metadata_={"n": i},
            )
            rows.append(row.id)
            target = row.id
        else:
            target = rng.choice(rows)
            await repo.update(target, metadata_={"n": i})
        async with transaction(read_only=True):
            got = await repo.get_or_none(target)
            port, _ = await where(routed.engine)
        if got is None or got.metadata_ != {"n": i}:
            stale += 1
        if port == replica_port:
            on_replica += 1
        else:
            on_primary += 1
    routed.lab.run("resume")
    return stale, on_replica, on_primary


async def test_write_then_read_is_never_stale_while_replay_pauses(routed: Routed) -> None:
    stale, on_replica, on_primary = await fresh(_cycles(routed, 200, seed=19))
    assert stale == 0
    # Both paths ran: the replica when it had replayed the write, the primary while replay was paused.
    assert on_replica > 0 and on_primary > 0
    assert routed.router.routed == on_replica
    assert routed.router.fallback == on_primary


@pytest.mark.stress
async def test_3000_write_then_read_cycles_with_replay_paused_at_random(routed: Routed) -> None:
    stale, on_replica, on_primary = await fresh(_cycles(routed, 3000, seed=3000))
    assert stale == 0
    assert on_replica > 0 and on_primary > 0


async def test_caught_up_reads_run_on_the_replica(routed: Routed) -> None:
    lab = routed.lab
    replica_port, primary_port = lab.port(lab.replica), lab.port(lab.primary)

    async def work() -> list[tuple[str, int, bool]]:
        seen: list[tuple[str, int, bool]] = []
        for _ in range(20):
            async with transaction(read_only=True):
                seen.append(("read-only", *await where(routed.engine)))
                async with transaction(read_only=True):  # a savepoint: same server as its block
                    seen.append(("savepoint", *await where(routed.engine)))
        async with transaction():
            seen.append(("read-write", *await where(routed.engine)))
        return seen

    seen = await fresh(work())
    assert {(kind, port, standby) for kind, port, standby in seen} == {
        ("read-only", replica_port, True),
        ("savepoint", replica_port, True),
        ("read-write", primary_port, False),
    }
    assert routed.router.routed == 20 and routed.router.fallback == 0
    assert [e.outcome for e in routed.events.replica] == ["routed"] * 20
    report = await health(routed.engine)
    (status,) = report.replicas
    assert (status.role, status.available, status.routed) == ("replica", True, 20)
    assert status.lag_s is not None and status.lag_s < 600
    (replica,) = routed.router.replicas
    assert replica.engine.pool.checkedin() > 0  # type: ignore[attr-defined]
    await routed.engine.dispose()  # as an application's shutdown does: the replicas' pools close too
    assert replica.engine.pool.checkedin() == 0  # type: ignore[attr-defined]


async def test_repository_reads_outside_blocks_stay_on_the_primary_unless_opted_in(migrated: Lab) -> None:
    async def reads(routed: Routed) -> None:
        repo = ServiceHealthRepository(routed.engine)
        await repo.count()
        await repo.list(limit=1)

    async with _routed(migrated) as routed:
        await fresh(reads(routed))
        assert (routed.router.routed, routed.router.fallback) == (0, 0)
    async with _routed(migrated, replica_reads_outside_blocks=True) as routed:
        await fresh(reads(routed))
        assert (routed.router.routed, routed.router.fallback) == (2, 0)
        # A write outside blocks leaves a token: the next read waits for it or uses the primary.
        migrated.run("pause")

        async def write_then_read() -> int:
            repo = ServiceHealthRepository(routed.engine)
            row = await repo.add(
                service_name="outside", instance_id="x", status="healthy", last_heartbeat=datetime.now(UTC)
            )
            assert read_your_writes_token() is not None
            return await repo.count(id=row.id)

        assert await fresh(write_then_read()) == 1
        assert routed.router.fallback == 1


async def test_token_carries_a_commit_to_another_context(routed: Routed) -> None:
    repo = ServiceHealthRepository(routed.engine)

    async def write() -> tuple[Any, str | None]:
        row = await repo.add(
            service_name="carried", instance_id="a", status="healthy", last_heartbeat=datetime.now(UTC)
        )
        return row.id, read_your_writes_token()

    routed.lab.run("pause")
    row_id, token = await fresh(write())
    assert token is not None and "/" in token

    async def read(token: str | None) -> tuple[bool, bool]:
        use_read_your_writes_token(token)
        async with transaction(read_only=True):
            found = await repo.get_or_none(row_id) is not None
            _, standby = await where(routed.engine)
        return found, standby

    # Another service without the token reads the paused replica: the row is not there yet...
    assert await fresh(read(None)) == (False, True)
    # ...with the token (e.g. from a request header) the block runs on the primary and sees it.
    assert await fresh(read(token)) == (True, False)
    assert routed.events.replica[-1].outcome == "fallback" and routed.events.replica[-1].reason == "behind"
    routed.lab.run("resume")
    routed.lab.run("sync")
    assert await fresh(read(token)) == (True, True)
    with pytest.raises(InvalidRequestError):
        use_read_your_writes_token("not-a-position")


async def test_a_write_in_a_savepoint_is_remembered_at_the_outer_commit(routed: Routed) -> None:
    repo = ServiceHealthRepository(routed.engine)

    async def work() -> tuple[bool, bool]:
        async with transaction():
            async with transaction():  # a savepoint released before the write below commits
                await repo.add(
                    service_name="nested", instance_id="a", status="healthy", last_heartbeat=datetime.now(UTC)
                )
            routed.lab.run("pause")
            row = await repo.add(
                service_name="nested", instance_id="b", status="healthy", last_heartbeat=datetime.now(UTC)
            )
        async with transaction(read_only=True):
            found = await repo.get_or_none(row.id) is not None
            _, standby = await where(routed.engine)
        return found, standby

    assert await fresh(work()) == (True, False)


async def test_lagging_replica_is_skipped(migrated: Lab) -> None:
    async with _routed(migrated, replica_max_lag_s=0.2, replica_probe_interval_s=0.05) as routed:
        migrated.run("pause")

        async def other_writer() -> None:
            async with transaction():
                await (await current_session(routed.engine)).execute(text("SELECT txid_current()"))

        await fresh(other_writer())  # WAL the paused replica receives but does not replay
        await asyncio.sleep(0.3)

        async def read() -> bool:
            async with transaction(read_only=True):
                return (await where(routed.engine))[1]

        assert await fresh(read()) is False  # no token in this context: skipped for its lag alone
        assert routed.events.replica[-1].reason == "lagging"
        (status,) = routed.router.statuses()
        assert status.lag_s is not None and status.lag_s > 0.2 and not status.available
        migrated.run("resume")
        migrated.run("sync")
        await asyncio.sleep(0.1)
        assert await fresh(read()) is True


async def test_replica_killed_mid_load(migrated: Lab) -> None:
    lab = migrated
    async with _routed(lab, replica_retry_after_s=0.5) as routed:
        engine = routed.engine

        async def in_flight() -> None:
            async with transaction(read_only=True):
                assert (await where(engine))[1]
                await (await current_session(engine)).execute(text("SELECT pg_sleep(5)"))

        attempts: list[bool] = []

        @transaction(read_only=True, retries=2)
        async def retried() -> bool:
            standby = (await where(engine))[1]
            attempts.append(standby)
            if standby:
                await (await current_session(engine)).execute(text("SELECT pg_sleep(5)"))
            return standby

        errors: list[BaseException] = []
        results: list[bool] = []

        async def reader() -> None:
            for _ in range(30):
                try:
                    async with transaction(read_only=True):
                        await ServiceHealthRepository(engine).count()
                        results.append((await where(engine))[1])
                except Exception as exc:  # only the blocks in flight may fail, and only transiently
                    errors.append(exc)
                await asyncio.sleep(0.01)

        first = asyncio.create_task(fresh(in_flight()))
        second = asyncio.create_task(fresh(retried()))
        readers = [asyncio.create_task(fresh(reader())) for _ in range(3)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(lab.run, "kill-replica")
        with pytest.raises(ReplicaUnavailableError) as lost:
            await first
        assert isinstance(lost.value, TransientError)
        assert await second is False  # re-run on the primary
        assert attempts == [True, False]
        await asyncio.gather(*readers)
        assert all(isinstance(e, ReplicaUnavailableError) for e in errors), errors
        assert results and results[-1] is False  # later blocks fell back to the primary
        report = await health(engine)
        assert report.replicas[0].role == "unreachable" and report.healthy
        lab.run("restart", "replica")
        lab.run("sync")
        await asyncio.sleep(0.6)  # past replica_retry_after_s: tried again

        async def read() -> bool:
            async with transaction(read_only=True):
                return (await where(engine))[1]

        assert await fresh(read()) is True


def test_token_text_round_trips() -> None:
    async def work() -> str | None:
        use_read_your_writes_token("16/B374D848")
        use_read_your_writes_token("1/0")  # an earlier position never moves the token back
        return read_your_writes_token()

    assert asyncio.run(work()) == "16/B374D848"


# Last in the module: a promoted replica cannot follow its old primary again (the lab is stopped after).
async def test_promoted_replica_is_never_read_as_a_replica(migrated: Lab) -> None:
    lab = migrated
    primary_port = lab.port(lab.primary)
    async with _routed(lab, replica_probe_interval_s=600) as routed:  # no probe: the report alone tells
        engine = routed.engine

        async def read() -> tuple[int, bool]:
            async with transaction(read_only=True):
                return await where(engine)

        runs: list[tuple[int, bool]] = []

        @transaction(read_only=True, retries=1)
        async def across_promotion() -> int:
            runs.append(await where(engine))
            if len(runs) == 1:
                await asyncio.to_thread(lab.run, "promote")
                # The block goes on (its snapshot predates the promotion) but cannot end well.
                assert (
                    await (await current_session(engine)).scalar(text("SHOW transaction_read_only")) == "on"
                )
            return await ServiceHealthRepository(engine).count()

        assert isinstance(await fresh(across_promotion()), int)
        # Run 1 on the replica, promoted under it: ReplicaUnavailableError, run again on the primary.
        assert runs[0][1] is True and runs[1] == (primary_port, False)
        promoted = [e for e in routed.events.replica if e.reason == "promoted"]
        assert [(e.outcome, e.role) for e in promoted] == [("fallback", "primary")]
        assert await fresh(read()) == (primary_port, False)  # the ex-replica is skipped
        assert (await health(engine)).replicas[0].role == "primary"
