"""Revision 0025 (distribution key) on a database that already holds ledger rows, some without an
organization: the upgrade stores '' for them, gives every key its tenant (each idempotency key the
organization of its call, '' for a call already gone) and leads every key with the tenant; the
downgrade gives back revision 0024's NULLs and keys with the data intact."""

from __future__ import annotations

from persistence.testing import ThrowawayPostgres
from tests.test_migrations import alembic, empty_db

__all__ = ["empty_db"]  # the fixture, shared with tests/test_migrations.py

LEDGER = """
INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, cost_usd, organization_id)
VALUES (1, '2025-01-20 09:00Z', 'openai', 'gpt-4o', 10, 5, 0.01, 'acme'),
       (2, '2025-01-20 09:10Z', 'openai', 'gpt-4o', 20, 5, 0.02, NULL);
INSERT INTO ai_call_keys (idempotency_key, call_id, call_created_at, payload_hash)
VALUES ('openai:r1', 1, '2025-01-20 09:00Z', '\\x01'), ('openai:r2', 2, '2025-01-20 09:10Z', '\\x02'),
       ('openai:gone', 99, '2024-01-01 00:00Z', '\\x03');
INSERT INTO ai_call_usage_deltas (hour, provider, model, organization_id, calls, error_calls, input_tokens,
                                  output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
                                  total_tokens, cost_usd, latency_ms_sum, latency_count)
VALUES ('2025-01-20 09:00Z', 'openai', 'gpt-4o', NULL, 1, 0, 20, 5, 0, 0, 0, 25, 0.02, 0, 0);
INSERT INTO ai_call_usage_hourly (hour, provider, model, organization_id, calls, error_calls, input_tokens,
                                  output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
                                  total_tokens, cost_usd, latency_ms_sum, latency_count)
VALUES ('2025-01-20 09:00Z', 'openai', 'gpt-4o', 'acme', 1, 0, 10, 5, 0, 0, 0, 15, 0.01, 0, 0),
       ('2025-01-20 09:00Z', 'openai', 'gpt-4o', NULL, 1, 0, 20, 5, 0, 0, 0, 25, 0.02, 0, 0);
INSERT INTO company_quotas (company_id, metric, period, limit_value) VALUES ('acme', 'requests', 'daily', 10);
"""
CALLS = "SELECT id, coalesce(organization_id, '<null>'), cost_usd FROM ai_calls ORDER BY id;"
ROLLUPS = (
    "SELECT 'd', coalesce(organization_id, '<null>'), calls FROM ai_call_usage_deltas UNION ALL "
    "SELECT 'h', coalesce(organization_id, '<null>'), calls FROM ai_call_usage_hourly ORDER BY 1, 2;"
)
KEY_OF = (
    "SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM pg_constraint c "
    "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
    "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum WHERE c.conname = '{}';"
)


def test_0025_leads_every_key_with_the_tenant_and_steps_back(pg: ThrowawayPostgres, empty_db: str) -> None:
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]

    def psql(sql: str) -> str:
        return pg.server.psql(sql, database=database).strip()

    assert alembic(empty_db, "upgrade", "0024").returncode == 0
    psql(LEDGER)
    before = (psql(CALLS), psql(ROLLUPS))
    up = alembic(empty_db, "upgrade", "0025")
    assert up.returncode == 0, up.stderr
    assert psql(CALLS) == "1|acme|0.010000\n2||0.020000"
    assert psql("SELECT organization_id, idempotency_key, call_id FROM ai_call_keys ORDER BY call_id;") == (
        "acme|openai:r1|1\n|openai:r2|2\n|openai:gone|99"
    )
    assert psql(ROLLUPS) == "d||1\nh||1\nh|acme|1"
    assert psql(KEY_OF.format("pk_ai_calls")) == "organization_id,created_at,id"
    assert psql(KEY_OF.format("pk_ai_call_keys")) == "organization_id,idempotency_key"
    assert psql(KEY_OF.format("uq_ai_call_usage_hourly_key")).startswith("organization_id,hour,")
    assert psql(KEY_OF.format("pk_company_quotas")) == "company_id,id"
    # A key per organization now: the same key under another organization is another row.
    psql(
        "INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, organization_id, "
        "cost_usd) VALUES (3, '2025-01-21 09:00Z', 'openai', 'gpt-4o', 1, 1, 'globex', 0);"
        "INSERT INTO ai_call_keys (organization_id, idempotency_key, call_id, call_created_at, payload_hash) "
        "VALUES ('globex', 'openai:r1', 3, '2025-01-21 09:00Z', '\\x04');"
    )

    down = alembic(empty_db, "downgrade", "0024")
    assert down.returncode == 0, down.stderr
    assert (psql(CALLS), psql(ROLLUPS)) == (before[0] + "\n3|globex|0.000000", before[1])
    # One row per key again: the oldest call keeps 'openai:r1'; every call is still there.
    assert psql("SELECT idempotency_key, call_id FROM ai_call_keys ORDER BY call_id;") == (
        "openai:r1|1\nopenai:r2|2\nopenai:gone|99"
    )
    assert psql(KEY_OF.format("pk_ai_calls")) == "id,created_at"
    assert psql(KEY_OF.format("pk_ai_call_keys")) == "idempotency_key"
    assert psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'uq_api_keys_key_id';") == "1"

    again = alembic(empty_db, "upgrade", "head")
    assert again.returncode == 0, again.stderr
