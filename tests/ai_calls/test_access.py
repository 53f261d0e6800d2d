"""The reconciliation_reader role (must-show 3): a real login that can SELECT and cannot write."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    ConfigurationError,
    DatabaseConfig,
    DatabaseConnectionError,
    DatabaseError,
    InvalidRequestError,
    grant_reader,
)
from persistence.ai_calls.access import scram_sha256_verifier
from persistence.engine import build_engine
from persistence.errors import translate
from persistence.testing import ThrowawayPostgres
from tests.ai_calls.ledger_rows import insert_rows, make_rows


def sqlstate(exc: BaseException) -> str | None:
    error = translate(exc)
    assert isinstance(error, DatabaseError)
    return error.sqlstate


PASSWORD = SecretStr("reader-pw-7c1f0e2a")


def reader_config(pg: ThrowawayPostgres, database: str, password: str, role: str) -> DatabaseConfig:
    """Over TCP with a password: the way a reporting tool would connect."""
    return DatabaseConfig(
        host="127.0.0.1", port=pg.port, database=database, user=role, password=password, pool_size=1
    )


@pytest.mark.commits
async def test_reader_can_select_and_cannot_write(
    migrated: ThrowawayPostgres, fresh_database: DatabaseConfig, engine: AsyncEngine
) -> None:
    await insert_rows(engine, make_rows()[:20])
    role = "reconciliation_reader"
    await grant_reader(engine, PASSWORD)
    await grant_reader(engine, PASSWORD)  # idempotent
    assert fresh_database.database is not None
    reader = build_engine(reader_config(migrated, fresh_database.database, PASSWORD.get_secret_value(), role))
    try:
        async with reader.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM ai_calls"))).scalar_one() == 20
            assert (await conn.execute(text("SELECT count(*) FROM reconciliation_reports"))).scalar_one() == 0
            assert (await conn.execute(text("SELECT current_user"))).scalar_one() == role
        statements = [
            "INSERT INTO ai_calls (provider, model, input_tokens, output_tokens, cost_usd) VALUES ('x', 'y', 1, 1, 0)",
            "UPDATE ai_calls SET cost_usd = 0",
            "DELETE FROM reconciliation_reports",
            "TRUNCATE ai_calls",
            "SELECT count(*) FROM claims",
        ]
        for sql in statements:
            async with reader.connect() as conn:
                # Bypass the role's read-only default: the privileges themselves must refuse.
                await conn.execute(text("SET default_transaction_read_only = off"))
                await conn.commit()
                with pytest.raises(DBAPIError) as info:
                    await conn.execute(text(sql))
                assert sqlstate(info.value) == "42501", sql  # insufficient_privilege
        async with reader.connect() as conn:
            with pytest.raises(DBAPIError) as info:
                await conn.execute(text("CREATE TABLE mine (x int)"))
            assert sqlstate(info.value) in ("25006", "42501")  # read-only transaction / no CREATE
    finally:
        await reader.dispose()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM ai_calls"))).scalar_one() == 20

    # A new password replaces the old one.
    await grant_reader(engine, "another-reader-pw-51")
    stale = build_engine(reader_config(migrated, fresh_database.database, PASSWORD.get_secret_value(), role))
    try:
        with pytest.raises(DatabaseConnectionError) as failed:
            async with stale.connect():
                pass
        assert failed.value.sqlstate == "28P01" and not failed.value.retryable  # invalid_password
        assert "reader-pw" not in str(failed.value)
    finally:
        await stale.dispose()


async def test_grant_reader_rejects_bad_input(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError):
        await grant_reader(engine, PASSWORD, role="Robert'); DROP TABLE ai_calls;--")
    with pytest.raises(ConfigurationError):
        await grant_reader(engine, "short")
    with pytest.raises(InvalidRequestError, match="no_such_table"):
        await grant_reader(engine, PASSWORD, tables=("ai_calls", "no_such_table"))


def test_scram_verifier_matches_rfc7677_shape() -> None:
    verifier = scram_sha256_verifier("pencil", salt=b"0123456789abcdef")
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    assert method == "SCRAM-SHA-256" and iterations_salt == "4096:MDEyMzQ1Njc4OWFiY2RlZg=="
    assert len(keys.split(":")) == 2
    assert Decimal(len(verifier)) > 100
