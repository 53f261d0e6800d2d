"""Alembic, driven exactly as users drive it: upgrade, check for drift, downgrade, autogenerate."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from persistence.engine import build_engine
from persistence.migrations import head_revision
from persistence.models import Base
from persistence.testing import ThrowawayPostgres
from persistence.testing.database import TEST_DB

ROOT = Path(__file__).resolve().parents[1]
ALEMBIC = [sys.executable, "-m", "alembic"]


@pytest.fixture
def empty_db(pg: ThrowawayPostgres) -> Iterator[str]:
    name = pg.empty_database("migrations_probe")
    yield pg.server.url(name)
    pg.drop(name)


def alembic(url: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DB_")}
    env["DATABASE_URL"] = url
    return subprocess.run(
        [*ALEMBIC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def project_tables(pg: ThrowawayPostgres, url: str) -> set[str]:
    database = url.split("@/", 1)[1].split("?", 1)[0]
    out = pg.server.psql(
        "SELECT CASE schemaname WHEN 'public' THEN tablename ELSE schemaname || '.' || tablename END "
        "FROM pg_tables WHERE schemaname IN ('public', 'analytics') AND tablename <> 'alembic_version' "
        "AND NOT (SELECT relispartition FROM pg_class WHERE oid = format('%I.%I', schemaname, tablename)::regclass);",
        database=database,
    )
    return set(out.split())


def test_upgrade_check_downgrade_upgrade(pg: ThrowawayPostgres, empty_db: str) -> None:
    up = alembic(empty_db, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert project_tables(pg, empty_db) == set(Base.metadata.tables)

    check = alembic(empty_db, "check")
    assert check.returncode == 0, check.stderr + check.stdout
    assert "No new upgrade operations detected" in check.stdout + check.stderr

    down = alembic(empty_db, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert project_tables(pg, empty_db) == set()

    again = alembic(empty_db, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert project_tables(pg, empty_db) == set(Base.metadata.tables)


def test_every_revision_steps_down_and_up(pg: ThrowawayPostgres, empty_db: str) -> None:
    assert alembic(empty_db, "upgrade", "head").returncode == 0
    history = alembic(empty_db, "history").stdout.strip().splitlines()
    for _ in history:
        step = alembic(empty_db, "downgrade", "-1")
        assert step.returncode == 0, step.stderr
    assert project_tables(pg, empty_db) == set()
    for _ in history:
        step = alembic(empty_db, "upgrade", "+1")
        assert step.returncode == 0, step.stderr
    assert project_tables(pg, empty_db) == set(Base.metadata.tables)


def test_downgrade_from_0005_keeps_the_usage_of_pending_batches(pg: ThrowawayPostgres, empty_db: str) -> None:
    assert alembic(empty_db, "upgrade", "head").returncode == 0
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    pg.server.psql(
        "INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, cost_usd) "
        "VALUES (1, '2026-01-01 10:05Z', 'openai', 'gpt-4o', 10, 5, 0.25), "
        "(2, '2026-01-01 10:50Z', 'openai', 'gpt-4o', 20, 5, 0.50), "
        "(3, '2026-01-01 11:10Z', 'openai', 'gpt-4o', 30, 5, 1.00); "
        "INSERT INTO ai_call_pending_batches (first_id, last_id) VALUES (1, 3);",
        database=database,
    )
    step = alembic(empty_db, "downgrade", "0004")
    assert step.returncode == 0, step.stderr
    out = pg.server.psql(
        "SELECT hour AT TIME ZONE 'UTC', calls, total_tokens, cost_usd FROM ai_call_usage_deltas ORDER BY hour;",
        database=database,
    )
    assert out.split() == ["2026-01-01", "10:00:00|2|40|0.750000", "2026-01-01", "11:00:00|1|35|1.000000"]


def test_autogenerate_on_a_migrated_database_finds_nothing(empty_db: str, tmp_path: Path) -> None:
    # Work on a copy, so the generated revision never lands in the checkout.
    shutil.copytree(ROOT / "alembic", tmp_path / "alembic")
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    assert alembic(empty_db, "-c", str(tmp_path / "alembic.ini"), "upgrade", "head").returncode == 0
    gen = alembic(empty_db, "-c", str(tmp_path / "alembic.ini"), "revision", "--autogenerate", "-m", "probe")
    assert gen.returncode == 0, gen.stderr
    [new] = [p for p in (tmp_path / "alembic" / "versions").glob("*probe.py")]
    body = new.read_text()
    assert "op." not in body  # no operations: models and migrations agree
    assert "def upgrade() -> None:" in body and f"Revises: {head_revision()}" in body


def test_offline_sql_renders(empty_db: str) -> None:
    out = alembic(empty_db, "upgrade", "head", "--sql")
    assert out.returncode == 0, out.stderr
    assert "CREATE TABLE claims" in out.stdout and "COMMIT" in out.stdout


# Partitions (made by data, not declared by the models) are left out: only their parents count.
CATALOG_QUERY = """
SELECT 'column ' || table_schema || '.' || table_name || '.' || column_name || ' ' || data_type || ' '
       || coalesce(character_maximum_length::text, '') || ' ' || coalesce(numeric_precision::text, '') || ','
       || coalesce(numeric_scale::text, '') || ' null=' || is_nullable || ' default=' || coalesce(column_default, '')
       || ' generated=' || coalesce(generation_expression, '') || ' identity=' || is_identity
  FROM information_schema.columns WHERE table_schema IN ('public', 'analytics') AND table_name <> 'alembic_version'
   AND NOT (SELECT relispartition FROM pg_class WHERE oid = format('%I.%I', table_schema, table_name)::regclass)
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname IN ('public', 'analytics') AND tablename <> 'alembic_version'
   AND NOT (SELECT relispartition FROM pg_class WHERE oid = format('%I.%I', schemaname, tablename)::regclass)
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' '
       -- PostgreSQL 18 records NOT NULL as constraints (contype 'n') with auto-generated names that
       -- differ between create_all and ALTER (`..._not_null` vs `..._not_null1`): compare their definitions only.
       || CASE WHEN contype = 'n' THEN '' ELSE conname || ' ' END || pg_get_constraintdef(oid)
  FROM pg_constraint
 WHERE connamespace IN (SELECT oid FROM pg_namespace WHERE nspname IN ('public', 'analytics'))
   AND conrelid::regclass::text <> 'alembic_version'
   AND NOT (SELECT relispartition FROM pg_class WHERE oid = conrelid)
ORDER BY 1;
"""


async def test_migrations_build_exactly_what_the_models_declare(
    migrated: ThrowawayPostgres, empty_db: str
) -> None:
    """`alembic check` ignores CHECK bodies and index USING/WHERE/DESC; the catalogs do not."""
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    pg = migrated
    engine = build_engine(pg.config(database), pooled=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()
    from_models = pg.server.psql(CATALOG_QUERY, database=database).splitlines()
    from_migrations = pg.server.psql(CATALOG_QUERY, database=TEST_DB).splitlines()
    assert len(from_models) > 100
    assert from_models == from_migrations


def test_seed_data_of_0003_is_idempotent(pg: ThrowawayPostgres, empty_db: str) -> None:
    """Running 0003's upgrade again (stamped back, or prices already loaded by hand) inserts nothing
    and fails on nothing: a price in force for the model is kept."""
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    count = "SELECT count(*) FROM vendor_prices;"
    assert alembic(empty_db, "upgrade", "0003").returncode == 0
    loaded = int(pg.server.psql(count, database=database))
    assert loaded > 10
    assert alembic(empty_db, "stamp", "0002").returncode == 0
    rerun = alembic(empty_db, "upgrade", "0003")
    assert rerun.returncode == 0, rerun.stderr
    assert int(pg.server.psql(count, database=database)) == loaded


def test_0007_prices_one_hour_writes_and_its_downgrade_keeps_every_token(
    pg: ThrowawayPostgres, empty_db: str
) -> None:
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    assert alembic(empty_db, "upgrade", "0006").returncode == 0
    pg.server.psql(
        "INSERT INTO vendor_prices (provider, model, input_per_mtok, output_per_mtok, cache_read_per_mtok, "
        "cache_write_per_mtok, reasoning_per_mtok, effective_from) VALUES "
        "('anthropic', 'claude-by-hand', 4, 20, 0.4, 5, 20, '2026-01-01Z'), "
        "('openai', 'gpt-by-hand', 1, 4, 0.1, 1, 4, '2026-01-01Z'); "
        "INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, cache_write_tokens, "
        "cost_usd) VALUES (1, '2026-01-01 10:05Z', 'anthropic', 'claude-by-hand', 10, 5, 7, 0.25);",
        database=database,
    )
    up = alembic(empty_db, "upgrade", "0007")
    assert up.returncode == 0, up.stderr
    prices = pg.server.psql(
        "SELECT model, coalesce(cache_write_1h_per_mtok::text, 'NULL') FROM vendor_prices "
        "WHERE model LIKE '%by-hand' ORDER BY model;",
        database=database,
    )
    assert prices.split() == ["claude-by-hand|8.000000", "gpt-by-hand|NULL"]
    pg.server.psql(
        "INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, cache_write_tokens, "
        "cache_write_1h_tokens, cost_usd) VALUES (2, '2026-01-01 10:10Z', 'anthropic', 'claude-by-hand', 10, 5, 7, "
        "4000, 0.25); INSERT INTO ai_call_usage_deltas (hour, provider, model, calls, error_calls, input_tokens, "
        "output_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, total_tokens, "
        "cost_usd, latency_ms_sum, latency_count) "
        "VALUES ('2026-01-01 10:00Z', 'anthropic', 'claude-by-hand', 1, 0, 10, 5, 0, 7, 4000, 0, 4022, 0.25, 0, 0);",
        database=database,
    )
    totals = "SELECT id, cache_write_tokens, total_tokens FROM ai_calls ORDER BY id;"
    assert pg.server.psql(totals, database=database).split() == ["1|7|22", "2|7|4022"]
    down = alembic(empty_db, "downgrade", "0006")
    assert down.returncode == 0, down.stderr
    # The 1-hour writes are folded into cache_write_tokens: no token is lost, no total changes.
    assert pg.server.psql(totals, database=database).split() == ["1|7|22", "2|4007|4022"]
    deltas = "SELECT cache_write_tokens, total_tokens FROM ai_call_usage_deltas;"
    assert pg.server.psql(deltas, database=database).split() == ["4007|4022"]
