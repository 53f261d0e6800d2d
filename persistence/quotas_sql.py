"""The SQL of `persistence.quotas`, one statement per operation (asyncpg positional parameters).

Why these shapes (PostgreSQL READ COMMITTED):
- Admission locks every applicable counter row with `SELECT ... ORDER BY id FOR UPDATE`: a
  locking read returns the *latest* committed version of each row after waiting, so the decision
  is taken on exact values, and the fixed lock order (counter id) rules out deadlocks between
  admissions and settlements, which lock the same way before touching holds.
- The UPDATE that adds the hold runs only when every limit has room (`verdict`), so a request
  refused by one limit writes nothing to the others.
- A counter row that does not exist yet (a new period) cannot be locked: the statement then
  inserts it (`ON CONFLICT DO NOTHING`), reserves nothing and says `missing`; the caller runs the
  statement again. That happens once per subject and period, and is what replaces a reset job.
- Expired holds of the locked counters are deleted and subtracted in the same statement, so a
  crashed caller's reservation frees its room at the next admission without any job. Hold rows
  are only ever deleted by a statement holding their counter's lock, so each is freed once.
"""

from __future__ import annotations

# $1 company_id, $2 user_id (NULL: company limits only), $3 now (NULL: the server's now()).
# One row per applicable limit: its counter key, its current period (for a rolling window: the
# current bucket, 1/60 of the window) and `window_from`, the first period_start it counts (a
# calendar period counts one row, a rolling window its 60 latest buckets).
_KEYS = """
clock AS (
    SELECT coalesce($3::timestamptz, now()) AS now
), limits AS (
    SELECT 'user'::text AS scope, q.user_id::text AS subject_id, m.metric::text AS metric,
           q.reset_frequency::text AS period, q.time_zone::text AS time_zone, q.window_seconds,
           CASE m.metric WHEN 'requests' THEN q.request_limit::numeric
                         WHEN 'tokens' THEN q.token_limit::numeric
                         ELSE q.cost_limit_usd END AS lim
    FROM quotas q CROSS JOIN (VALUES ('requests'), ('tokens'), ('cost_usd')) AS m (metric)
    WHERE q.company_id = $1 AND q.user_id = $2::text AND q.enabled
    UNION ALL
    SELECT 'company', '', cq.metric, cq.period, cq.time_zone, cq.window_seconds, cq.limit_value
    FROM company_quotas cq
    WHERE cq.company_id = $1 AND cq.enabled
), keys AS (
    SELECT l.scope, l.subject_id, l.metric, l.period, l.time_zone, l.lim, l.window_seconds,
           p.period_start, p.period_end,
           CASE WHEN l.window_seconds IS NULL THEN p.period_start
                ELSE p.period_start - make_interval(secs => l.window_seconds - l.window_seconds / 60)
           END AS window_from
    FROM limits l
    CROSS JOIN clock
    CROSS JOIN LATERAL (
        SELECT CASE l.period WHEN 'hourly' THEN 'hour' WHEN 'daily' THEN 'day'
                             WHEN 'weekly' THEN 'week' ELSE 'month' END AS unit,
               date_trunc(CASE l.period WHEN 'hourly' THEN 'hour' WHEN 'daily' THEN 'day'
                                        WHEN 'weekly' THEN 'week' ELSE 'month' END,
                          clock.now AT TIME ZONE l.time_zone) AS local_start,
               to_timestamp(floor(extract(epoch FROM clock.now) / (l.window_seconds / 60))
                            * (l.window_seconds / 60)) AS bucket_start
    ) b
    CROSS JOIN LATERAL (
        SELECT CASE WHEN l.window_seconds IS NULL THEN b.local_start AT TIME ZONE l.time_zone
                    ELSE b.bucket_start END AS period_start,
               CASE WHEN l.window_seconds IS NULL
                    THEN (b.local_start + ('1 ' || b.unit)::interval) AT TIME ZONE l.time_zone
                    ELSE b.bucket_start + make_interval(secs => l.window_seconds / 60) END AS period_end
    ) p
)"""

# The current period's row; for a rolling window its buckets from `window_from` on (a bucket later
# than now exists only when callers' clocks disagree: counting it keeps the limit exact) and its
# anchor row (period_start -infinity; see ADMIT).
_IN_WINDOW = """c.scope = w.scope AND c.subject_id = w.subject_id AND c.metric = w.metric
                 AND c.period = w.period
                 AND (c.period_start = w.period_start
                      OR (w.window_seconds IS NOT NULL
                          AND (c.period_start >= w.window_from OR c.period_start = '-infinity')))"""

# $4 requests, $5 tokens, $6 cost_usd (the estimate), $7 reservation id, $8 lease seconds.
#
# A rolling window sums several bucket rows, and a bucket row created by a transaction that
# committed after this statement's snapshot would be invisible to it (a locking read only refreshes
# rows it can see). So each rolling (subject, metric) has an anchor row (period_start -infinity)
# whose `version` every bucket creation bumps: admission locks the anchor too, and if the locked
# (latest) version differs from the one in its snapshot, a bucket may be missing from its view, so
# it reserves nothing and says `missing` (the caller runs it again on a fresh snapshot).
ADMIT = f"""
WITH {_KEYS}, wanted AS (
    SELECT k.*, CASE k.metric WHEN 'requests' THEN $4::numeric WHEN 'tokens' THEN $5::numeric
                              ELSE $6::numeric END AS amount
    FROM keys k
), cur AS (
    SELECT c.id, c.period_start, c.used, c.held, c.limit_override, c.version,
           c.period_start = w.period_start AS current, c.period_start = '-infinity' AS anchor,
           w.scope, w.subject_id, w.metric, w.period, w.amount
    FROM quota_counters c
    JOIN wanted w ON {_IN_WINDOW}
    WHERE c.company_id = $1
    ORDER BY c.id
    FOR UPDATE OF c
), seen AS (
    SELECT c.id, c.version FROM quota_counters c
    WHERE c.company_id = $1 AND c.id IN (SELECT id FROM cur WHERE cur.anchor)
), expired AS (
    DELETE FROM quota_holds h
    WHERE h.company_id = $1 AND h.counter_id IN (SELECT id FROM cur)
      AND h.expires_at <= (SELECT now FROM clock)
    RETURNING h.counter_id, h.amount
), reclaimed AS (
    SELECT counter_id, sum(amount) AS amount FROM expired GROUP BY counter_id
), buckets AS (
    SELECT cur.*, cur.held - coalesce(r.amount, 0) AS live_held, r.amount AS freed,
           sum(cur.used + cur.held - coalesce(r.amount, 0))
               OVER (PARTITION BY cur.scope, cur.subject_id, cur.metric, cur.period
                     ORDER BY cur.period_start) AS through
    FROM cur LEFT JOIN reclaimed r ON r.counter_id = cur.id
    WHERE NOT cur.anchor
), anchors AS (
    SELECT cur.id, cur.scope, cur.subject_id, cur.metric, cur.period, cur.version = s.version AS fresh
    FROM cur JOIN seen s ON s.id = cur.id
), per_limit AS (
    SELECT w.scope, w.subject_id, w.metric, w.period, w.window_from, w.period_start, w.period_end,
           w.amount, w.window_seconds, a.id AS anchor_id,
           coalesce(max(b.limit_override) FILTER (WHERE b.current), w.lim) AS lim,
           coalesce(sum(b.used), 0) AS used, coalesce(sum(b.live_held), 0) AS held,
           coalesce(bool_or(b.current), false) AS has_current,
           w.window_seconds IS NULL OR coalesce(bool_and(a.fresh), false) AS has_anchor
    FROM wanted w
    LEFT JOIN buckets b USING (scope, subject_id, metric, period)
    LEFT JOIN anchors a USING (scope, subject_id, metric, period)
    GROUP BY w.scope, w.subject_id, w.metric, w.period, w.window_from, w.period_start, w.period_end,
             w.amount, w.window_seconds, w.lim, a.id
), verdict AS (
    SELECT coalesce(bool_and(has_current AND has_anchor AND (lim IS NULL OR used + held + amount <= lim)),
                    true) AS admitted
    FROM per_limit
), bumped AS (
    UPDATE quota_counters c
    SET held = b.live_held + CASE WHEN v.admitted AND b.current THEN b.amount ELSE 0 END
    FROM buckets b CROSS JOIN verdict v
    WHERE c.company_id = $1 AND c.id = b.id
      AND ((v.admitted AND b.current AND b.amount > 0) OR b.freed IS NOT NULL)
    RETURNING c.id
), holds AS (
    INSERT INTO quota_holds (company_id, counter_id, reservation_id, amount, expires_at)
    SELECT $1, cur.id, $7, cur.amount, clock.now + make_interval(secs => $8)
    FROM cur CROSS JOIN verdict v CROSS JOIN clock
    WHERE v.admitted AND cur.current AND cur.amount > 0
    RETURNING counter_id
), reservation AS (
    INSERT INTO quota_reservations
        (company_id, id, user_id, counter_ids, requests, tokens, cost_usd, created_at, expires_at)
    SELECT $1, $7, coalesce($2::text, ''),
           coalesce((SELECT array_agg(id ORDER BY id) FROM cur WHERE cur.current), '{{}}'),
           $4, $5, $6, clock.now, clock.now + make_interval(secs => $8)
    FROM verdict v CROSS JOIN clock
    WHERE v.admitted
    RETURNING expires_at
), created AS (
    INSERT INTO quota_counters (company_id, scope, subject_id, metric, period, period_start, period_end)
    SELECT $1, p.scope, p.subject_id, p.metric, p.period, p.period_start, p.period_end
    FROM per_limit p
    WHERE NOT p.has_current
    UNION ALL
    SELECT $1, p.scope, p.subject_id, p.metric, p.period, '-infinity', 'infinity'
    FROM per_limit p
    WHERE p.window_seconds IS NOT NULL AND p.anchor_id IS NULL
    ON CONFLICT DO NOTHING
    RETURNING scope, subject_id, metric, period
), announced AS (
    UPDATE quota_counters c
    SET version = c.version + 1
    FROM per_limit p
    WHERE c.company_id = $1 AND c.id = p.anchor_id AND NOT p.has_current
      AND EXISTS (SELECT 1 FROM created n WHERE (n.scope, n.subject_id, n.metric, n.period)
                                              = (p.scope, p.subject_id, p.metric, p.period))
    RETURNING c.id
)
SELECT v.admitted, (SELECT expires_at FROM reservation) AS expires_at,
       p.scope, p.subject_id, p.metric, p.period, p.window_from AS period_start,
       p.period_end, p.amount, p.lim, p.used, p.held,
       p.scope IS NOT NULL AND NOT (p.has_current AND p.has_anchor) AS missing,
       CASE WHEN p.window_seconds IS NULL THEN p.period_end
            ELSE (SELECT min(b.period_start) + make_interval(secs => p.window_seconds)
                  FROM buckets b
                  WHERE (b.scope, b.subject_id, b.metric, b.period) = (p.scope, p.subject_id, p.metric, p.period)
                    AND p.used + p.held - b.through + p.amount <= p.lim) END AS frees_at
FROM verdict v
LEFT JOIN per_limit p ON true
ORDER BY p.scope DESC, p.metric, p.period
"""  # noqa: S608 (constant SQL only)


# The zone whose local dates file a user's usage in `usage`: the user's quota's (an enabled one, a
# calendar one, the oldest: a user may have one quota per reset frequency), UTC without a quota.
def _user_zone(company_id: str, user_id: str) -> str:
    return f"""coalesce((SELECT q.time_zone FROM quotas q WHERE q.company_id = {company_id} AND q.user_id = {user_id}
                     ORDER BY q.enabled DESC, q.window_seconds IS NOT NULL, q.quota_id LIMIT 1), 'UTC')"""  # noqa: S608 (SQL expressions of ours only)


# The `usage` rows (daily, monthly; end inclusive) of a settled reservation: those of the local
# date of its *admission* instant (`created_at`) in its recorded `usage_time_zone`. The admission
# instant, not the settlement's: it is the period whose quota counters held and counted the request
# (so before any reset a user's usage row equals their counter), it is seed 001's (`requests.created_at`),
# and both it and the zone are written once, so a rebuild files every reservation where settle did.
def _usage_periods(alias: str) -> str:
    day = f"({alias}.created_at AT TIME ZONE {alias}.usage_time_zone)::date"
    month = f"date_trunc('month', {day}::timestamp)"
    return f"""CROSS JOIN LATERAL (VALUES ('daily', {day}, {day}),
                                ('monthly', {month}::date, ({month} + interval '1 month - 1 day')::date))
           AS p (period, period_start, period_end)"""


# $1 company_id, $2 reservation id, $3..$5 actual requests, tokens, cost_usd, $6 final state,
# $7 now, $8 the usage lock class. Counters first (id order, like admission), then the
# reservation's state change, then its remaining holds: a second settle finds the state changed and
# writes nothing. The statement that flips a reservation to settled also adds its actual usage to
# its `usage` rows (`counted`), so billing usage is counted exactly once, apart from the counters
# (which a manual reset may zero). Before that it takes the company's usage lock shared (`gate`):
# `rebuild_usage` takes it exclusively, so a rebuild never interleaves with a settlement. Row locks
# still come in one order (counters by id, the reservation, then its daily and monthly `usage` rows),
# so settlements cannot deadlock each other on the usage rows either.
FINISH = f"""
WITH clock AS (
    SELECT coalesce($7::timestamptz, now()) AS now
), target AS (
    SELECT counter_ids FROM quota_reservations WHERE company_id = $1 AND id = $2
), cur AS (
    SELECT c.id FROM quota_counters c
    WHERE c.company_id = $1 AND c.id = ANY ((SELECT counter_ids FROM target)::bigint[])
    ORDER BY c.id
    FOR UPDATE
), finished AS (
    UPDATE quota_reservations r
    SET state = $6, finished_at = clock.now,
        actual_requests = $3, actual_tokens = $4, actual_cost_usd = $5,
        usage_time_zone = CASE WHEN $6::varchar = 'settled' THEN {_user_zone("$1", "r.user_id")} END
    FROM clock
    WHERE r.company_id = $1 AND r.id = $2 AND r.state = 'held' AND (SELECT count(*) FROM cur) >= 0
    RETURNING r.id, r.user_id, r.created_at, r.usage_time_zone, r.actual_requests, r.actual_tokens,
              r.actual_cost_usd
), freed AS (
    DELETE FROM quota_holds h
    WHERE h.company_id = $1 AND h.reservation_id = $2 AND EXISTS (SELECT 1 FROM finished)
    RETURNING h.counter_id, h.amount
), applied AS (
    UPDATE quota_counters c
    SET held = c.held - coalesce(f.amount, 0),
        used = c.used + CASE c.metric WHEN 'requests' THEN $3::numeric WHEN 'tokens' THEN $4::numeric
                                      ELSE $5::numeric END
    FROM cur LEFT JOIN (SELECT counter_id, sum(amount) AS amount FROM freed GROUP BY counter_id) f
         ON f.counter_id = cur.id
    WHERE c.company_id = $1 AND c.id = cur.id AND EXISTS (SELECT 1 FROM finished)
    RETURNING c.id
), gate AS (
    SELECT f.*, pg_advisory_xact_lock_shared($8::integer, hashtext($1)) AS locked
    FROM finished f
    WHERE $6::varchar = 'settled'
), counted AS (
    INSERT INTO usage AS u (company_id, user_id, period, period_start, period_end,
                            requests_count, tokens_used, cost_usd)
    SELECT $1, f.user_id, p.period, p.period_start, p.period_end,
           f.actual_requests::bigint, f.actual_tokens::bigint, f.actual_cost_usd
    FROM gate f {_usage_periods("f")}
    ORDER BY p.period
    ON CONFLICT ON CONSTRAINT pk_usage DO UPDATE
    SET requests_count = u.requests_count + EXCLUDED.requests_count,
        tokens_used = u.tokens_used + EXCLUDED.tokens_used,
        cost_usd = u.cost_usd + EXCLUDED.cost_usd,
        updated_at = now()
    RETURNING u.period
)
SELECT EXISTS (SELECT 1 FROM finished) AS counted, EXISTS (SELECT 1 FROM target) AS known,
       (SELECT count(*) FROM applied) AS counters, (SELECT count(*) FROM counted) AS usage_rows
"""  # noqa: S608 (constant SQL only)

# `rebuild_usage`, in one transaction: $1 lock class, $2 company_id (the lock waits for every
# settlement of the company in flight, and holds new ones at their `gate` until commit).
USAGE_LOCK = "SELECT pg_advisory_xact_lock($1::integer, hashtext($2))"
# $1 company_id, $2 since, $3 until: every daily and monthly row whose period starts in [since, until).
USAGE_DELETE = (
    "DELETE FROM usage WHERE company_id = $1 AND period_start >= $2::date AND period_start < $3::date"
)
# The same rows from the settled reservations. The created_at range is a superset (any zone's local
# date of an instant is within a day of its UTC date; a month starting before `until` ends within a
# month after it); the exact choice is by period_start.
USAGE_REBUILD = f"""
INSERT INTO usage (company_id, user_id, period, period_start, period_end, requests_count, tokens_used, cost_usd)
SELECT $1::varchar, r.user_id, p.period, p.period_start, p.period_end,
       sum(r.actual_requests::bigint), sum(r.actual_tokens::bigint), sum(r.actual_cost_usd)
FROM quota_reservations r {_usage_periods("r")}
WHERE r.company_id = $1 AND r.state = 'settled'
  AND r.created_at >= ($2::date - 1)::timestamp AT TIME ZONE 'UTC'
  AND r.created_at < ($3::date + interval '1 month 2 days') AT TIME ZONE 'UTC'
  AND p.period_start >= $2::date AND p.period_start < $3::date
GROUP BY r.user_id, p.period, p.period_start, p.period_end
"""  # noqa: S608 (constant SQL only)

# $1 company_id, $2 user_id (NULL: company only), $3 now. Creates the period's missing counter
# rows, then (next statement) reads them; used by the admin path and the reports.
ENSURE_COUNTERS = f"""
WITH {_KEYS}
INSERT INTO quota_counters (company_id, scope, subject_id, metric, period, period_start, period_end)
SELECT $1, k.scope, k.subject_id, k.metric, k.period, k.period_start, k.period_end FROM keys k
WHERE k.window_seconds IS NULL  -- buckets of a rolling window are created by admission only (see ADMIT)
ON CONFLICT DO NOTHING
"""  # noqa: S608 (constant SQL only)

# The current period's (or bucket's) counters.
COUNTERS = f"""
WITH {_KEYS}
SELECT c.id, c.scope, c.subject_id, c.metric, c.period, c.period_start, c.period_end,
       coalesce(c.limit_override, k.lim) AS lim, c.used, c.held, c.version
FROM keys k
JOIN quota_counters c ON c.company_id = $1 AND c.scope = k.scope AND c.subject_id = k.subject_id
                     AND c.metric = k.metric AND c.period = k.period AND c.period_start = k.period_start
ORDER BY c.scope DESC, c.metric, c.period
"""  # noqa: S608 (constant SQL only)

# $1 company_id, $2 counter id, $3 action, $4 new limit, $5 expected version, $6 who, $7 why.
# Compare-and-swap on `version`: of two admins who saw the same version, one applies; both are
# recorded, the second with applied = false.
RESET = """
WITH old AS (
    SELECT id, used FROM quota_counters WHERE company_id = $1 AND id = $2 FOR UPDATE
), applied AS (
    UPDATE quota_counters c
    SET used = CASE WHEN $3 = 'reset' THEN 0 ELSE c.used END,
        limit_override = CASE WHEN $3 = 'override' THEN $4::numeric ELSE c.limit_override END,
        version = c.version + 1
    FROM old
    WHERE c.company_id = $1 AND c.id = old.id AND c.version = $5
    RETURNING old.used AS previous_used
)
INSERT INTO rate_limit_resets (company_id, scope, subject_id, metric, period, period_start, action,
                               new_limit, expected_version, applied, previous_used, requested_by, reason)
SELECT c.company_id, c.scope, c.subject_id, c.metric, c.period, c.period_start, $3, $4::numeric, $5,
       EXISTS (SELECT 1 FROM applied), (SELECT previous_used FROM applied), $6, $7
FROM quota_counters c
WHERE c.company_id = $1 AND c.id = $2
RETURNING id, applied
"""

# Seed 001's "remaining tokens" ($1 company_id, $2 user_id, $3 now, $4 reset_frequency).
REMAINING_TOKENS = f"""
WITH {_KEYS}
SELECT k.window_from AS period_start, k.period_end, coalesce(sum(c.used), 0) AS used,
       coalesce(sum(c.held), 0) AS held,
       coalesce(max(c.limit_override) FILTER (WHERE c.period_start = k.period_start), k.lim) AS effective
FROM keys k
LEFT JOIN quota_counters c ON c.company_id = $1 AND c.scope = k.scope AND c.subject_id = k.subject_id
                          AND c.metric = k.metric AND c.period = k.period
                          AND c.period_start BETWEEN k.window_from AND k.period_start
WHERE k.scope = 'user' AND k.metric = 'tokens' AND k.period = $4
GROUP BY k.window_from, k.period_end, k.lim
"""  # noqa: S608 (constant SQL only)

# Seed 001's usage report ($1 company_id, $2 period, $3 now): one row per user with settled usage
# in the period containing `now` in the user's zone, read from `usage` (which a counter reset does
# not touch). The period_start range is a superset that lets the index on (company, period,
# period_start) skip older periods; the user's local date chooses the row.
USAGE_REPORT = f"""
SELECT u.user_id, u.period, u.period_start, u.period_end, u.requests_count, u.tokens_used, u.cost_usd
FROM usage u
CROSS JOIN LATERAL (
    SELECT (coalesce($3::timestamptz, now()) AT TIME ZONE {_user_zone("u.company_id", "u.user_id")})::date AS today
) t
WHERE u.company_id = $1 AND u.period = $2 AND u.user_id <> ''
  AND u.period_start BETWEEN (coalesce($3::timestamptz, now()) AT TIME ZONE 'UTC')::date - 32
                         AND (coalesce($3::timestamptz, now()) AT TIME ZONE 'UTC')::date + 1
  AND t.today BETWEEN u.period_start AND u.period_end
ORDER BY u.user_id
"""  # noqa: S608 (constant SQL only)

# Seed 001's "tiered pricing analysis" ($1 company_id, $2 basic ceiling, $3 standard ceiling) over
# every monthly `usage` row of the company's users.
TIER_ANALYSIS = """
WITH user_usage AS (
    SELECT u.user_id, max(u.requests_count) AS max_requests, max(u.tokens_used) AS max_tokens
    FROM usage u
    WHERE u.company_id = $1 AND u.period = 'monthly' AND u.user_id <> ''
    GROUP BY u.user_id
)
SELECT u.user_id, u.max_requests, u.max_tokens,
       CASE WHEN u.max_tokens < $2 THEN 'basic' WHEN u.max_tokens < $3 THEN 'standard'
            ELSE 'premium' END AS recommended_tier
FROM user_usage u
ORDER BY u.user_id
"""

UPSERT_USER_QUOTA = """
INSERT INTO quotas (company_id, user_id, tier, request_limit, token_limit, cost_limit_usd,
                    reset_frequency, time_zone, window_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT ON CONSTRAINT uq_quotas_company_id_user_id_reset_frequency DO UPDATE
SET tier = EXCLUDED.tier, request_limit = EXCLUDED.request_limit, token_limit = EXCLUDED.token_limit,
    cost_limit_usd = EXCLUDED.cost_limit_usd, time_zone = EXCLUDED.time_zone,
    window_seconds = EXCLUDED.window_seconds, enabled = true,
    updated_at = now()
RETURNING quota_id
"""

UPSERT_COMPANY_QUOTA = """
INSERT INTO company_quotas (company_id, metric, period, time_zone, limit_value, window_seconds)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT ON CONSTRAINT uq_company_quotas_company_id_metric_period DO UPDATE
SET time_zone = EXCLUDED.time_zone, limit_value = EXCLUDED.limit_value,
    window_seconds = EXCLUDED.window_seconds, enabled = true, updated_at = now()
RETURNING id
"""
