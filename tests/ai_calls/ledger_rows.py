"""Ledger rows for reconciliation tests: a known mix of providers, models and days, committed for real."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import AICall

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 11, 4, tzinfo=UTC)
# provider -> model -> calls; provider totals are multiples of 100 so percentages come out exact.
MIX = {
    "openai": {"gpt-4o": 350, "gpt-4o-mini": 250},
    "anthropic": {"claude-sonnet-4-20250514": 400},
}
_AI_CALLS: Table = AICall.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Seeded:
    calls: int
    cost: Decimal
    by_provider: dict[str, tuple[int, Decimal]]
    by_model_day: dict[tuple[str, str, date], tuple[int, Decimal]]


def make_rows(seed: int = 7, start: datetime = START, days: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for provider, models in MIX.items():
        for model, count in models.items():
            for i in range(count):
                created = start + timedelta(seconds=rng.randrange(days * 86_400))
                rows.append(
                    {
                        "created_at": created,
                        "provider": provider,
                        "model": model,
                        "input_tokens": rng.randint(10, 4000),
                        "output_tokens": rng.randint(1, 1500),
                        "cost_usd": Decimal(rng.randint(1, 90_000)) / 1_000_000,
                        "request_id": f"req-{provider}-{model}-{i}",
                    }
                )
    return rows


def summarise(rows: list[dict[str, Any]]) -> Seeded:
    by_provider: dict[str, tuple[int, Decimal]] = {}
    by_model_day: dict[tuple[str, str, date], tuple[int, Decimal]] = {}
    for row in rows:
        n, c = by_provider.get(row["provider"], (0, Decimal(0)))
        by_provider[row["provider"]] = (n + 1, c + row["cost_usd"])
        key = (row["provider"], row["model"], row["created_at"].astimezone(UTC).date())
        n, c = by_model_day.get(key, (0, Decimal(0)))
        by_model_day[key] = (n + 1, c + row["cost_usd"])
    return Seeded(
        calls=len(rows),
        cost=sum((r["cost_usd"] for r in rows), Decimal(0)),
        by_provider=by_provider,
        by_model_day=by_model_day,
    )


async def insert_rows(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(_AI_CALLS), rows)


async def seed_ledger(engine: AsyncEngine) -> Seeded:
    """The MIX inside [START, END), plus calls just outside the period that must not count."""
    rows = make_rows()
    outside = (
        make_rows(seed=8, start=END, days=1)[:50]
        + make_rows(seed=9, start=START - timedelta(days=1), days=1)[:50]
    )
    await insert_rows(engine, rows + outside)
    return summarise(rows)


def vendor_payload(seeded: Seeded, short_pct: int, *, lines: bool = False) -> dict[str, Any]:
    """Seed 000's `/v1/usage` body for a vendor that saw `short_pct`% fewer calls and cost per provider."""
    calls = {p: n - n * short_pct // 100 for p, (n, _) in seeded.by_provider.items()}
    cost = {p: c * (100 - short_pct) / 100 for p, (_, c) in seeded.by_provider.items()}
    by_provider = {p: {"calls": calls[p], "cost": cost[p]} for p in calls}
    body: dict[str, Any] = {
        "total_transactions": sum(calls.values()),
        "total_cost": sum(cost.values(), Decimal(0)),
        "by_provider": by_provider,
    }
    if lines:
        body["lines"] = [
            {"provider": p, "model": m, "date": d.isoformat(), "calls": n, "cost": c}
            for (p, m, d), (n, c) in sorted(seeded.by_model_day.items())
        ]
    return body


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()
