"""Quotas: one-statement all-or-nothing admission, idempotent settlement, leases, periods as rows,
compare-and-swap resets, and seed 001's quota queries (`persistence.quotas`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import InvalidRequestError, NotFoundError
from persistence.quotas import TIERS, QuotaLimits, Quotas, Reservation

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
UNLIMITED = QuotaLimits(requests=None, tokens=None)


async def _counter_rows(conn: AsyncConnection, company: str) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    rows = await conn.execute(
        text("SELECT scope, metric, used, held FROM quota_counters WHERE company_id = :c"), {"c": company}
    )
    return {(r.scope, r.metric): (r.used, r.held) for r in rows}


async def test_admit_reserves_on_every_limit_and_settle_replaces_it(engine: AsyncEngine, connection: AsyncConnection) -> None:
    quotas = Quotas(engine)
    await quotas.set_user_quota("acme", "u1", limits=QuotaLimits(10, 1000, Decimal("5")))
    await quotas.set_company_quota("acme", "tokens", "daily", 5000)
    admission = await quotas.admit("acme", "u1", prompt_tokens=100, max_tokens=200, cost_usd=Decimal("0.5"), now=T0)
    assert admission.admitted and admission.reservation is not None
    assert {(lim.scope, lim.metric) for lim in admission.limits} == {
        ("user", "requests"), ("user", "tokens"), ("user", "cost_usd"), ("company", "tokens")
    }
    rows = await _counter_rows(connection, "acme")
    assert rows[("user", "tokens")] == (0, 300)
    assert rows[("company", "tokens")] == (0, 300)
    assert rows[("user", "cost_usd")] == (0, Decimal("0.5"))
    assert await quotas.settle(admission.reservation, tokens=120, cost_usd=Decimal("0.2"), now=T0)
    assert not await quotas.settle(admission.reservation, tokens=120, cost_usd=Decimal("0.2"), now=T0)
    assert not await quotas.release(admission.reservation, now=T0)
    rows = await _counter_rows(connection, "acme")
    assert rows[("user", "tokens")] == (120, 0)
    assert rows[("company", "tokens")] == (120, 0)
    assert rows[("user", "requests")] == (1, 0)
    assert rows[("user", "cost_usd")] == (Decimal("0.2"), 0)
