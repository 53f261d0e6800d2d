"""Operation, main table and normalised text, from the statements the repositories really send."""

from __future__ import annotations

import pytest

from persistence.observe.statements import describe, normalise


@pytest.mark.parametrize(
    ("sql", "operation", "table"),
    [
        ("SELECT claims.id FROM claims WHERE claims.id = $1::UUID", "SELECT", "claims"),
        ("select 1", "SELECT", None),
        ("SELECT * FROM unnest($1) AS u JOIN claims ON true", "SELECT", "claims"),
        ("SELECT count(*) FROM (SELECT a FROM b) AS s", "SELECT", "b"),
        ('SELECT x FROM "Odd ""Name"""', "SELECT", 'Odd "Name"'),
        ("SELECT a FROM public.claims", "SELECT", "claims"),
        # The audited writes: a data-modifying CTE; the first write names the operation and table.
        (
            "WITH _w_new AS (INSERT INTO claims (id) VALUES (DEFAULT) RETURNING claims.id), "
            "_w_audit AS (INSERT INTO audit_log (entity_id) SELECT n.id FROM _w_new AS n) SELECT 1",
            "INSERT",
            "claims",
        ),
        (
            "WITH _w_old AS (SELECT c.id FROM claims AS c WHERE c.id = $1 FOR UPDATE OF claims), "
            "_w_new AS (INSERT INTO claims (id) VALUES ($2) ON CONFLICT ON CONSTRAINT k DO UPDATE SET "
            "content = excluded.content) SELECT 1",
            "INSERT",
            "claims",
        ),
        (
            "WITH _w_old AS (SELECT claims.id FROM claims FOR UPDATE), _w_new AS (UPDATE claims SET "
            "content=$5 FROM _w_old WHERE claims.id = _w_old.id) SELECT 1",
            "UPDATE",
            "claims",
        ),
        (
            "WITH _w_old AS (DELETE FROM claims WHERE claims.id = $5 RETURNING claims.id) SELECT 1",
            "DELETE",
            "claims",
        ),
        ("WITH t AS (SELECT 1 FROM verification_results) SELECT * FROM t", "SELECT", "verification_results"),
        ("update ai_calls set x = 1", "UPDATE", "ai_calls"),
        ("  -- note\n/* c */ DELETE FROM ONLY x.audit_log", "DELETE", "audit_log"),
        ("DO $$ BEGIN RAISE EXCEPTION 'x'; END $$", "DO", None),
        ("BEGIN", "BEGIN", None),
    ],
)
def test_operation_and_table(sql: str, operation: str, table: str | None) -> None:
    info = describe(sql)
    assert (info.operation, info.table) == (operation, table)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 'sk-live-123', E'it''s', 42, -3.5e2 FROM t", "SELECT ?, ?, ?, ? FROM t"),
        ("SELECT $1::INT, t1.x, col2 FROM t1", "SELECT $1::INT, t1.x, col2 FROM t1"),
        ("SELECT $tag$secret body$tag$, $$another$$", "SELECT ?, ?"),
        ("SELECT a\n   FROM b   WHERE c IN ($1, $2,  $3)", "SELECT a FROM b WHERE c IN (?, ...)"),
    ],
)
def test_normalise_removes_every_literal(sql: str, expected: str) -> None:
    assert normalise(sql) == expected


def test_long_statements_are_cut() -> None:
    assert len(normalise("SELECT " + "a, " * 5000 + "b")) <= 4004
