"""The result store's and the deduplication cache's statements (asyncpg, positional parameters).

Each is one statement; the store's only multi-statement unit is a chunked write (chunks, then the
header, in one transaction).
"""

from __future__ import annotations

# $1 company, $2 sha256, $3 kind, $4 mime, $5 size, $6 inline_text, $7 inline_bytes.
# The SELECT half sees the row another transaction committed before this statement began; one
# committed in between (ON CONFLICT waited for it) is invisible to it: no row, and the caller runs
# the statement once more.
PUT_INLINE = """
WITH ins AS (
    INSERT INTO results (company_id, sha256, kind, mime_type, size_bytes, inline_text, inline_bytes)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (company_id, sha256) DO NOTHING
    RETURNING kind, mime_type, size_bytes, chunks, created_at
)
SELECT true AS created, kind, mime_type, size_bytes, chunks, created_at FROM ins
UNION ALL
SELECT false, kind, mime_type, size_bytes, chunks, created_at FROM results
 WHERE company_id = $1 AND sha256 = $2 AND NOT EXISTS (SELECT FROM ins)
"""

INSERT_CHUNK = "INSERT INTO result_chunks (company_id, blob_id, seq, data) VALUES ($1, $2, $3, $4)"

# $1 company, $2 sha256, $3 kind, $4 mime, $5 size, $6 blob_id, $7 chunks. No row: already stored.
PUT_HEADER = """
INSERT INTO results (company_id, sha256, kind, mime_type, size_bytes, blob_id, chunks)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (company_id, sha256) DO NOTHING
RETURNING kind, mime_type, size_bytes, chunks, created_at
"""

HEADER = """
SELECT kind, mime_type, size_bytes, chunks, blob_id, created_at FROM results
 WHERE company_id = $1 AND sha256 = $2
"""

# The header and, for inline rows, the content: one round trip for everything small.
READ = """
SELECT kind, mime_type, size_bytes, chunks, blob_id, created_at, inline_text, inline_bytes FROM results
 WHERE company_id = $1 AND sha256 = $2
"""

CHUNK = "SELECT data FROM result_chunks WHERE company_id = $1 AND blob_id = $2 AND seq = $3"

# Chunks and cache entries go with the header (ON DELETE CASCADE).
DELETE = "DELETE FROM results WHERE company_id = $1 AND sha256 = $2 RETURNING size_bytes"

# -- deduplication --------------------------------------------------------------------------------

# $1 company, $2 key, $3 key version, $4 leader token, $5 lease seconds.
# Claims the key when nobody holds it, when its leader's lease ran out, or when the cached entry
# expired; reports what it saw otherwise (as of the statement's snapshot: a row inserted by a
# transaction that committed after it began is not seen, and `seen` is false: ask again).
CLAIM = """
WITH claim AS (
    INSERT INTO result_cache AS c (company_id, dedup_key, key_version, leader, lease_until)
    VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5))
    ON CONFLICT (company_id, dedup_key) DO UPDATE
       SET key_version = EXCLUDED.key_version, leader = EXCLUDED.leader,
           lease_until = EXCLUDED.lease_until, result_sha256 = NULL, expires_at = NULL,
           created_at = now()
     WHERE (c.result_sha256 IS NULL AND c.lease_until <= clock_timestamp())
        OR (c.result_sha256 IS NOT NULL AND c.expires_at <= clock_timestamp())
    RETURNING leader
)
SELECT EXISTS (SELECT FROM claim) AS claimed, c.company_id IS NOT NULL AS seen,
       c.result_sha256, (c.expires_at > clock_timestamp()) IS NOT FALSE AS fresh,
       r.kind, r.mime_type, r.size_bytes, r.chunks, r.created_at
  FROM (SELECT) AS one
  LEFT JOIN result_cache c ON c.company_id = $1 AND c.dedup_key = $2
  LEFT JOIN results r ON r.company_id = c.company_id AND r.sha256 = c.result_sha256
"""

# A cached result, without claiming anything.
LOOKUP = """
SELECT c.result_sha256, r.kind, r.mime_type, r.size_bytes, r.chunks, r.created_at
  FROM result_cache c
  JOIN results r ON r.company_id = c.company_id AND r.sha256 = c.result_sha256
 WHERE c.company_id = $1 AND c.dedup_key = $2
   AND (c.expires_at IS NULL OR c.expires_at > clock_timestamp())
"""

# What a waiting caller polls with: a plain read (no row lock, no transaction id, unlike CLAIM).
# `open` is false when the key is free for a claim: no row, a leader whose lease ran out, or an
# expired entry.
PEEK = """
SELECT c.result_sha256, r.kind, r.mime_type, r.size_bytes, r.chunks, r.created_at,
       CASE WHEN c.result_sha256 IS NULL THEN c.lease_until > clock_timestamp()
            ELSE (c.expires_at > clock_timestamp()) IS NOT FALSE END AS open
  FROM result_cache c
  LEFT JOIN results r ON r.company_id = c.company_id AND r.sha256 = c.result_sha256
 WHERE c.company_id = $1 AND c.dedup_key = $2
"""

# $1 company, $2 key, $3 leader token, $4 result sha256, $5 ttl seconds (NULL: never expires).
# Fenced: only the leader whose claim is still the row's completes it.
COMPLETE = """
UPDATE result_cache
   SET result_sha256 = $4, expires_at = clock_timestamp() + make_interval(secs => $5), lease_until = NULL
 WHERE company_id = $1 AND dedup_key = $2 AND leader = $3 AND result_sha256 IS NULL
RETURNING expires_at
"""

ABANDON = """
DELETE FROM result_cache
 WHERE company_id = $1 AND dedup_key = $2 AND leader = $3 AND result_sha256 IS NULL
"""

PURGE = """
DELETE FROM result_cache
 WHERE ctid = ANY (ARRAY(SELECT ctid FROM result_cache WHERE expires_at <= clock_timestamp() LIMIT $1))
"""
