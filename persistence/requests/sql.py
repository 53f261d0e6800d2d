# ruff: noqa: S608  (statements assembled from constant fragments only; every value is a $n parameter)
"""The statements of `persistence.requests`: every transition is one statement.

A transition names its allowed source states in its WHERE clause (and, for a worker, the lease it
holds: `lease_id = $lease AND lease_until > now`), so two racing transitions are serialised by the
row lock and the loser matches nothing: it is refused, never applied on top. A request reaching a
terminal state leaves `request_inflight` in the statement that finishes it: DELETE ... RETURNING
feeds the INSERT into `request_history`, whose RETURNING feeds an append to `request_stats_deltas`
(no shared row is updated: `FOLD_STATS` adds the deltas to `request_stats_daily` later, and the
`request_stats` view adds the unfolded ones, so the statistics are current at every commit).

`$now` parameters are NULL in production (the server's clock) and a timestamp in tests that drive
time explicitly.

Every status change (and a cancellation request) also appends its `request_transitions` row in the
same statement (`_transition`): a refused transition matches no row and so writes none, and no
change commits without its row. Its `at` is the server's clock (the column default), never `$now`.
"""

from __future__ import annotations

from persistence.models.requests import STATS_MEASURES

_HISTORY_COLUMNS = (
    "company_id, request_id, created_at, user_id, model_id, prompt, status, updated_at, queued_at, "
    "processing_at, completed_at, failed_at, cancelled_at, expired_at, cancel_requested_at, "
    "processing_time_ms, estimated_tokens, prompt_tokens, completion_tokens, total_tokens, error_message, "
    "result_sha256, attempts, worker_id, reservation_id, ai_call_id"
)
RECORD_COLUMNS = _HISTORY_COLUMNS
_MEASURES = ", ".join(STATS_MEASURES)
_TRANSITION_COLUMNS = (
    "company_id, request_id, created_at, action, from_status, to_status, attempt, worker_id, lease_id, actor"
)


def _transition(
    name: str,
    rows: str,
    action: str,
    from_status: str,
    to_status: str,
    *,
    worker: str = "worker_id",
    lease: str = "lease_id",
    actor: str = "NULL::varchar",
    where: str = "",
) -> str:
    """A CTE appending one `request_transitions` row per row of `rows` (company_id, request_id,
    created_at and attempts are read from it; the other values are SQL expressions over it)."""
    return f"""{name} AS (
    INSERT INTO request_transitions ({_TRANSITION_COLUMNS})
    SELECT company_id, request_id, created_at, '{action}', {from_status}, {to_status}, attempts, {worker},
           {lease}, {actor}
      FROM {rows}{where}
)"""


def _at(param: str) -> str:
    return f"coalesce({param}::timestamptz, now())"


def _finish(
    moved: str,
    *,
    action: str,
    at: str,
    status: str,
    timed: bool,
    prompt_tokens: str = "NULL::integer",
    completion_tokens: str = "NULL::integer",
    total_tokens: str = "NULL::integer",
    error: str = "NULL::text",
    sha: str = "NULL::bytea",
    call: str = "NULL::bigint",
    actor: str = "NULL::varchar",
    before: str = "",
    select: str = f"SELECT {_HISTORY_COLUMNS} FROM done",
) -> str:
    """A finishing statement: the rows `moved` returns (deleted from `request_inflight`) become
    history rows in state `status` (an expression over `m`) at `at`, counted in the rollup deltas, each
    with its `request_transitions` row (`action`, from the state it left)."""
    elapsed = (
        "CASE WHEN m.processing_at IS NOT NULL "
        "THEN round(extract(epoch FROM f.at - m.processing_at) * 1000)::integer END"
        if timed
        else "NULL::integer"
    )
    return f"""
WITH {before}moved AS ({moved}),
done AS (
    INSERT INTO request_history ({_HISTORY_COLUMNS})
    SELECT m.company_id, m.request_id, m.created_at, m.user_id, m.model_id, m.prompt, f.status, f.at,
           m.queued_at, m.processing_at,
           CASE WHEN f.status = 'completed' THEN f.at END, CASE WHEN f.status = 'failed' THEN f.at END,
           CASE WHEN f.status = 'cancelled' THEN f.at END, CASE WHEN f.status = 'expired' THEN f.at END,
           m.cancel_requested_at, {elapsed}, m.estimated_tokens, {prompt_tokens}, {completion_tokens},
           {total_tokens}, {error}, {sha}, m.attempts, m.worker_id, m.reservation_id, {call}
      FROM moved m CROSS JOIN LATERAL (SELECT CAST({status} AS varchar(20)) AS status, {at} AS at) f
    RETURNING {_HISTORY_COLUMNS}
),
{_transition("audited", "moved m", action, "m.status", f"CAST({status} AS varchar(20))", actor=actor)},
rolled AS (
    INSERT INTO request_stats_deltas (company_id, day, user_id, model_id, {_MEASURES})
    SELECT company_id, (created_at AT TIME ZONE 'UTC')::date, user_id, model_id, count(*),
           count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE status = 'expired'),
           coalesce(sum(processing_time_ms), 0), count(processing_time_ms), coalesce(sum(total_tokens), 0)
      FROM done
     GROUP BY 1, 2, 3, 4
)
{select}
"""


# An in-flight row as a record (the columns only finished requests have are NULL), as the view has it.
_INFLIGHT_RECORD = (
    "company_id, request_id, created_at, user_id, model_id, prompt, status, updated_at, queued_at, "
    "processing_at, NULL::timestamptz AS completed_at, NULL::timestamptz AS failed_at, "
    "NULL::timestamptz AS cancelled_at, NULL::timestamptz AS expired_at, cancel_requested_at, "
    "NULL::integer AS processing_time_ms, estimated_tokens, NULL::integer AS prompt_tokens, "
    "NULL::integer AS completion_tokens, NULL::integer AS total_tokens, NULL::text AS error_message, "
    "NULL::bytea AS result_sha256, attempts, worker_id, reservation_id, NULL::bigint AS ai_call_id"
)

# $1 company, $2 request, $3 user, $4 model, $5 prompt, $6 estimated tokens, $7 max attempts, $8 now,
# $9 quota reservation, $10 actor. An id already in flight violates the primary key; one already
# finished inserts nothing (a retried create must not start the request again).
CREATE = f"""
WITH created AS (
INSERT INTO request_inflight (company_id, request_id, user_id, model_id, prompt, estimated_tokens,
                              max_attempts, created_at, updated_at, queued_at, reservation_id)
SELECT $1::varchar, $2::uuid, $3, $4, $5, $6, $7, t.at, t.at, t.at, $9 FROM (SELECT {_at("$8")} AS at) t
 WHERE NOT EXISTS (SELECT 1 FROM request_history WHERE company_id = $1 AND request_id = $2)
RETURNING {_INFLIGHT_RECORD}
),
{_transition("audited", "created", "create", "NULL", "'queued'", worker="NULL", lease="NULL", actor="$10::varchar")}
SELECT * FROM created
"""

_CLAIMED = (
    "i.company_id, i.request_id, i.user_id, i.model_id, i.prompt, i.estimated_tokens, i.attempts, "
    "i.max_attempts, i.worker_id, i.lease_id, i.lease_until, i.created_at, i.cancel_requested_at, i.reservation_id"
)


def _take(action: str, where_rows: str, worker: str, lease: str, now: str) -> str:
    return f"""
WITH p AS MATERIALIZED ({where_rows}),
taken AS (
UPDATE request_inflight i
   SET status = 'processing', processing_at = t.at, updated_at = t.at, heartbeat_at = t.at,
       lease_id = gen_random_uuid(), lease_until = t.at + make_interval(secs => {lease}::float8),
       worker_id = {worker}, attempts = i.attempts + 1
  FROM p, (SELECT {_at(now)} AS at) t
 WHERE i.company_id = p.company_id AND i.request_id = p.request_id AND i.status = 'queued'
RETURNING {_CLAIMED}, p.queued_at
),
{_transition("audited", "taken", action, "'queued'", "'processing'")}
SELECT * FROM taken ORDER BY queued_at, request_id
"""


# $1 worker, $2 limit, $3 lease seconds, $4 now. Oldest queued first; rows other workers hold are skipped.
CLAIM = _take(
    "claim",
    "SELECT company_id, request_id, queued_at FROM request_inflight WHERE status = 'queued' "
    "ORDER BY queued_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    "$1",
    "$3",
    "$4",
)

# $1 company, $2 request, $3 worker, $4 lease seconds, $5 now: a request an external queue delivered.
START = _take(
    "start",
    "SELECT $1::varchar AS company_id, $2::uuid AS request_id, NULL::timestamptz AS queued_at",
    "$3",
    "$4",
    "$5",
)

# The state and lease guard is wrapped in `(...) IS TRUE` (same truth: NULL fails either way) so the
# planner can neither use it as an index condition nor prove the partial lease index's predicate
# from it: with statistics from a quiet moment (every lease_until NULL) it took the guard for
# selective and walked that index, whose entries of every request claimed since the last vacuum pile
# up under a long-open snapshot, instead of probing the primary key (tests/requests/test_plans.py).
_HELD = (
    "company_id = $1 AND request_id = $2 AND lease_id = $3 "
    "AND (status = 'processing' AND lease_until > {at}) IS TRUE"
)

# $1 company, $2 request, $3 lease, $4 lease seconds, $5 now
HEARTBEAT = f"""
UPDATE request_inflight
   SET lease_until = t.at + make_interval(secs => $4::float8), heartbeat_at = t.at
  FROM (SELECT {_at("$5")} AS at) t
 WHERE {_HELD.format(at="t.at")}
RETURNING lease_until, cancel_requested_at
"""

# $1 company, $2 request, $3 lease, $4 now, $5 worker: back to the queue (a worker shutting down).
# The row matched lease $3, which was issued to worker $5 alone: the transition names both.
RELEASE = f"""
WITH released AS (
UPDATE request_inflight
   SET status = 'queued', queued_at = t.at, updated_at = t.at, lease_id = NULL, lease_until = NULL,
       worker_id = NULL, heartbeat_at = NULL
  FROM (SELECT {_at("$4")} AS at) t
 WHERE {_HELD.format(at="t.at")}
RETURNING company_id, request_id, created_at, attempts
),
{_transition("audited", "released", "release", "'processing'", "'queued'", worker="$5::varchar", lease="$3::uuid")}
SELECT request_id FROM released
"""

_DELETE_HELD = f"DELETE FROM request_inflight WHERE {_HELD.format(at=_at('$4'))} RETURNING *"

# $1 company, $2 request, $3 lease, $4 now, $5 prompt tokens, $6 completion tokens, $7 total tokens,
# $8 sha-256, $9 the ledger's call id
COMPLETE = _finish(
    _DELETE_HELD,
    action="complete",
    at=_at("$4"),
    status="'completed'",
    timed=True,
    prompt_tokens="$5::integer",
    completion_tokens="$6::integer",
    total_tokens="$7::integer",
    sha="$8::bytea",
    call="$9::bigint",
)

# $1 company, $2 request, $3 lease, $4 now, $5 error, $6 prompt tokens, $7 completion tokens, $8 total tokens,
# $9 the ledger's call id
FAIL = _finish(
    _DELETE_HELD,
    action="fail",
    at=_at("$4"),
    status="'failed'",
    timed=True,
    prompt_tokens="$6::integer",
    completion_tokens="$7::integer",
    total_tokens="$8::integer",
    error="$5::text",
    call="$9::bigint",
)

# $1 company, $2 request, $3 lease, $4 now, $5 the ledger's call id: the worker stopped because
# cancellation was requested.
ACKNOWLEDGE_CANCEL = _finish(
    _DELETE_HELD,
    action="acknowledge_cancel",
    at=_at("$4"),
    status="'cancelled'",
    timed=True,
    call="$5::bigint",
)

# $1 company, $2 request, $3 now, $4 actor. A queued request is cancelled at once; a processing one is
# flagged (its worker sees the flag on heartbeat), its transition written the first time only. Both
# branches in one statement, one snapshot.
CANCEL = _finish(
    "DELETE FROM request_inflight WHERE company_id = $1 AND request_id = $2 AND status = 'queued' RETURNING *",
    action="cancel",
    at=_at("$3"),
    status="'cancelled'",
    timed=False,
    actor="$4::varchar",
    before=f"""flagging AS MATERIALIZED (
    SELECT company_id, request_id, cancel_requested_at IS NULL AS first FROM request_inflight
     WHERE company_id = $1 AND request_id = $2 AND status = 'processing'
       FOR UPDATE
),
flagged AS (
    UPDATE request_inflight i SET cancel_requested_at = coalesce(i.cancel_requested_at, {_at("$3")})
      FROM flagging g
     WHERE i.company_id = g.company_id AND i.request_id = g.request_id
    RETURNING i.company_id, i.request_id, i.created_at, i.attempts, i.worker_id, i.lease_id, g.first
),
{
        _transition(
            "flag_audited",
            "flagged",
            "request_cancel",
            "'processing'",
            "'processing'",
            actor="$4::varchar",
            where=" WHERE first",
        )
    },
""",
    select="SELECT (SELECT count(*) FROM flagged) AS flagged, d.* FROM (SELECT 1) one LEFT JOIN done d ON true",
)

# $1 older than (seconds), $2 limit, $3 now: queued requests nobody started in time.
EXPIRE_QUEUED = _finish(
    """DELETE FROM request_inflight i USING stale p
     WHERE i.company_id = p.company_id AND i.request_id = p.request_id AND i.status = 'queued'
    RETURNING i.*""",
    action="expire",
    at=_at("$3"),
    status="'expired'",
    timed=False,
    before=f"""stale AS MATERIALIZED (
    SELECT company_id, request_id FROM request_inflight
     WHERE status = 'queued' AND queued_at < {_at("$3")} - make_interval(secs => $1::float8)
     ORDER BY queued_at LIMIT $2 FOR UPDATE SKIP LOCKED
),
""",
)

# $1 limit, $2 now. Only leases past their deadline, re-checked on the locked row: a request whose
# worker finished (or heartbeated) first no longer matches. Re-queued while attempts remain and no
# cancellation was requested; otherwise failed (or cancelled) into the history.
_EXPIRED = f"i.status = 'processing' AND i.lease_until < {_at('$2')}"
SWEEP = _finish(
    f"""DELETE FROM request_inflight i USING expired e
     WHERE i.company_id = e.company_id AND i.request_id = e.request_id AND {_EXPIRED}
       AND (i.attempts >= i.max_attempts OR i.cancel_requested_at IS NOT NULL)
    RETURNING i.*""",
    action="sweep",
    at=_at("$2"),
    status="CASE WHEN m.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE 'failed' END",
    timed=False,
    error="CASE WHEN m.cancel_requested_at IS NULL "
    "THEN 'lease expired on attempt ' || m.attempts || ' of ' || m.max_attempts || ' (' || m.worker_id || ')' END",
    before=f"""expired AS MATERIALIZED (
    SELECT company_id, request_id, worker_id, lease_id FROM request_inflight i
     WHERE {_EXPIRED} ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED
),
requeued AS (
    UPDATE request_inflight i
       SET status = 'queued', queued_at = {_at("$2")}, updated_at = {_at("$2")}, lease_id = NULL,
           lease_until = NULL, worker_id = NULL, heartbeat_at = NULL
      FROM expired e
     WHERE i.company_id = e.company_id AND i.request_id = e.request_id AND {_EXPIRED}
       AND i.attempts < i.max_attempts AND i.cancel_requested_at IS NULL
    RETURNING i.company_id, i.request_id, i.created_at, i.attempts, e.worker_id, e.lease_id
),
{_transition("requeue_audited", "requeued", "sweep", "'processing'", "'queued'")},
""",
    select="SELECT 'requeued' AS outcome, company_id, request_id, NULL::varchar AS status FROM requeued "
    "UNION ALL SELECT 'finished', company_id, request_id, status FROM done",
)

# $1 company, $2 request: what a refused transition found (the error path only).
CURRENT = """
SELECT status, lease_id, lease_until, now() AS server_now FROM request_inflight
 WHERE company_id = $1 AND request_id = $2
UNION ALL
SELECT status, NULL, NULL, now() FROM request_history WHERE company_id = $1 AND request_id = $2
"""

# $1 company, $2 request: seed 001's status check (the lead adds the join to `results`).
# Seed 001's status check: the request and its result (or its error) in one query.
STATUS = f"""
SELECT {", ".join("r." + c.strip() for c in RECORD_COLUMNS.split(","))},
       res.kind AS result_kind, res.mime_type AS result_mime_type, res.size_bytes AS result_size_bytes,
       res.inline_text AS result_text, res.inline_bytes AS result_bytes
  FROM requests r
  LEFT JOIN results res ON res.company_id = r.company_id AND res.sha256 = r.result_sha256
 WHERE r.company_id = $1 AND r.request_id = $2
"""

# $1 company, $2 user, $3 limit [, $4 created_at, $5 request_id of the last row seen]
RECENT_FIRST = f"""
SELECT {RECORD_COLUMNS} FROM requests WHERE company_id = $1 AND user_id = $2
 ORDER BY created_at DESC, request_id DESC LIMIT $3
"""
RECENT_AFTER = f"""
SELECT {RECORD_COLUMNS} FROM requests WHERE company_id = $1 AND user_id = $2
   AND (created_at, request_id) < ($4::timestamptz, $5::uuid)
 ORDER BY created_at DESC, request_id DESC LIMIT $3
"""

# $1 company, $2 first day, $3 day after the last, $4 user or NULL, $5 model or NULL
STATS = """
SELECT day, user_id, model_id, request_count, avg_processing_time, failure_count, completed_count,
       cancelled_count, expired_count, total_tokens
  FROM request_stats
 WHERE company_id = $1 AND day >= $2 AND day < $3
   AND ($4::varchar IS NULL OR user_id = $4) AND ($5::varchar IS NULL OR model_id = $5)
 ORDER BY day, user_id, model_id
"""

# $1 most deltas to fold. SKIP LOCKED: concurrent folds take disjoint deltas and never wait; each
# delta is deleted (so added) by exactly one fold. Rollup rows are upserted in key order, so two
# folds lock them in the same order.
FOLD_STATS = f"""
WITH picked AS (
    SELECT company_id, id FROM request_stats_deltas LIMIT $1 FOR UPDATE SKIP LOCKED
), d AS (
    DELETE FROM request_stats_deltas x USING picked p
     WHERE x.company_id = p.company_id AND x.id = p.id
    RETURNING x.company_id, x.day, x.user_id, x.model_id, {", ".join("x." + m for m in STATS_MEASURES)}
), folded AS (
    INSERT INTO request_stats_daily AS s (company_id, day, user_id, model_id, {_MEASURES})
    SELECT company_id, day, user_id, model_id, {", ".join(f"sum({m})" for m in STATS_MEASURES)}
      FROM d GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (company_id, day, user_id, model_id) DO UPDATE SET
           {", ".join(f"{m} = s.{m} + EXCLUDED.{m}" for m in STATS_MEASURES)}
    RETURNING 1
)
SELECT (SELECT count(*) FROM d) AS deltas, (SELECT count(*) FROM folded) AS rows
"""

HEALTH = """
SELECT (SELECT count(*) FROM request_inflight WHERE status = 'queued') AS queued,
       (SELECT count(*) FROM request_inflight WHERE status = 'processing') AS processing,
       (SELECT min(queued_at) FROM request_inflight WHERE status = 'queued') AS oldest_queued_at,
       s.n_live_tup AS live_tuples, s.n_dead_tup AS dead_tuples, s.last_autovacuum, s.last_vacuum,
       s.autovacuum_count, o.pid AS oldest_snapshot_pid, o.xmin_age AS oldest_snapshot_xid_age,
       o.xact_age AS oldest_snapshot_xact_age, o.state AS oldest_snapshot_state, now() AS server_now
  FROM pg_stat_user_tables s
  LEFT JOIN LATERAL (
        SELECT pid, age(backend_xmin) AS xmin_age, now() - xact_start AS xact_age, state
          FROM pg_stat_activity
         WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
           -- what holds this table's dead rows: sessions of this database (vacuum ignores other
           -- databases' snapshots and other vacuums) and replication feedback (walsenders)
           AND (datname = current_database() OR backend_type = 'walsender')
           AND backend_type IS DISTINCT FROM 'autovacuum worker'
         ORDER BY age(backend_xmin) DESC, xact_start
         LIMIT 1) o ON true
 WHERE s.relid = 'request_inflight'::regclass
"""

# $1 company, $2 request: its transitions, oldest first (the audit of its status changes).
TRANSITIONS = """
SELECT at, action, from_status, to_status, attempt, worker_id, lease_id, actor
  FROM request_transitions WHERE company_id = $1 AND request_id = $2
 ORDER BY at
"""

# $1 company, $2 request: the request's ledger call (the link is the request's `ai_call_id`; NULL
# columns of `c` when it has none). One row when the request exists.
AI_CALL = """
SELECT r.ai_call_id AS linked, c.id, c.created_at, c.provider, c.model, c.status, c.input_tokens,
       c.output_tokens, c.total_tokens, c.cost_usd, c.cost_source, c.latency_ms, c.request_id, c.trace_id
  FROM requests r LEFT JOIN ai_calls c ON c.id = r.ai_call_id
 WHERE r.company_id = $1 AND r.request_id = $2
"""

# $1 company, $2 the ledger's call id: the requests that recorded that call's outcome (several when
# one call answered several requests, e.g. deduplicated ones). The partial index finds them.
FOR_AI_CALL = f"""
SELECT {RECORD_COLUMNS} FROM request_history WHERE company_id = $1 AND ai_call_id = $2
 ORDER BY created_at, request_id
"""
