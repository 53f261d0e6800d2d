"""Revision 0017 (usage) on a database that already settled reservations: the upgrade files them in
`usage` as settlement would have (the user's zone, UTC without a quota), the downgrade drops it."""

from __future__ import annotations

from persistence.testing import ThrowawayPostgres
from tests.test_migrations import alembic, empty_db

__all__ = ["empty_db"]  # the fixture, shared with tests/test_migrations.py

RESERVATIONS = """
INSERT INTO quotas (company_id, user_id, reset_frequency, time_zone) VALUES ('acme', 'u1', 'monthly', 'Asia/Tokyo');
INSERT INTO quota_reservations (company_id, id, user_id, state, counter_ids, requests, tokens, cost_usd,
                                actual_requests, actual_tokens, actual_cost_usd, created_at, expires_at, finished_at)
VALUES ('acme', gen_random_uuid(), 'u1', 'settled', '{}', 1, 10, 1, 1, 7, 0.25,
        '2026-03-31 15:30Z', '2026-03-31 16:00Z', '2026-03-31 15:31Z'),
       ('acme', gen_random_uuid(), 'u1', 'settled', '{}', 1, 10, 1, 2, 5, 0.5,
        '2026-03-31 14:30Z', '2026-03-31 15:00Z', '2026-03-31 14:31Z'),
       ('acme', gen_random_uuid(), '', 'settled', '{}', 1, 10, 1, 1, 3, 0.125,
        '2026-03-31 15:30Z', '2026-03-31 16:00Z', '2026-03-31 15:31Z'),
       ('acme', gen_random_uuid(), 'u1', 'released', '{}', 1, 10, 1, 0, 0, 0,
        '2026-03-31 15:30Z', '2026-03-31 16:00Z', '2026-03-31 15:31Z');
"""
USAGE = (
    "SELECT user_id, period, period_start, period_end, requests_count, tokens_used, cost_usd "
    "FROM usage ORDER BY user_id, period, period_start;"
)


def test_0017_files_the_reservations_already_settled(pg: ThrowawayPostgres, empty_db: str) -> None:
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    assert alembic(empty_db, "upgrade", "0016").returncode == 0
    pg.server.psql(RESERVATIONS, database=database)
    up = alembic(empty_db, "upgrade", "0017")
    assert up.returncode == 0, up.stderr
    # Tokyo is UTC+9: 15:30Z on 31 March is 1 April there, 14:30Z still 31 March.
    assert pg.server.psql(USAGE, database=database).splitlines() == [
        "|daily|2026-03-31|2026-03-31|1|3|0.125000",
        "|monthly|2026-03-01|2026-03-31|1|3|0.125000",
        "u1|daily|2026-03-31|2026-03-31|2|5|0.500000",
        "u1|daily|2026-04-01|2026-04-01|1|7|0.250000",
        "u1|monthly|2026-03-01|2026-03-31|2|5|0.500000",
        "u1|monthly|2026-04-01|2026-04-30|1|7|0.250000",
    ]
    down = alembic(empty_db, "downgrade", "0016")
    assert down.returncode == 0, down.stderr
    assert pg.server.psql("SELECT to_regclass('usage') IS NULL;", database=database).strip() == "t"
    assert pg.server.psql("SELECT count(*) FROM quota_reservations;", database=database).strip() == "4"
