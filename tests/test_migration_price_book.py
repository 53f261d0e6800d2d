"""Revision 0010 (price book) on a database that already logged calls: revision 0003's rows keep
the history they priced, genai-prices takes over from the upgrade on, the downgrade restores 0003."""

from __future__ import annotations

from persistence.testing import ThrowawayPostgres
from tests.test_migrations import alembic, empty_db

__all__ = ["empty_db"]  # the fixture, shared with tests/test_migrations.py

# gemini-2.5-pro: 0003 typed a cache-read price of 0.31, genai-prices has 0.125; gpt-4o: the same prices.
ROWS = (
    "SELECT model, source, effective_to IS NULL FROM vendor_prices WHERE model IN ('gemini-2.5-pro', 'gpt-4o') "
    "AND tenant_id = '' ORDER BY model, effective_from;"
)


def test_0010_supersedes_revision_0003_from_now_on_where_calls_exist(
    pg: ThrowawayPostgres, empty_db: str
) -> None:
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    assert alembic(empty_db, "upgrade", "0008").returncode == 0
    pg.server.psql(
        "INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, cost_usd) "
        "VALUES (1, '2026-01-01 10:05Z', 'openai', 'gpt-4o', 10, 5, 0.25);",
        database=database,
    )
    up = alembic(empty_db, "upgrade", "0010")
    assert up.returncode == 0, up.stderr
    rows = pg.server.psql(ROWS, database=database).splitlines()
    assert rows[0] == "gemini-2.5-pro|migration 0003|f"  # closed at the upgrade, not deleted
    assert rows[1] == "gemini-2.5-pro|genai-prices|t"
    assert rows[2:] == ["gpt-4o|migration 0003|t"]  # genai-prices agrees with it: left as it is
    cache_read = "SELECT cache_read_per_mtok FROM vendor_prices WHERE model = 'gemini-2.5-pro' ORDER BY effective_from;"
    assert pg.server.psql(cache_read, database=database).split() == ["0.310000", "0.125000"]
    # Every change to vendor_prices bumps the version the loggers compare with.
    version = int(pg.server.psql("SELECT version FROM vendor_prices_version;", database=database))
    pg.server.psql("UPDATE vendor_prices SET source = source WHERE model = 'gpt-4o';", database=database)
    assert int(pg.server.psql("SELECT version FROM vendor_prices_version;", database=database)) == version + 1

    down = alembic(empty_db, "downgrade", "0008")
    assert down.returncode == 0, down.stderr
    assert pg.server.psql(ROWS, database=database).splitlines() == [
        "gemini-2.5-pro|migration 0003|t",
        "gpt-4o|migration 0003|t",
    ]
    genai = "SELECT count(*) FROM vendor_prices WHERE source LIKE 'genai-prices%';"
    assert int(pg.server.psql(genai, database=database)) == 0


def test_0010_offline_sql_loads_genai_prices_where_no_price_exists(
    pg: ThrowawayPostgres, empty_db: str
) -> None:
    """`alembic upgrade --sql` (no database to read): the script it prints loads genai-prices' rows
    for the models without a global price, and leaves revision 0003's rows alone."""
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    assert alembic(empty_db, "upgrade", "0008").returncode == 0
    script = alembic(empty_db, "upgrade", "0008:0010", "--sql")
    assert script.returncode == 0, script.stderr
    pg.server.psql(script.stdout, database=database)
    assert pg.server.psql("SELECT version_num FROM alembic_version;", database=database).strip() == "0010"
    rows = pg.server.psql(ROWS, database=database).splitlines()
    assert rows == ["gemini-2.5-pro|migration 0003|t", "gpt-4o|migration 0003|t"]
    gpt5 = "SELECT input_per_mtok, effective_from = '1970-01-01Z', source FROM vendor_prices WHERE model = 'gpt-5';"
    assert pg.server.psql(gpt5, database=database).strip() == "1.250000|t|genai-prices"
