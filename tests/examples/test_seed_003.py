"""Seed 003's code examples, run as written (only the import path `chil.persistence` -> `persistence`)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.testing import ThrowawayPostgres

BASIC_CONFIGURATION = """
from persistence import DatabaseConfig, create_database_engine

# Configure database
config = DatabaseConfig(
    host="localhost",
    port=5432,
    database="brahminykite",
    user="brahminykite",
    password="your_password",
    pool_size=20,
    max_overflow=10
)

# Create engine
engine = await create_database_engine(config)
"""

MODELS = """
from persistence.models import (
    VerificationResult,
    ConsensusDecision,
    Claim,
    TrainingData,
    ModelCheckpoint,
    ServiceHealth,
    AuditLog
)

# Type-safe model usage
verification = VerificationResult(
    claim_id="claim-123",
    framework="empirical",
    result={"valid": True},
    confidence=0.95
)
"""


async def run_example(source: str, port: int) -> dict[str, Any]:
    """Execute an example with top-level `await`, as a notebook or `python -m asyncio` would."""
    if port != 5432:
        # The session's server could not bind 5432 on this machine; the only change is the port.
        source = source.replace("port=5432", f"port={port}")
    namespace: dict[str, Any] = {}
    body = textwrap.indent(source, "    ") + "\n    return locals()\n"
    exec(compile(f"async def __example():\n{body}", "<seed 003 example>", "exec"), namespace)  # noqa: S102
    result: dict[str, Any] = await namespace["__example"]()
    return result


@pytest.fixture(scope="module")
def brahminykite(pg: ThrowawayPostgres) -> ThrowawayPostgres:
    pg.create_role("brahminykite", "your_password", database="brahminykite")
    return pg


async def test_basic_configuration_example(brahminykite: ThrowawayPostgres) -> None:
    scope = await run_example(BASIC_CONFIGURATION, brahminykite.port)
    engine: AsyncEngine = scope["engine"]
    try:
        assert isinstance(engine, AsyncEngine)
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT current_user || '@' || current_database()")) == (
                "brahminykite@brahminykite"
            )
        assert engine.pool.size() == 20  # type: ignore[attr-defined]
        assert "your_password" not in repr(scope["config"])
    finally:
        await engine.dispose()


async def test_models_example() -> None:
    scope = await run_example(MODELS, 5432)
    verification = scope["verification"]
    assert (verification.claim_id, verification.framework, verification.confidence) == (
        "claim-123",
        "empirical",
        0.95,
    )
    assert {
        "ConsensusDecision",
        "Claim",
        "TrainingData",
        "ModelCheckpoint",
        "ServiceHealth",
        "AuditLog",
    } <= set(scope)
