"""Deterministic, idempotent seeding of every table with realistic, related data.

The library behind `scripts/seed_database.py`. Three properties drive the design:

- Deterministic: every row is a pure function of (plan.seed, as_of, table, row index) - each row
  draws from its own `random.Random` derived from the plan's seed - and its primary key is
  `uuid5(NAMESPACE, "table:index")`. The same plan gives identical data, and a larger plan is a
  superset of a smaller one. (The one exception is the seed-run record's time, below.)
- Idempotent: rows go in with `ON CONFLICT DO NOTHING` on those deterministic keys (AI calls, which
  have no unique key, with `WHERE NOT EXISTS` on their seeded `request_id`; events by the recorder's
  COPY, which falls back to `ON CONFLICT DO NOTHING` on a batch it finds there), so a re-run inserts
  only what is missing. The first run records its seed, as_of and plan as one audit_log row (when:
  the wall clock); later runs reuse that as_of, so a re-run on a later day inserts nothing too, and
  refuse a different seed or as_of (ValueError) unless they reset.
- Atomic: one transaction under an advisory lock, so a failed run leaves nothing half written and
  concurrent seeders serialise.

It needs nothing beyond the package's runtime dependencies (no Faker, no factory-boy): the seeding
script runs against development databases where the `testing` extra is not installed.

Modules: `catalog` (frameworks, claim types, models and their list prices, from genai-prices' rows),
`plan` (`SeedPlan`, `SeedReport`), `generate`, `calls` and `events` (the rows, in memory), `write` (the
statements and `seed_database`). This module re-exports what the rest of the package and its users
import.
"""

from persistence.seeding.catalog import (
    CLAIM_TYPES,
    FRAMEWORKS,
    MODEL_CATALOG,
    SERVICES,
    ModelSpec,
    Verdict,
    call_cost,
    checkpoint_version,
    claim_sentence,
    decide_consensus,
    model_spec,
    raw_usage,
)
from persistence.seeding.generate import NAMESPACE, seed_uuid
from persistence.seeding.plan import ProgressCallback, SeedPlan, SeedReport
from persistence.seeding.write import (
    LEDGER_DERIVED_TABLES,
    REFERENCE_TABLES,
    SEEDED_TABLES,
    seed_database,
    table_counts,
)

__all__ = [
    "CLAIM_TYPES",
    "FRAMEWORKS",
    "LEDGER_DERIVED_TABLES",
    "MODEL_CATALOG",
    "NAMESPACE",
    "REFERENCE_TABLES",
    "SEEDED_TABLES",
    "SERVICES",
    "ModelSpec",
    "ProgressCallback",
    "SeedPlan",
    "SeedReport",
    "Verdict",
    "call_cost",
    "checkpoint_version",
    "claim_sentence",
    "decide_consensus",
    "model_spec",
    "raw_usage",
    "seed_database",
    "seed_uuid",
    "table_counts",
]
