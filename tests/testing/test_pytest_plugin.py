"""The pytest plugin's own promises: rolled-back isolation, and real commits in a private database."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.models import Claim

MARKER_ID = "plugin-isolation-probe"


@pytest.mark.parametrize("attempt", [1, 2])
async def test_each_test_starts_clean_even_after_a_commit(session: AsyncSession, attempt: int) -> None:
    # Both runs see zero rows: the first run's commit was only a savepoint inside the outer transaction.
    assert await session.scalar(select(func.count()).where(Claim.external_id == MARKER_ID)) == 0
    session.add(Claim(external_id=MARKER_ID, content=f"attempt {attempt}"))
    await session.commit()
    assert await session.scalar(select(func.count()).where(Claim.external_id == MARKER_ID)) == 1


@pytest.mark.commits
async def test_commits_marker_gives_a_private_migrated_database(
    request: pytest.FixtureRequest,
) -> None:
    assert "fresh_database" in request.fixturenames  # applied by the marker alone
    config: DatabaseConfig = request.getfixturevalue("fresh_database")
    assert config.database is not None and config.database.startswith("persistence_clone_")
    writer, reader = build_engine(config), build_engine(config)
    try:
        async with writer.begin() as conn:
            await conn.execute(text("INSERT INTO claims (external_id, content) VALUES ('committed', 'x')"))
        async with reader.connect() as conn:  # another connection sees the committed row
            assert await conn.scalar(text("SELECT count(*) FROM claims WHERE external_id = 'committed'")) == 1
    finally:
        await writer.dispose()
        await reader.dispose()


async def test_shared_database_saw_no_commit_from_marked_tests(session: AsyncSession) -> None:
    assert await session.scalar(select(func.count()).where(Claim.external_id == "committed")) == 0
