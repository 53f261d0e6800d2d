"""PersistencePool: liveness without a round trip per call, and what happens when a pooled connection died.

Round trips are counted at asyncpg's protocol (every `prepare`, `bind_execute`, simple `query`, ...
is one request the client waits for); pings by wrapping the engine's dialect `do_ping`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pydantic import ValidationError
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import PersistenceError
from persistence.models import Claim
from persistence.observe.hooks import BaseHook, PoolEvent
from persistence.pool import PersistencePool
from persistence.repository import Repository
from persistence.transaction import transaction

_ROUND_TRIPS = frozenset(
    {"prepare", "bind_execute", "bind_execute_many", "bind", "execute", "query", "copy_in", "copy_out"}
)


class ClaimRepository(Repository[Claim]):
    model = Claim


class _CountingProtocol:
    """Stands in for an asyncpg connection's protocol and logs each request that waits for the server."""

    def __init__(self, inner: Any, log: list[str]) -> None:
        self._inner = inner
        self._log = log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in _ROUND_TRIPS:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else ""
            query = first if isinstance(first, str) else getattr(first, "query", name)
            self._log.append(" ".join(query.split())[:60])
            return attr(*args, **kwargs)

        return counted


class Probe:
    """An engine with counted round trips and pings, and the backend pids it has used."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.engine = build_engine(config)
        self.round_trips: list[str] = []
        self.pings = 0
        dialect = self.engine.sync_engine.dialect
        original: Callable[[Any], bool] = dialect.do_ping

        def do_ping(dbapi_connection: Any) -> bool:
            self.pings += 1
            return original(dbapi_connection)

        dialect.do_ping = do_ping  # type: ignore[method-assign]

        @event.listens_for(self.engine.sync_engine.pool, "connect")
        def count(dbapi_connection: Any, record: Any) -> None:
            driver = dbapi_connection.driver_connection
            driver._protocol = _CountingProtocol(driver._protocol, self.round_trips)

    async def pid(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0)


async def terminate(config: DatabaseConfig, pid: int) -> None:
    """Kill one backend from another connection and wait until the server has let it go."""
    conn = await asyncpg.connect(**_kw(config))
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(200):
            if not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"backend {pid} still there")
    finally:
        await conn.close()
    await asyncio.sleep(0.05)  # let the client's event loop see the closed socket, as a real idle pool would


def _kw(config: DatabaseConfig) -> dict[str, Any]:
    return {
        "host": config.host,
        "port": config.port,
        "database": config.database,
        "user": config.user,
        "password": config.password.get_secret_value() if config.password else None,
    }


def single(config: DatabaseConfig, **overrides: Any) -> DatabaseConfig:
    """The config with a pool of exactly one connection, so every call reuses the same one."""
    return config.model_copy(update={"pool_size": 1, "max_overflow": 0, **overrides})


@pytest_asyncio.fixture(loop_scope="session")
async def probe(db_config: DatabaseConfig) -> AsyncIterator[Probe]:
    p = Probe(single(db_config))
    try:
        yield p
    finally:
        await p.engine.dispose()


async def test_default_engine_uses_the_idle_aware_pool(engine: AsyncEngine) -> None:
    assert isinstance(engine.pool, PersistencePool)
    assert engine.pool.ping_idle_s == 5.0
    assert not engine.pool._pre_ping  # SQLAlchemy's ping at every checkout is off


async def test_a_read_outside_a_block_is_begin_statement_commit(probe: Probe) -> None:
    repo = ClaimRepository(probe.engine)
    missing = "00000000-0000-0000-0000-000000000000"
    await repo.count()  # warm: connects and prepares both statements
    await repo.get_or_none(missing)
    probe.round_trips.clear()
    for _ in range(3):
        await repo.count()
        await repo.get_or_none(missing)
    # One BEGIN, one statement, one COMMIT per call: no ping in front of any of them.
    assert len(probe.round_trips) == 18, probe.round_trips
    assert probe.round_trips.count("BEGIN;") == 6
    assert probe.pings == 0


async def test_a_connection_idle_beyond_the_window_is_pinged(db_config: DatabaseConfig) -> None:
    p = Probe(single(db_config, pool_ping_idle_s=0.05))
    try:
        repo = ClaimRepository(p.engine)
        await repo.count()
        await repo.count()  # back-to-back: used a moment ago, not pinged
        assert p.pings == 0
        await asyncio.sleep(0.1)  # idle longer than the window
        await repo.count()
        assert p.pings == 1
    finally:
        await p.engine.dispose()


async def test_zero_window_pings_every_reuse_and_pre_ping_false_never(db_config: DatabaseConfig) -> None:
    always = Probe(single(db_config, pool_ping_idle_s=0))
    never = Probe(single(db_config, pool_pre_ping=False, pool_ping_idle_s=0))
    try:
        for p in (always, never):
            for _ in range(3):
                await ClaimRepository(p.engine).count()
        assert always.pings == 2  # not the first checkout: a new connection needs no test
        assert never.pings == 0
    finally:
        await always.engine.dispose()
        await never.engine.dispose()


async def test_idle_connection_that_died_is_replaced_by_the_ping(db_config: DatabaseConfig) -> None:
    p = Probe(single(db_config, pool_ping_idle_s=0))
    try:
        before = await p.pid()
        await terminate(db_config, before)
        assert await ClaimRepository(p.engine).count() >= 0
        assert p.pings == 1
        assert await p.pid() != before
    finally:
        await p.engine.dispose()


async def test_a_failed_ping_replaces_the_older_idle_connections_without_pinging_them(
    db_config: DatabaseConfig,
) -> None:
    p = Probe(db_config.model_copy(update={"pool_size": 2, "max_overflow": 0, "pool_ping_idle_s": 0}))
    try:
        async with p.engine.connect() as a, p.engine.connect() as b:  # two pooled connections
            pids = [int(await c.scalar(text("SELECT pg_backend_pid()")) or 0) for c in (a, b)]
        for pid in pids:
            await terminate(db_config, pid)
        for _ in range(2):
            assert await ClaimRepository(p.engine).count() >= 0
        # The first dead connection failed its ping, which marks every older one as replaced: the
        # second is reconnected without being pinged first.
        assert p.pings == 1
    finally:
        await p.engine.dispose()


async def test_read_on_a_connection_terminated_while_idle_succeeds_by_one_retry(
    probe: Probe, db_config: DatabaseConfig
) -> None:
    before = await probe.pid()
    await terminate(db_config, before)
    probe.round_trips.clear()
    assert await ClaimRepository(probe.engine).count() >= 0
    assert probe.pings == 0  # used a moment ago: handed out untested, the read's retry recovered
    assert await probe.pid() != before


async def test_every_read_method_retries(db_config: DatabaseConfig) -> None:
    p = Probe(single(db_config, pool_pre_ping=False))
    repo = ClaimRepository(p.engine)
    reads: list[Callable[[], Any]] = [
        lambda: repo.count(),
        lambda: repo.exists(source="nobody"),
        lambda: repo.get_or_none("00000000-0000-0000-0000-000000000000"),
        lambda: repo.get_many(["00000000-0000-0000-0000-000000000000"]),
        lambda: repo.list(source="nobody", limit=1),
        lambda: repo.page(order_by="external_id", limit=1),
        lambda: _drain(repo.stream(batch_size=10)),
    ]
    try:
        for read in reads:
            await terminate(db_config, await p.pid())
            await read()
    finally:
        await p.engine.dispose()


@pytest.mark.commits
async def test_retried_read_sees_the_same_arguments_even_from_a_generator(
    fresh_database: DatabaseConfig,
) -> None:
    # Arguments are consumed once, before any SQL: the retry re-runs the built statement, so a
    # generator of `__in` values is not found empty the second time.
    p = Probe(single(fresh_database, pool_pre_ping=False))
    repo = ClaimRepository(p.engine)
    try:
        stored = await repo.add(external_id="g-1", content="kept", claim_type="fact", source="test")
        await terminate(fresh_database, await p.pid())
        assert [c.id for c in await repo.list(external_id__in=(x for x in ["g-1"]))] == [stored.id]
    finally:
        await p.engine.dispose()


async def _drain(rows: AsyncIterator[Claim]) -> list[Claim]:
    return [row async for row in rows]


@pytest.mark.commits
async def test_write_on_a_dead_connection_is_not_retried(fresh_database: DatabaseConfig) -> None:
    p = Probe(single(fresh_database))
    repo = ClaimRepository(p.engine)
    try:
        await repo.count()
        await terminate(fresh_database, await p.pid())
        p.round_trips.clear()
        with pytest.raises(PersistenceError):
            await repo.add(external_id="w-1", content="lost", claim_type="fact", source="test")
        assert p.pings == 0
        assert not [q for q in p.round_trips if q.startswith("INSERT") or q.startswith("WITH")]
        assert await repo.count() == 0  # the next call runs on a fresh connection; nothing was written
    finally:
        await p.engine.dispose()


@pytest.mark.commits
async def test_read_inside_a_block_is_not_retried(fresh_database: DatabaseConfig) -> None:
    p = Probe(single(fresh_database))
    repo = ClaimRepository(p.engine)
    try:
        await repo.count()
        await terminate(fresh_database, await p.pid())
        p.round_trips.clear()
        with pytest.raises(PersistenceError):
            async with transaction():
                await repo.count()
        assert p.round_trips.count("BEGIN;") <= 1  # tried once, on the dead connection
        assert await repo.count() == 0
    finally:
        await p.engine.dispose()


async def test_hooks_and_idle_ping_compose(db_config: DatabaseConfig) -> None:
    events: list[PoolEvent] = []

    class Sink(BaseHook):
        def on_pool(self, event: PoolEvent) -> None:
            events.append(event)

    engine = build_engine(single(db_config, pool_ping_idle_s=0), hooks=[Sink()])
    try:
        assert isinstance(engine.pool, PersistencePool)
        assert engine.pool.ping_idle_s == 0
        async with engine.connect() as conn:
            await conn.scalar(select(func.now()))
        assert [e.kind for e in events if e.kind in ("checkout", "checkin")] == ["checkout", "checkin"]
    finally:
        await engine.dispose()


def test_ping_window_is_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DatabaseConfig(host="db.example").pool_ping_idle_s == 5.0
    monkeypatch.setenv("DB_POOL_PING_IDLE_S", "0.5")
    assert DatabaseConfig(host="db.example").pool_ping_idle_s == 0.5
    with pytest.raises(ValidationError, match="pool_ping_idle_s"):
        DatabaseConfig(host="db.example", pool_ping_idle_s=-1)
