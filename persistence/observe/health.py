"""`await health(engine)`: can we reach the database, how fast, which server, how full is the pool,
is the schema at the Alembic head of this package's migrations, and how many AI calls of the last
24 hours the ledger stored without a price (a model nobody priced yet: `persistence prices reprice`).

Never raises for an unreachable or broken database: the report says what failed (`error`) and
`healthy` is False. `persistence health` prints it and exits non-zero when unhealthy.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, replace
from time import perf_counter
from typing import Any, Literal

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import NullPool

from persistence import migrations
from persistence.errors import translate
from persistence.observe.hooks import PoolStats
from persistence.observe.instrument import pool_stats
from persistence.replicas import ReplicaStatus, router_of

SchemaState = Literal["at head", "behind head", "unknown revision", "unknown"]


@dataclass(frozen=True)
class SchemaStatus:
    """`current` revision in the database (None: never migrated), `head` of the shipped migrations,
    `behind` = migrations not yet applied. `unknown revision`: the database has a revision this code
    does not know (migrated by newer code)."""

    state: SchemaState
    current: str | None
    head: str | None
    behind: int | None


@dataclass(frozen=True)
class HealthReport:
    healthy: bool
    connected: bool
    latency_ms: float | None
    server_version: str | None
    database: str | None
    pool: PoolStats | None
    schema: SchemaStatus
    error: str | None = None
    # AI calls of the last 24 h stored unpriced, and their tokens; None: no ledger or not readable.
    unpriced_calls_24h: int | None = None
    unpriced_tokens_24h: int | None = None
    # Each read replica's role, replay lag and routing counts (empty: the engine has none). A replica
    # that is down does not make the report unhealthy: its reads go to the primary.
    replicas: tuple[ReplicaStatus, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def not_checked(error: str, *, database: str | None = None) -> HealthReport:
    """The unhealthy report for a database we chose not to reach (`persistence health` finding the
    embedded server stopped: a health check reports, it does not start a server)."""
    unknown = SchemaStatus("unknown", None, migrations.head_revision(), None)
    return HealthReport(False, False, None, None, database, None, unknown, error)


async def health(
    engine: AsyncEngine,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 (a deadline for the whole check)
    service: migrations.ServiceConfig | None = None,
) -> HealthReport:
    """Check the database behind `engine` within `timeout` seconds (one pooled connection, a few queries).
    `service`: a service's alembic.ini, when its own branch of revisions shares the database. With
    read replicas attached, each is checked too (concurrently, same timeout)."""
    router = router_of(engine)
    if router is None:
        return await _health(engine, timeout, service)
    report, replicas = await asyncio.gather(_health(engine, timeout, service), router.probe(timeout=timeout))
    return replace(report, replicas=replicas)


async def _health(
    engine: AsyncEngine,
    timeout: float,  # noqa: ASYNC109
    service: migrations.ServiceConfig | None,
) -> HealthReport:
    head = migrations.head_revision()
    pool = None if isinstance(engine.pool, NullPool) else pool_stats(engine.pool)
    unknown = SchemaStatus("unknown", None, head, None)
    try:
        async with asyncio.timeout(timeout), engine.connect() as conn:
            started = perf_counter()
            await conn.execute(text("SELECT 1"))
            latency_ms = (perf_counter() - started) * 1000
            row = (
                await conn.execute(text("SELECT current_setting('server_version'), current_database()"))
            ).one()
            current = await conn.run_sync(migrations.current_of, service)
            unpriced = await _unpriced_last_day(conn)
    except TimeoutError:
        return HealthReport(
            False, False, None, None, engine.url.database, pool, unknown, f"timed out after {timeout:g}s"
        )
    except Exception as exc:  # the report is the answer; the caller decides what to do
        err = translate(exc) or exc
        return HealthReport(
            False, False, None, None, engine.url.database, pool, unknown, f"{type(err).__name__}: {err}"
        )
    schema = schema_status(current, head)
    return HealthReport(
        healthy=schema.state == "at head",
        connected=True,
        latency_ms=round(latency_ms, 3),
        server_version=str(row[0]),
        database=str(row[1]),
        pool=pool_stats(engine.pool) if pool is not None else None,
        schema=schema,
        error=None if schema.state == "at head" else f"schema {schema.state}",
        unpriced_calls_24h=None if unpriced is None else unpriced[0],
        unpriced_tokens_24h=None if unpriced is None else unpriced[1],
    )


# Through the partial index on unpriced calls (revision 0009): cheap whatever the ledger's size.
_UNPRICED = text(
    "SELECT count(*), coalesce(sum(total_tokens), 0) FROM ai_calls "
    "WHERE cost_source = 'unpriced' AND created_at >= now() - interval '24 hours'"
)


async def _unpriced_last_day(conn: AsyncConnection) -> tuple[int, int] | None:
    """(calls, tokens) stored unpriced in the last 24 h; None without a readable ledger (the last
    statement of the check, so a failure here costs nothing else)."""
    if await conn.scalar(text("SELECT to_regclass('ai_calls')")) is None:
        return None
    try:
        row = (await conn.execute(_UNPRICED)).one()
    except DBAPIError:  # e.g. no SELECT on the ledger: report the rest
        return None
    return int(row[0]), int(row[1])


def schema_status(current: str | None, head: str | None) -> SchemaStatus:
    if current == head:
        return SchemaStatus("at head", current, head, 0)
    if head is None:
        return SchemaStatus("unknown revision", current, head, None)
    script = ScriptDirectory.from_config(migrations.alembic_config())
    try:
        pending = list(script.iterate_revisions(head, current or "base"))
    except CommandError:
        return SchemaStatus("unknown revision", current, head, None)
    return SchemaStatus("behind head", current, head, len(pending))
