"""cost event call ids: a ledger call's cost event carries its call id, once

- `analytics.tenant_cost_events.call_id BIGINT NULL`: the `ai_calls.id` the event prices (NULL for
  costs that are not ledger calls: embeddings, storage, compute, or LLM costs logged by hand).
- `ck_tenant_cost_events_event_id_of_call`: a call's event id is `md5('persistence.ai_call:' ||
  call_id)::uuid` (`persistence.events.call_event_id` computes the same), so the key
  (tenant_id, time, event_id) holds one row per call and time: a second emission of the same call is
  an `ON CONFLICT DO NOTHING` no-op. Adding it reads every stored cost event once (all have a NULL
  call id, so all pass) under the revision's exclusive lock: seconds per few million rows.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 18:20:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | Sequence[str] | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable without a default: a catalog change only, instant on every partition.
    op.execute("ALTER TABLE analytics.tenant_cost_events ADD COLUMN call_id BIGINT")
    op.execute(
        "ALTER TABLE analytics.tenant_cost_events ADD CONSTRAINT ck_tenant_cost_events_event_id_of_call "
        "CHECK (call_id IS NULL OR event_id = md5('persistence.ai_call:' || call_id)::uuid)"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE analytics.tenant_cost_events DROP CONSTRAINT ck_tenant_cost_events_event_id_of_call"
    )
    op.execute("ALTER TABLE analytics.tenant_cost_events DROP COLUMN call_id")
