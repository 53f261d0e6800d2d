"""Which tables belong to a tenant, and by which column.

One list, read by the row-level security policies (a revision freezes its own copy), the catalog
test that every tenant-owned key leads with the tenant column, and ARCHITECTURE's Citus section.
Every table of `Base.metadata` is in exactly one of the three maps (a test checks it), so a new
table has to be classified when it is added.

- `TENANT_TABLES`: tenant-owned; the column is the tenant (`company_id` for subjects, limits and
  requests, the ledger's `organization_id`, seed 004's `tenant_id`: the same ids). These are the
  tables a tenant-distributed deployment shards on that column; since revision 0025 the column is
  NOT NULL and leads every primary and unique key of each (ARCHITECTURE's "Distribution (Citus)").
- `REFERENCE_TABLES`: small configuration read by every tenant (global rows under the tenant
  column's `''` sentinel plus per-tenant overrides); a distributed deployment replicates them
  (Citus reference tables).
- `PLATFORM_TABLES`: the operator's tables (provider billing, reconciliation, alert rules, the
  audit trail, seed 003's domain, cross-tenant rollups and bookkeeping), not owned by a tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

TENANT_TABLES: Mapping[str, str] = MappingProxyType(
    {
        # the AI-call ledger (seed 000)
        "ai_calls": "organization_id",
        "ai_call_keys": "organization_id",
        "ai_call_usage_hourly": "organization_id",
        "ai_call_usage_deltas": "organization_id",
        # subjects and limits (seeds 001, 002)
        "companies": "company_id",
        "users": "company_id",
        "api_keys": "company_id",
        "quotas": "company_id",
        "quota_counters": "company_id",
        "quota_holds": "company_id",
        "quota_reservations": "company_id",
        "company_quotas": "company_id",
        "rate_limit_resets": "company_id",
        "rate_limit_slots": "company_id",
        "rate_limit_state": "company_id",
        "usage": "company_id",
        # inference requests and results (seed 001)
        "request_inflight": "company_id",
        "request_history": "company_id",
        "request_transitions": "company_id",
        "request_stats_daily": "company_id",
        "request_stats_deltas": "company_id",
        "results": "company_id",
        "result_chunks": "company_id",
        "result_cache": "company_id",
        # events (seed 004)
        "analytics.platform_events": "tenant_id",
        "analytics.tenant_cost_events": "tenant_id",
        "analytics.agent_executions": "tenant_id",
        "analytics.tenant_cost_hourly": "tenant_id",
        "analytics.tenant_cost_hourly_deltas": "tenant_id",
        "analytics.agent_execution_hourly": "tenant_id",
        "analytics.agent_execution_hourly_deltas": "tenant_id",
    }
)

REFERENCE_TABLES: Mapping[str, str] = MappingProxyType(
    {
        "rate_limit_configs": "company_id",  # global and tier rows ('') beside per-company ones
        "vendor_prices": "tenant_id",  # list prices ('') beside tenant overrides
    }
)

PLATFORM_TABLES: Mapping[str, str] = MappingProxyType(
    {
        "ai_call_model_hourly": "a rollup across tenants (per provider and model)",
        "ai_call_pending_batches": "the ledger's COPY bookkeeping (id ranges, any tenant)",
        "vendor_prices_version": "the price book's change counter",
        "audit_log": "the operators' trail of audited writes",
        "billing_data": "provider invoices",
        "billing_periods": "provider billing periods",
        "billing_validations": "provider billing checks",
        "reconciliation_reports": "provider usage reconciliation",
        "cost_accuracy_validations": "provider price checks",
        "cost_alerts": "alert rules (scoped by a column of their own)",
        "cost_alert_firings": "alert firings",
        "cost_alerts_log": "alert deliveries",
        "claims": "seed 003",
        "consensus_decisions": "seed 003",
        "training_data": "seed 003",
        "model_checkpoints": "seed 003",
        "verification_results": "seed 003",
        "service_health": "seed 003",
    }
)
