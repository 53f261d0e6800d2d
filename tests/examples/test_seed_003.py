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


async def run_example(source: str, port: int, **given: Any) -> dict[str, Any]:
    """Execute an example with top-level `await`, as a notebook or `python -m asyncio` would;
    `given` are the names the example expects to exist (e.g. `engine`)."""
    if port != 5432:
        # The session's server could not bind 5432 on this machine; the only change is the port.
        source = source.replace("port=5432", f"port={port}")
    namespace: dict[str, Any] = dict(given)
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


REPOSITORY_PATTERN = """
from persistence import VerificationRepository

# Create repository
repo = VerificationRepository(engine)

# Save verification result
result = await repo.create_verification(
    claim_id="claim-123",
    framework="empirical",
    result={"valid": True, "reasoning": "..."},
    confidence=0.95,
    evidence={"sources": [...]}
)

# Query results
results = await repo.get_by_claim_id("claim-123")
recent = await repo.get_recent_verifications(limit=100)
"""

TRANSACTION_MANAGEMENT = """
from persistence import transaction

@transaction
async def process_verification(repo, claim, results):
    # All database operations in transaction
    claim_record = await repo.create_claim(claim)

    for framework, result in results.items():
        await repo.create_verification(
            claim_id=claim_record.id,
            framework=framework,
            **result
        )

    # Automatic commit on success, rollback on error
"""


@pytest.fixture
def example_engine(engine: AsyncEngine) -> AsyncEngine:
    """The plugin's engine: rolled back after the test, or a private database under `commits`."""
    return engine


async def table_count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def test_repository_pattern_example(example_engine: AsyncEngine) -> None:
    scope = await run_example(REPOSITORY_PATTERN, 5432, engine=example_engine)
    result = scope["result"]
    assert result.claim_id == "claim-123" and result.confidence == 0.95
    assert [r.id for r in scope["results"]] == [result.id]
    assert [r.id for r in scope["recent"]] == [result.id]
    assert await table_count(example_engine, "verification_results") == 1
    assert await table_count(example_engine, "audit_log") == 1  # the insert was audited


async def test_transaction_management_example_commits(example_engine: AsyncEngine) -> None:
    from persistence import VerificationRepository

    scope = await run_example(TRANSACTION_MANAGEMENT, 5432)
    results = {
        "empirical": {"result": {"valid": True}, "confidence": 0.9},
        "logical": {"result": {"valid": True}, "confidence": 0.8, "evidence": {"steps": 3}},
    }
    await scope["process_verification"](
        VerificationRepository(example_engine),
        {"external_id": "claim-ok", "content": "Water is wet"},
        results,
    )
    assert await table_count(example_engine, "claims") == 1
    assert await table_count(example_engine, "verification_results") == 2


async def test_transaction_management_example_rolls_everything_back(example_engine: AsyncEngine) -> None:
    from persistence import VerificationRepository
    from persistence.errors import IntegrityViolation

    scope = await run_example(TRANSACTION_MANAGEMENT, 5432)
    results = {
        "empirical": {"result": {"valid": True}, "confidence": 0.9},
        "logical": {"result": {"valid": True}, "confidence": 0.8},
        "statistical": {"result": {"valid": False}, "confidence": 1.5},  # the last call fails
    }
    with pytest.raises(IntegrityViolation) as info:
        await scope["process_verification"](
            VerificationRepository(example_engine), {"external_id": "claim-bad", "content": "x"}, results
        )
    assert info.value.constraint == "ck_verification_results_confidence_range"
    for table in ("claims", "verification_results", "audit_log"):
        assert await table_count(example_engine, table) == 0, table


MONITORING = """
# Database metrics
from persistence.monitoring import DatabaseMetrics

metrics = DatabaseMetrics()
metrics.record_query_duration("get_verification", 0.025)
metrics.record_connection_pool_size(15)
metrics.record_transaction_status("success")
"""


async def test_monitoring_example() -> None:
    scope = await run_example(MONITORING, 5432)
    snapshot = scope["metrics"].snapshot()
    stats = snapshot.queries["get_verification"]
    assert (stats.count, stats.total, stats.p50, stats.p99) == (1, 0.025, 0.025, 0.025)
    assert snapshot.pool_size == 15
    assert dict(snapshot.transactions) == {"success": 1}
