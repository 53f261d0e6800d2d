"""`rate_limit_configs` and `company_quotas` reject rows the limits could not be enforced from."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from persistence.models import CompanyQuota, RateLimitConfig
from tests.models.test_constraints import expect_violation


def rate(**overrides: Any) -> RateLimitConfig:
    fields: dict[str, Any] = {
        "company_id": "acme-corp",
        "scope": "company",
        "metric": "requests",
        "period": "minute",
        "limit_value": Decimal(600),
    }
    return RateLimitConfig(**{**fields, **overrides})


def quota(**overrides: Any) -> CompanyQuota:
    fields: dict[str, Any] = {
        "company_id": "acme-corp",
        "metric": "cost_usd",
        "period": "monthly",
        "time_zone": "Europe/Paris",
        "limit_value": Decimal("1000.50"),
    }
    return CompanyQuota(**{**fields, **overrides})


async def test_the_default_rate_limits_are_seed_002s_as_global_rows(session: AsyncSession) -> None:
    rows = (await session.scalars(select(RateLimitConfig).order_by(RateLimitConfig.limit_value))).all()
    assert [
        (r.company_id, r.scope, r.scope_id, r.metric, r.period, r.limit_value, r.burst) for r in rows
    ] == [
        ("", "global", "", "requests", "minute", Decimal(50), Decimal(100)),
        ("", "global", "", "requests", "hour", Decimal(1000), None),
        ("", "global", "", "requests", "day", Decimal(10000), None),
    ]
    assert all(r.enabled for r in rows)


async def test_valid_limits_are_stored(session: AsyncSession) -> None:
    session.add_all([
        rate(),
        rate(scope="tier", company_id="", scope_id="enterprise", limit_value=Decimal(5000), burst=Decimal(8000)),
        rate(scope="user", scope_id="user-1", metric="cost_usd", limit_value=Decimal("0.25")),
        rate(scope="key", scope_id="key-1", metric="concurrency", period=None, limit_value=Decimal(4)),
        quota(),
        quota(metric="requests", period="daily", limit_value=Decimal(100000)),
    ])  # fmt: skip
    await session.flush()


@pytest.mark.parametrize(
    ("row", "constraint"),
    [
        ({"scope": "team", "scope_id": "t1"}, "ck_rate_limit_configs_scope_known"),
        ({"metric": "images"}, "ck_rate_limit_configs_metric_known"),
        ({"period": "week"}, "ck_rate_limit_configs_period_known"),
        ({"metric": "concurrency"}, "ck_rate_limit_configs_period_known"),  # concurrency has no period
        ({"period": None}, "ck_rate_limit_configs_period_known"),  # a rate needs one
        ({"company_id": ""}, "ck_rate_limit_configs_company_given"),
        ({"scope": "global"}, "ck_rate_limit_configs_company_given"),  # global rows have no company
        ({"scope": "tier", "company_id": ""}, "ck_rate_limit_configs_scope_id_given"),  # which tier?
        ({"scope_id": "user-1"}, "ck_rate_limit_configs_scope_id_given"),
        ({"limit_value": Decimal("10.5")}, "ck_rate_limit_configs_limits_valid"),  # half a request
        ({"limit_value": Decimal(-1)}, "ck_rate_limit_configs_limits_valid"),
        ({"burst": Decimal(10)}, "ck_rate_limit_configs_limits_valid"),  # a burst below the limit
    ],
)
async def test_rate_limit_configs_reject(session: AsyncSession, row: dict[str, Any], constraint: str) -> None:
    await expect_violation(session, rate(**row), "23514", constraint)


@pytest.mark.parametrize(
    ("row", "constraint"),
    [
        ({"company_id": ""}, "ck_company_quotas_company_given"),
        ({"metric": "concurrency", "limit_value": Decimal(4)}, "ck_company_quotas_metric_known"),
        ({"period": "minute"}, "ck_company_quotas_period_known"),
        ({"time_zone": ""}, "ck_company_quotas_time_zone_given"),
        ({"metric": "tokens", "limit_value": Decimal("0.5")}, "ck_company_quotas_limit_valid"),
        ({"limit_value": Decimal("-0.01")}, "ck_company_quotas_limit_valid"),
    ],
)
async def test_company_quotas_reject(session: AsyncSession, row: dict[str, Any], constraint: str) -> None:
    await expect_violation(session, quota(**row), "23514", constraint)


async def test_one_row_per_key_a_missing_period_included(session: AsyncSession) -> None:
    concurrency = {"scope": "key", "scope_id": "key-1", "metric": "concurrency", "period": None}
    session.add_all([rate(), rate(**concurrency), quota()])
    await session.flush()
    await expect_violation(
        session,
        rate(limit_value=Decimal(5)),
        "23505",
        "uq_rate_limit_configs_company_id_scope_scope_id_metric_period",
    )
    # NULLS NOT DISTINCT: two concurrency limits for the same key are a duplicate too.
    session.add_all([rate(), rate(**concurrency), quota()])
    await session.flush()
    await expect_violation(
        session,
        rate(**concurrency, limit_value=Decimal(9)),
        "23505",
        "uq_rate_limit_configs_company_id_scope_scope_id_metric_period",
    )
    session.add_all([rate(), rate(**concurrency), quota()])
    await session.flush()
    await expect_violation(
        session, quota(limit_value=Decimal(1)), "23505", "uq_company_quotas_company_id_metric_period"
    )
