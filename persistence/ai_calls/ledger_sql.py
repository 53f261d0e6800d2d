"""The AI-call ledger's SQL and row shapes: the one-statement `log_call` CTE, the COPY column lists,
the id draw, and the exact `get_stats` query (rollups for whole hours, the ledger at the edges).

Kept apart from `logger.py` (the `AICallLogger` class that runs them) so the statements can be read,
reviewed and benchmarked on their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from persistence.advisory import advisory_key
from persistence.ai_calls.record import AICallRecord, tenant_of
from persistence.ai_calls.rollups import PENDING_ROWS

_CALL_COLUMNS = (
    "id", "created_at", "provider", "model", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "usage", "cost_usd", "computed_cost_usd", "cost_source",
    "price_id", "latency_ms", "status", "error_class", "customer_id", "organization_id", "product_id",
    "environment", "request_id", "trace_id", "cache_write_1h_tokens",
)  # fmt: skip
_KEY_COLUMNS = ("organization_id", "idempotency_key", "call_id", "call_created_at", "payload_hash")
_DELTA_COLUMNS = (
    "hour", "provider", "model", "organization_id", "customer_id", "product_id", "environment",
    "calls", "error_calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "total_tokens", "cost_usd", "computed_cost_usd", "latency_ms_sum", "latency_count",
    "cache_write_1h_tokens", "unpriced_calls", "unpriced_tokens",
)  # fmt: skip
# (cost_usd, computed_cost_usd, cost_source, price_id) of a call: a priced `Quote`, or `UNPRICED`.
Cost = tuple[Decimal | None, Decimal | None, str, int | None]
# A call with no price in force and no cost given: stored, with no cost at all (revision 0009).
UNPRICED: Cost = (None, None, "unpriced", None)

# $1 key, $2 hash, $3.. the row (without id), then $25 hour, $26 error_calls, $27 total_tokens,
# $28 cache_write_1h_tokens, $29 the price book's `vendor_prices_version` (NULL: unknown). When the
# table's version differs, nothing is written and the one row returned has a NULL id: the logger
# reloads its prices and runs the call again (prices changed since they were loaded). An unpriced
# call ($14) adds 0 to the delta's cost and 1 to its unpriced count. $20 is the organization ('' for
# none: `tenant_of`): the key is per organization, and every row written is that one tenant's.
LOG_CALL = """
WITH existing AS (
    SELECT call_id, payload_hash FROM ai_call_keys WHERE organization_id = $20 AND idempotency_key = $1
), stale AS (
    SELECT 1 FROM vendor_prices_version WHERE version <> $29::bigint AND NOT EXISTS (SELECT 1 FROM existing)
), ins AS (
    INSERT INTO ai_calls (created_at, provider, model, input_tokens, output_tokens, cache_read_tokens,
                          cache_write_tokens, reasoning_tokens, usage, cost_usd, computed_cost_usd,
                          cost_source, price_id, latency_ms, status, error_class, customer_id,
                          organization_id, product_id, environment, request_id, trace_id,
                          cache_write_1h_tokens)
    SELECT $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22,
           $23, $24, $28
     WHERE NOT EXISTS (SELECT 1 FROM existing) AND NOT EXISTS (SELECT 1 FROM stale)
    RETURNING id
), k AS (
    INSERT INTO ai_call_keys (organization_id, idempotency_key, call_id, call_created_at, payload_hash)
    SELECT $20, $1, id, $3, $2 FROM ins
), d AS (
    INSERT INTO ai_call_usage_deltas (hour, provider, model, organization_id, customer_id, product_id,
                                      environment, calls, error_calls, input_tokens, output_tokens,
                                      cache_read_tokens, cache_write_tokens, reasoning_tokens,
                                      total_tokens, cost_usd, computed_cost_usd, latency_ms_sum,
                                      latency_count, cache_write_1h_tokens, unpriced_calls, unpriced_tokens)
    SELECT $25, $4, $5, $20, $19, $21, $22, 1, $26, $6, $7, $8, $9, $10, $27, coalesce($12, 0), $13,
           coalesce($16, 0), ($16 IS NOT NULL)::int, $28, ($14 = 'unpriced')::int,
           CASE WHEN $14 = 'unpriced' THEN $27::bigint ELSE 0 END
      FROM ins
)
SELECT id, true AS new, true AS same FROM ins
UNION ALL
SELECT call_id, false, payload_hash = $2 FROM existing
UNION ALL
SELECT NULL, false, true FROM stale
"""

# A batch's keys (organization, key) when some are stored already: the new ones are returned.
_INSERT_KEYS = """
INSERT INTO ai_call_keys (organization_id, idempotency_key, call_id, call_created_at, payload_hash)
SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::bigint[], $4::timestamptz[], $5::bytea[])
ON CONFLICT (organization_id, idempotency_key) DO NOTHING
RETURNING organization_id, idempotency_key
"""
_KEY_HASHES = """
SELECT k.organization_id, k.idempotency_key, k.payload_hash
  FROM unnest($1::varchar[], $2::varchar[]) AS u(organization_id, idempotency_key)
  JOIN ai_call_keys k USING (organization_id, idempotency_key)
"""
# A batch's calls as one INSERT (the ids drawn by `_NEXT_IDS`): the row-level security path, where
# PostgreSQL refuses COPY FROM into a table under RLS. The arrays are `_CALL_COLUMNS` in order.
_INSERT_CALLS = f"""
INSERT INTO ai_calls ({", ".join(_CALL_COLUMNS)})
SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::varchar[], $4::varchar[], $5::int[], $6::int[],
                     $7::int[], $8::int[], $9::int[], $10::jsonb[], $11::numeric[], $12::numeric[],
                     $13::varchar[], $14::bigint[], $15::int[], $16::varchar[], $17::varchar[], $18::varchar[],
                     $19::varchar[], $20::varchar[], $21::varchar[], $22::varchar[], $23::varchar[], $24::int[])
"""  # noqa: S608 (constant column names only)
# A batch's ids, drawn under an advisory lock held for this one statement (it runs in autocommit),
# so concurrent batches get one contiguous run each and record one pending range each. Writers that
# use the column default (`log_call`, seeding, plain INSERTs) can still take values in between:
# the ranges recorded are the runs of the ids the batch used, so they never cover another's row.
_IDS_LOCK = advisory_key("persistence.ai_calls.ids")
_NEXT_IDS = (
    "WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock($3)) "
    "SELECT array_agg(nextval($1::regclass)) FROM lock, generate_series(1, $2)"
)
_SEQUENCE = "SELECT pg_get_serial_sequence('ai_calls', 'id')"

# A ledger row as a rollup row: an unpriced call counts 0 cost, 1 unpriced call and its tokens.
_ROW_AS_ROLLUP = (
    "{c}provider, 1, coalesce({c}cost_usd, 0), {c}total_tokens, coalesce({c}latency_ms, 0), "
    "({c}latency_ms IS NOT NULL)::int, ({c}cost_source = 'unpriced')::int, "
    "CASE WHEN {c}cost_source = 'unpriced' THEN {c}total_tokens ELSE 0 END"
)
_STATS = f"""
SELECT provider, sum(calls)::bigint, coalesce(sum(cost_usd), 0), sum(total_tokens)::bigint,
       sum(latency_ms_sum)::bigint, sum(latency_count)::bigint, sum(unpriced_calls)::bigint,
       sum(unpriced_tokens)::bigint
  FROM (
    SELECT provider, calls, cost_usd, total_tokens, latency_ms_sum, latency_count, unpriced_calls, unpriced_tokens
      FROM ai_call_model_hourly WHERE hour >= $3 AND hour < $4
    UNION ALL
    SELECT provider, calls, cost_usd, total_tokens, latency_ms_sum, latency_count, unpriced_calls, unpriced_tokens
      FROM ai_call_usage_deltas WHERE hour >= $3 AND hour < $4
    UNION ALL
    SELECT {_ROW_AS_ROLLUP.format(c="c.")}
      FROM ai_call_pending_batches {PENDING_ROWS} WHERE c.created_at >= $3 AND c.created_at < $4
    UNION ALL
    SELECT {_ROW_AS_ROLLUP.format(c="")}
      FROM ai_calls WHERE created_at >= $1 AND created_at < $3
    UNION ALL
    SELECT {_ROW_AS_ROLLUP.format(c="")}
      FROM ai_calls WHERE created_at >= $4 AND created_at < $2
  ) parts
 GROUP BY provider
 ORDER BY provider
"""  # noqa: S608 (constant SQL only)


def _key_rows(records: list[AICallRecord], ids: list[int]) -> Iterator[tuple[Any, ...]]:
    for r, i in zip(records, ids, strict=True):
        yield tenant_of(r), r.idempotency_key, i, r.created_at, r.payload_hash


def _call_rows(records: list[AICallRecord], ids: list[int], quotes: list[Cost]) -> Iterator[tuple[Any, ...]]:
    for r, i, q in zip(records, ids, quotes, strict=True):
        yield (
            i, r.created_at, r.provider, r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens,
            r.cache_write_tokens, r.reasoning_tokens, r.usage_json, q[0], q[1], q[2], q[3], r.latency_ms,
            r.status, r.error_class, r.customer_id, tenant_of(r), r.product_id, r.environment,
            r.request_id, r.trace_id, r.cache_write_1h_tokens,
        )  # fmt: skip
