"""Seed 001's inference requests: a small hot in-flight table, a monthly-partitioned history, and
the daily rollup behind `request_stats`.

Every PostgreSQL queue peer ends up fighting dead tuples (field notes, domains.md section 1), so the
work in flight is kept apart from the record:

- `request_inflight`: only `queued` and `processing` rows, with the lease (`lease_id` is the fencing
  token, `lease_until` its deadline, `worker_id` names worker and boot). Rows are deleted when they
  finish, so the table stays as small as the backlog; per-table autovacuum settings (below, and in
  revision 0018) vacuum it after a fixed number of dead rows instead of a fraction of its size.
- `request_history`: the terminal rows (`completed`, `failed`, `cancelled`, `expired`), partitioned
  by month of `created_at`, moved there by the finishing statement itself (DELETE ... RETURNING into
  INSERT). Archiving detaches or drops whole months (`persistence.requests.partitions`).
- `request_stats_daily`: per company, UTC day of `created_at`, user and model: counts by outcome,
  processing-time sum and count, tokens. It survives archiving.
- `request_stats_deltas`: what each finishing statement adds to those counts, appended (never
  updated), and folded into `request_stats_daily` by `Requests.fold_stats` (the sweeper calls it).
  Finishing statements never update a shared row: 8 workers finishing one user's requests would
  otherwise queue on one rollup row, and under a long-open snapshot every update would leave a
  version nobody can prune (68,000 dead versions of 50 rows in 30 s, measured), slowing each
  completion down.
- `request_transitions`: the audit of status changes, one row per transition, written by the
  transition's own statement, partitioned like `request_history` (revision 0021).
- Views under the seed's names: `requests` (both tables, one row per request; `model` and `error`
  repeat `model_id` and `error_message` under the seed's second spelling) and `request_stats`
  (the seed's columns, from the rollup plus the deltas not folded yet: current at every commit).

Status is a closed set; each state has its own timestamp column. `company_id` leads every key and
index, except the two partial queue indexes on `request_inflight` (`queued_at` of queued rows,
`lease_until` of processing rows): workers serve every tenant, so the queue is global.
`result_sha256` names a row of the result store (`results`, keyed by company and sha-256);
`reservation_id` the quota reservation admitted for the request (set by the caller, carried along).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Connection,
    Date,
    Identity,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base

INFLIGHT_STATUSES = ("queued", "processing")
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "expired")
REQUEST_STATUSES = INFLIGHT_STATUSES + TERMINAL_STATUSES

# Vacuum the in-flight table after a fixed number of dead rows (its size says nothing about its
# churn), at full speed (it is small); leave room on each page for HOT updates of the lease columns.
INFLIGHT_STORAGE = {
    "fillfactor": 70,
    "autovacuum_vacuum_scale_factor": 0,
    "autovacuum_vacuum_threshold": 500,
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_vacuum_insert_threshold": 1000,
    "autovacuum_analyze_scale_factor": 0,
    "autovacuum_analyze_threshold": 500,
    "autovacuum_vacuum_cost_delay": 0,
}

# The deltas are appended and deleted by folds: vacuum them after a fixed number of rows too.
DELTAS_STORAGE = {
    "autovacuum_vacuum_scale_factor": 0,
    "autovacuum_vacuum_threshold": 1000,
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_vacuum_insert_threshold": 1000,
    "autovacuum_vacuum_cost_delay": 0,
}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class RequestInflight(Base):
    """A queued or processing request: the queue itself, small and hot."""

    __tablename__ = "request_inflight"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(100))
    model_id: Mapped[str] = mapped_column(String(100))
    prompt: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), server_default=text("'queued'"))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    queued_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    processing_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    estimated_tokens: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    reservation_id: Mapped[uuid.UUID | None]
    lease_id: Mapped[uuid.UUID | None]
    lease_until: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_in("status", INFLIGHT_STATUSES), name="status_known"),
        CheckConstraint(
            "(status = 'processing') = (lease_id IS NOT NULL AND lease_until IS NOT NULL "
            "AND worker_id IS NOT NULL AND processing_at IS NOT NULL)",
            name="lease_iff_processing",
        ),
        CheckConstraint("attempts >= 0 AND max_attempts >= 1", name="attempts_valid"),
        CheckConstraint("estimated_tokens >= 0", name="estimated_tokens_non_negative"),
        CheckConstraint("company_id <> '' AND user_id <> '' AND model_id <> ''", name="subject_given"),
        {"postgresql_with": INFLIGHT_STORAGE},
    )


Index(
    "ix_request_inflight_queued_at",
    RequestInflight.queued_at,
    postgresql_where=text("status = 'queued'"),
)
Index(
    "ix_request_inflight_lease_until",
    RequestInflight.lease_until,
    postgresql_where=text("status = 'processing'"),
)
Index(
    "ix_request_inflight_company_id_user_id_created_at",
    RequestInflight.company_id,
    RequestInflight.user_id,
    RequestInflight.created_at,
)


class RequestHistory(Base):
    """A finished request (seed 001's `requests` row once it reached a terminal state)."""

    __tablename__ = "request_history"

    company_id: Mapped[str] = mapped_column(String(100))
    request_id: Mapped[uuid.UUID]
    created_at: Mapped[datetime]
    user_id: Mapped[str] = mapped_column(String(100))
    model_id: Mapped[str] = mapped_column(String(100))
    prompt: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    updated_at: Mapped[datetime]
    queued_at: Mapped[datetime]
    processing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    processing_time_ms: Mapped[int | None] = mapped_column(Integer)
    estimated_tokens: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    result_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    reservation_id: Mapped[uuid.UUID | None]
    # The ledger row (`ai_calls.id`) of the model call whose outcome this row records (revision 0021).
    ai_call_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        # The partition column must be in the key; a request id alone is unique (uuid).
        PrimaryKeyConstraint("company_id", "request_id", "created_at"),
        CheckConstraint(_in("status", TERMINAL_STATUSES), name="status_known"),
        CheckConstraint(
            "(status = 'completed') = (completed_at IS NOT NULL) AND (status = 'failed') = (failed_at IS NOT NULL)"
            " AND (status = 'cancelled') = (cancelled_at IS NOT NULL)"
            " AND (status = 'expired') = (expired_at IS NOT NULL)",
            name="one_timestamp_per_state",
        ),
        CheckConstraint("result_sha256 IS NULL OR octet_length(result_sha256) = 32", name="sha256_length"),
        CheckConstraint(
            "prompt_tokens >= 0 AND completion_tokens >= 0 AND total_tokens >= 0 AND estimated_tokens >= 0",
            name="tokens_non_negative",
        ),
        CheckConstraint("processing_time_ms >= 0", name="processing_time_non_negative"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


# Seed 001's indexes on user_id, status and created_at, company first: a user's recent requests by
# keyset, and a company's requests in one state over time.
Index(
    "ix_request_history_company_id_user_id_created_at_request_id",
    RequestHistory.company_id,
    RequestHistory.user_id,
    RequestHistory.created_at,
    RequestHistory.request_id,
)
Index(
    "ix_request_history_company_id_status_created_at",
    RequestHistory.company_id,
    RequestHistory.status,
    RequestHistory.created_at,
)
# From a ledger call back to its request(s) (`Requests.requests_for_ai_call`).
Index(
    "ix_request_history_company_id_ai_call_id",
    RequestHistory.company_id,
    RequestHistory.ai_call_id,
    postgresql_where=text("ai_call_id IS NOT NULL"),
)

TRANSITION_ACTIONS = (
    "create",
    "claim",
    "start",
    "release",
    "complete",
    "fail",
    "acknowledge_cancel",
    "cancel",
    "request_cancel",
    "sweep",
    "expire",
)


class RequestTransition(Base):
    """One status change of a request (or a cancellation request), written by the statement that
    made it: `action` names the transition (the `Requests` method, `sweep` for the sweeper),
    `from_status` is NULL on creation, `to_status` equals `from_status` for `request_cancel`.
    `worker_id` / `lease_id` are the lease the change was made under (or that the sweeper took
    away), `attempt` the request's attempt count after it, `actor` the `audit_context` user of a
    client's create or cancel. `at` is the server's clock (`clock_timestamp()`), never a caller's
    `now`. Append-only, no key: partitioned like `request_history` (month of the request's
    `created_at`), so a month is archived with its history."""

    __tablename__ = "request_transitions"

    company_id: Mapped[str] = mapped_column(String(100))
    request_id: Mapped[uuid.UUID] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()
    at: Mapped[datetime] = mapped_column(server_default=text("clock_timestamp()"))
    action: Mapped[str] = mapped_column(String(20))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_id: Mapped[uuid.UUID | None]
    actor: Mapped[str | None] = mapped_column(String(255))

    # The ORM needs an identity; the table has no key (an append-only log).
    __mapper_args__ = {"primary_key": [company_id, request_id, at]}
    __table_args__ = (
        CheckConstraint(_in("action", TRANSITION_ACTIONS), name="action_known"),
        CheckConstraint(_in("from_status", REQUEST_STATUSES), name="from_status_known"),
        CheckConstraint(_in("to_status", REQUEST_STATUSES), name="to_status_known"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


Index(
    "ix_request_transitions_company_id_request_id_at",
    RequestTransition.company_id,
    RequestTransition.request_id,
    RequestTransition.at,
)


class _RequestCounts:
    """The measures of `request_stats_daily` and of its deltas (`STATS_MEASURES`, in this order)."""

    request_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completed_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failure_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cancelled_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    expired_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    processing_time_ms_sum: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    processing_time_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    total_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class RequestStatsDaily(_RequestCounts, Base):
    """Finished requests per company, UTC day (of `created_at`), user and model."""

    __tablename__ = "request_stats_daily"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(100), primary_key=True)


class RequestStatsDelta(_RequestCounts, Base):
    """What one finishing statement added to a `request_stats_daily` row, until a fold adds it there."""

    __tablename__ = "request_stats_deltas"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    user_id: Mapped[str] = mapped_column(String(100))
    model_id: Mapped[str] = mapped_column(String(100))

    __table_args__ = ({"postgresql_with": DELTAS_STORAGE},)


# Revisions 0018 and 0021 freeze their own copies of these views (0024 replaces `request_stats`).
REQUESTS_VIEW = """
CREATE VIEW requests AS
SELECT company_id, request_id, user_id, prompt, model_id, status, created_at, updated_at,
       queued_at, processing_at, NULL::timestamptz AS completed_at, NULL::timestamptz AS failed_at,
       NULL::timestamptz AS cancelled_at, NULL::timestamptz AS expired_at, cancel_requested_at,
       NULL::integer AS processing_time_ms, estimated_tokens, NULL::integer AS prompt_tokens,
       NULL::integer AS completion_tokens, NULL::integer AS total_tokens, NULL::text AS error_message,
       NULL::bytea AS result_sha256, attempts, worker_id, reservation_id, NULL::bigint AS ai_call_id,
       model_id AS model, NULL::text AS error
  FROM request_inflight
UNION ALL
SELECT company_id, request_id, user_id, prompt, model_id, status, created_at, updated_at,
       queued_at, processing_at, completed_at, failed_at, cancelled_at, expired_at, cancel_requested_at,
       processing_time_ms, estimated_tokens, prompt_tokens, completion_tokens, total_tokens, error_message,
       result_sha256, attempts, worker_id, reservation_id, ai_call_id,
       model_id AS model, error_message AS error
  FROM request_history
"""

STATS_MEASURES = (
    "request_count",
    "completed_count",
    "failure_count",
    "cancelled_count",
    "expired_count",
    "processing_time_ms_sum",
    "processing_time_count",
    "total_tokens",
)
_MEASURES = ", ".join(STATS_MEASURES)

REQUEST_STATS_VIEW = f"""
CREATE VIEW request_stats AS
SELECT company_id, day, user_id, model_id, sum(request_count)::bigint AS request_count,
       round(sum(processing_time_ms_sum) / NULLIF(sum(processing_time_count), 0), 3) AS avg_processing_time,
       sum(failure_count)::bigint AS failure_count, sum(completed_count)::bigint AS completed_count,
       sum(cancelled_count)::bigint AS cancelled_count, sum(expired_count)::bigint AS expired_count,
       sum(total_tokens)::bigint AS total_tokens
  FROM (SELECT company_id, day, user_id, model_id, {_MEASURES} FROM request_stats_daily
        UNION ALL
        SELECT company_id, day, user_id, model_id, {_MEASURES} FROM request_stats_deltas) s
 GROUP BY company_id, day, user_id, model_id
"""  # noqa: S608 (constant SQL only)


# So `Base.metadata.create_all` builds what the migrations build (the views after every table).
def _create_views(target: object, connection: Connection, **kw: Any) -> None:
    tables = set(kw.get("tables") or ())
    if not tables or {RequestInflight.__table__, RequestHistory.__table__} <= tables:
        connection.execute(text(REQUESTS_VIEW))
    if not tables or {RequestStatsDaily.__table__, RequestStatsDelta.__table__} <= tables:
        connection.execute(text(REQUEST_STATS_VIEW))


def _drop_views(target: object, connection: Connection, **kw: Any) -> None:
    connection.execute(text("DROP VIEW IF EXISTS requests"))
    connection.execute(text("DROP VIEW IF EXISTS request_stats"))


event.listen(Base.metadata, "after_create", _create_views)
event.listen(Base.metadata, "before_drop", _drop_views)
