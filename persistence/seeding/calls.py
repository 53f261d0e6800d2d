"""Deterministic generation of the AI-call ledger: calls with realistic traffic, token mixes, failures
and the provider's raw usage object, priced at the catalog's list prices; the weekly report periods.

Same rules as `generate.py`: each call is a pure function of (plan.seed, as_of, index).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from persistence.seeding.catalog import MODEL_CATALOG, call_cost, raw_usage
from persistence.seeding.generate import Clock, row_rng
from persistence.seeding.plan import SeedPlan

__all__ = ["make_ai_calls", "report_weeks"]

_MODEL_WEIGHTS = [spec.traffic_weight for spec in MODEL_CATALOG]
_ORGANIZATIONS = (
    "acme-corp",
    "globex",
    "initech",
    "umbrella-health",
    "stark-analytics",
    "wayne-media",
    "hooli",
)
_CUSTOMERS = tuple(f"cust_{n:04d}" for n in range(1, 41))
# Zipf-like: a few customers make most of the traffic.
_CUSTOMER_WEIGHTS = tuple(1.0 / (rank + 1) ** 1.1 for rank in range(len(_CUSTOMERS)))
_PRODUCTS = ("claim-verifier", "fact-check-api", "research-assistant", "content-moderation", "chatbot")
_PRODUCT_WEIGHTS = (35, 25, 15, 15, 10)
_ENVIRONMENTS = ("production", "staging", "development")
_ENVIRONMENT_WEIGHTS = (86, 9, 5)


# Failed calls, ~2% of traffic: (status, error class, weight). A rate-limited call bills nothing; an
# error or a timeout bills the prompt it had already read.
_FAILURES = (
    ("rate_limited", "RateLimitError", 5),
    ("timeout", "APITimeoutError", 3),
    ("error", "APIError", 2),
)
# Share of calls that read a cached prompt prefix, by provider (prompt caching is common for agents).
_CACHE_READ_SHARE = {"openai": 0.35, "anthropic": 0.45, "google": 0.2, "cohere": 0.0}


def make_ai_calls(plan: SeedPlan, clock: Clock) -> list[dict[str, Any]]:
    rows = []
    for i in range(plan.ai_calls):
        rng = row_rng(plan.seed, "ai_calls", i)
        spec = rng.choices(MODEL_CATALOG, weights=_MODEL_WEIGHTS)[0]
        prompt = max(12, min(120_000, int(rng.lognormvariate(0, 0.8) * spec.median_input)))
        output_tokens = max(1, min(8_192, int(rng.lognormvariate(0, 0.7) * spec.median_output)))
        cache_read = cache_write = 0
        if rng.random() < _CACHE_READ_SHARE[spec.provider]:
            cache_read = int(prompt * rng.uniform(0.3, 0.9))
        if spec.provider == "anthropic" and rng.random() < 0.1:
            cache_write = int((prompt - cache_read) * rng.uniform(0.3, 0.8))
        input_tokens = prompt - cache_read - cache_write
        status, error_class = "success", None
        if rng.random() < 0.02:
            status, error_class, _ = rng.choices(_FAILURES, weights=[w for _, _, w in _FAILURES])[0]
            output_tokens = cache_write = 0
            if status == "rate_limited":
                input_tokens = cache_read = 0
        latency = spec.base_latency_ms + int(
            Decimal(output_tokens) * spec.ms_per_output_token * Decimal(rng.randint(80, 130)) / 100
        )
        customer = rng.choices(range(len(_CUSTOMERS)), weights=_CUSTOMER_WEIGHTS)[0]
        rows.append(
            {
                "created_at": clock.sample(rng),
                "provider": spec.provider,
                "model": spec.model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_tokens": cache_read,
                "cache_write_tokens": cache_write,
                "usage": raw_usage(spec.provider, input_tokens, output_tokens, cache_read, cache_write),
                "cost_usd": call_cost(spec.model, input_tokens, output_tokens, cache_read, cache_write),
                "latency_ms": latency + int(rng.expovariate(1 / 120)),
                "status": status,
                "error_class": error_class,
                "customer_id": _CUSTOMERS[customer],
                "organization_id": _ORGANIZATIONS[customer % len(_ORGANIZATIONS)],
                "product_id": rng.choices(_PRODUCTS, weights=_PRODUCT_WEIGHTS)[0],
                "environment": rng.choices(_ENVIRONMENTS, weights=_ENVIRONMENT_WEIGHTS)[0],
                "request_id": f"seed-call-{i:07d}",
                "trace_id": f"{rng.getrandbits(128):032x}",
            }
        )
    # Insert in time order so identity ids (and BRIN ranges) follow created_at, as in a live ledger.
    rows.sort(key=lambda r: (r["created_at"], r["request_id"]))
    return rows


def report_weeks(plan: SeedPlan, as_of: datetime) -> list[tuple[datetime, datetime]]:
    """Seven-day periods ending at `as_of`, oldest first, enough to cover the AI-call window.

    As in the weekly reconciliation job (seed 000): each run reconciles the last 7 days and files the
    report under the day it runs.
    """
    if plan.ai_calls == 0:
        return []
    weeks = -(-plan.days // 7)
    return [
        (as_of - timedelta(days=7 * (k + 1)), as_of - timedelta(days=7 * k)) for k in reversed(range(weeks))
    ]
