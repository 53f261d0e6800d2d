"""events: seed 004's analytics.platform_events, tenant_cost_events, agent_executions

- Schema `analytics` with three tables range-partitioned by `time`: daily partitions for
  `platform_events`, monthly for `tenant_cost_events` and `agent_executions`; key
  (tenant_id, time, event_id) (the partition column is in every unique key, the tenant leads, the
  event id makes replays no-ops); BRIN on `time`; (tenant_id, agent_id, time) for success rates.
- `analytics.ensure_partition(parent, part, lo, hi)`: the ledger's `ai_calls_ensure_partition`
  (revision 0002) for any time-partitioned table: creates a partition, moving its rows out of the
  parent's default partition first. Partitions for yesterday .. 7 days ahead (daily) and this and
  the next 2 months (monthly) are made here, then the default partitions; later ones by
  `persistence.events.maintain_event_partitions`.

The downgrade drops the schema's three tables (their events go with them) and the function.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 15:10:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENSURE_PARTITION = r"""
CREATE FUNCTION analytics.ensure_partition(parent regclass, part text, lo timestamptz, hi timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
    nsp text;
    deflt regclass;
    cols text;
    stranded boolean := false;
BEGIN
    SELECT n.nspname INTO nsp FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = parent;
    IF to_regclass(format('%I.%I', nsp, part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    SELECT i.inhrelid::regclass INTO deflt
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
    -- Rows of the new range that went to the default partition move into the new one; otherwise
    -- CREATE ... PARTITION OF would fail on them.
    IF deflt IS NOT NULL THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE time >= $1 AND time < $2)', deflt)
           INTO stranded USING lo, hi;
    END IF;
    IF stranded THEN
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
          FROM pg_attribute WHERE attrelid = parent AND attnum > 0 AND NOT attisdropped;
        EXECUTE format('CREATE TEMP TABLE analytics_moving ON COMMIT DROP AS SELECT %s FROM %s '
                       'WHERE time >= %L AND time < %L', cols, deflt, lo, hi);
        EXECUTE format('DELETE FROM %s WHERE time >= $1 AND time < $2', deflt) USING lo, hi;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)', nsp, part, parent, lo, hi);
    IF stranded THEN
        EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM analytics_moving', parent, cols, cols);
        DROP TABLE analytics_moving;
    END IF;
    RETURN true;
END
$fn$
"""

TABLES = """
CREATE TABLE analytics.platform_events (
    tenant_id VARCHAR(100) NOT NULL,
    time TIMESTAMP WITH TIME ZONE NOT NULL,
    event_id UUID NOT NULL,
    user_id VARCHAR(100),
    session_id VARCHAR(100),
    event_type VARCHAR(100) NOT NULL,
    event_category VARCHAR(30) NOT NULL,
    event_data JSONB DEFAULT '{}'::jsonb NOT NULL,
    metadata JSONB DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT pk_platform_events PRIMARY KEY (tenant_id, time, event_id),
    CONSTRAINT ck_platform_events_event_category_known
        CHECK (event_category IN ('user_behavior', 'agent_performance', 'system_health'))
) PARTITION BY RANGE (time);

CREATE TABLE analytics.tenant_cost_events (
    tenant_id VARCHAR(100) NOT NULL,
    time TIMESTAMP WITH TIME ZONE NOT NULL,
    event_id UUID NOT NULL,
    user_id VARCHAR(100),
    cost_type VARCHAR(20) NOT NULL,
    cost_usd NUMERIC(20, 10) NOT NULL,
    quantity BIGINT,
    service VARCHAR(50) NOT NULL,
    service_tier VARCHAR(100),
    metadata JSONB DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT pk_tenant_cost_events PRIMARY KEY (tenant_id, time, event_id),
    CONSTRAINT ck_tenant_cost_events_cost_type_known CHECK (cost_type IN ('llm', 'embedding', 'storage', 'compute')),
    CONSTRAINT ck_tenant_cost_events_cost_non_negative CHECK (cost_usd >= 0),
    CONSTRAINT ck_tenant_cost_events_quantity_non_negative CHECK (quantity >= 0)
) PARTITION BY RANGE (time);

CREATE TABLE analytics.agent_executions (
    tenant_id VARCHAR(100) NOT NULL,
    time TIMESTAMP WITH TIME ZONE NOT NULL,
    event_id UUID NOT NULL,
    user_id VARCHAR(100),
    agent_id VARCHAR(100) NOT NULL,
    agent_type VARCHAR(50) NOT NULL,
    execution_time_ms INTEGER NOT NULL,
    success BOOLEAN NOT NULL,
    quality_score NUMERIC(7, 6),
    citation_accuracy NUMERIC(7, 6),
    hallucination_detected BOOLEAN,
    cost_usd NUMERIC(20, 10),
    total_tokens INTEGER,
    error_message TEXT,
    metadata JSONB DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT pk_agent_executions PRIMARY KEY (tenant_id, time, event_id),
    CONSTRAINT ck_agent_executions_execution_time_non_negative CHECK (execution_time_ms >= 0),
    CONSTRAINT ck_agent_executions_quality_score_in_unit_range CHECK (quality_score BETWEEN 0 AND 1),
    CONSTRAINT ck_agent_executions_citation_accuracy_in_unit_range CHECK (citation_accuracy BETWEEN 0 AND 1),
    CONSTRAINT ck_agent_executions_cost_non_negative CHECK (cost_usd >= 0),
    CONSTRAINT ck_agent_executions_total_tokens_non_negative CHECK (total_tokens >= 0)
) PARTITION BY RANGE (time);

CREATE INDEX ix_platform_events_time_brin ON analytics.platform_events USING brin (time);
CREATE INDEX ix_tenant_cost_events_time_brin ON analytics.tenant_cost_events USING brin (time);
CREATE INDEX ix_agent_executions_time_brin ON analytics.agent_executions USING brin (time);
CREATE INDEX ix_agent_executions_tenant_id_agent_id_time
    ON analytics.agent_executions (tenant_id, agent_id, time);
"""

PARTITIONS = """
SELECT analytics.ensure_partition('analytics.platform_events', 'platform_events_p' || to_char(d, 'YYYY_MM_DD'),
                                  d AT TIME ZONE 'UTC', (d + interval '1 day') AT TIME ZONE 'UTC')
  FROM generate_series(date_trunc('day', now() AT TIME ZONE 'UTC') - interval '1 day',
                       date_trunc('day', now() AT TIME ZONE 'UTC') + interval '7 days', interval '1 day') AS d;
SELECT analytics.ensure_partition(t::regclass, p || to_char(m, 'YYYY_MM'),
                                  m AT TIME ZONE 'UTC', (m + interval '1 month') AT TIME ZONE 'UTC')
  FROM (VALUES ('analytics.tenant_cost_events', 'tenant_cost_events_p'),
               ('analytics.agent_executions', 'agent_executions_p')) AS tables (t, p),
       generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'),
                       date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months', interval '1 month') AS m;
CREATE TABLE analytics.platform_events_default PARTITION OF analytics.platform_events DEFAULT;
CREATE TABLE analytics.tenant_cost_events_default PARTITION OF analytics.tenant_cost_events DEFAULT;
CREATE TABLE analytics.agent_executions_default PARTITION OF analytics.agent_executions DEFAULT;
"""


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS analytics")
    op.execute(ENSURE_PARTITION)
    for statement in TABLES.split(";"):
        if statement.strip():
            op.execute(statement)
    for statement in PARTITIONS.split(";\n"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE analytics.agent_executions")
    op.execute("DROP TABLE analytics.tenant_cost_events")
    op.execute("DROP TABLE analytics.platform_events")
    op.execute("DROP FUNCTION analytics.ensure_partition(regclass, text, timestamptz, timestamptz)")
    # Only if empty: a service's own tables in `analytics` stay.
    op.execute(
        "DO $$ BEGIN DROP SCHEMA IF EXISTS analytics; "
        "EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $$"
    )
