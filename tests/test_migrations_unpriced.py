"""Revision 0009 (unpriced calls): its downgrade never invents a cost nor drops a call."""

from __future__ import annotations

from persistence.testing import ThrowawayPostgres
from tests.test_migrations import alembic, empty_db

__all__ = ["empty_db"]  # the fixture, shared with tests/test_migrations.py


def test_0009_downgrade_refuses_while_unpriced_calls_exist(pg: ThrowawayPostgres, empty_db: str) -> None:
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    assert alembic(empty_db, "upgrade", "0009").returncode == 0
    pg.server.psql(
        "INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, cost_usd, cost_source) "
        "VALUES (1, '2026-01-01 10:05Z', 'acme-ai', 'm', 10, 5, NULL, 'unpriced'), "
        "(2, '2026-01-01 10:06Z', 'acme-ai', 'm', 10, 5, 0.25, 'provided');",
        database=database,
    )
    refused = alembic(empty_db, "downgrade", "0008")
    assert refused.returncode != 0
    assert (
        "ai_calls holds unpriced calls" in refused.stderr and "persistence prices reprice" in refused.stderr
    )
    assert pg.server.psql("SELECT count(*) FROM ai_calls;", database=database).strip() == "2"
    pg.server.psql(
        "UPDATE ai_calls SET cost_usd = 0.5, cost_source = 'provided' WHERE cost_source = 'unpriced';",
        database=database,
    )
    down = alembic(empty_db, "downgrade", "0008")
    assert down.returncode == 0, down.stderr
    costs = "SELECT id, cost_usd FROM ai_calls ORDER BY id;"
    assert pg.server.psql(costs, database=database).split() == ["1|0.500000", "2|0.250000"]
