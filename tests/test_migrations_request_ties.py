"""Revision 0021 (request ties) on a database that already holds finished requests: the upgrade adds
`ai_call_id` (NULL for them) and `request_transitions` with a partition for every month the history
has; the downgrade removes both and leaves the requests as they were."""

from __future__ import annotations

from persistence.testing import ThrowawayPostgres
from tests.test_migrations import alembic, empty_db

__all__ = ["empty_db"]  # the fixture, shared with tests/test_migrations.py

HISTORY = """
SELECT request_history_ensure_partition('2025-01-01');
INSERT INTO request_history (company_id, request_id, created_at, user_id, model_id, prompt, status, updated_at,
                             queued_at, completed_at, attempts)
VALUES ('acme', 'a0000000-0000-0000-0000-000000000001', '2025-01-20 09:00Z', 'u1', 'gpt-4o', 'p', 'completed',
        '2025-01-20 09:01Z', '2025-01-20 09:00Z', '2025-01-20 09:01Z', 1);
"""
PARTS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass('request_transitions') ORDER BY 1;"
)


def test_0021_adds_the_call_link_and_the_transitions_and_steps_back(
    pg: ThrowawayPostgres, empty_db: str
) -> None:
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]

    def psql(sql: str) -> str:
        return pg.server.psql(sql, database=database).strip()

    assert alembic(empty_db, "upgrade", "0020").returncode == 0
    psql(HISTORY)
    up = alembic(empty_db, "upgrade", "0021")
    assert up.returncode == 0, up.stderr
    assert (
        psql("SELECT request_id, ai_call_id IS NULL FROM requests;")
        == "a0000000-0000-0000-0000-000000000001|t"
    )
    parts = psql(PARTS).split()
    assert "request_transitions_p2025_01" in parts and "request_transitions_default" in parts
    history_months = psql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'request_history'::regclass;")
    assert len(parts) == int(history_months)  # one per history month, and the default
    assert psql("SELECT request_transitions_ensure_partition('2025-01-01');") == "f"

    down = alembic(empty_db, "downgrade", "0020")
    assert down.returncode == 0, down.stderr
    assert psql("SELECT to_regclass('request_transitions') IS NULL;") == "t"
    assert (
        psql(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'ai_call_id' "
            "AND table_name IN ('request_history', 'requests');"
        )
        == "0"
    )
    assert (
        psql("SELECT request_id, status FROM requests;") == "a0000000-0000-0000-0000-000000000001|completed"
    )

    again = alembic(empty_db, "upgrade", "head")
    assert again.returncode == 0, again.stderr
