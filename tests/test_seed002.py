"""Seed 002's "Post-Migration Verification", run as the seed writes it, after `alembic upgrade head`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.migration_drops import drops_of
from persistence.migrations import alembic_config
from persistence.testing import ThrowawayPostgres
from tests.test_migrations import alembic

# Verbatim from seed 002 (database/README.md, "Post-Migration Verification", steps 1 and 2).
SEED_TABLES_EXIST = """SELECT table_name FROM information_schema.tables 
WHERE table_name IN (
  'cost_calculations', 'cost_alerts', 'global_vendor_pricing', 
  'rate_limit_configs', 'company_quotas'
);"""  # noqa: W291 (the seed's trailing spaces, kept)
SEED_DEFAULT_DATA = """SELECT COUNT(*) FROM global_vendor_pricing;
SELECT COUNT(*) FROM rate_limit_configs;
SELECT COUNT(*) FROM company_quotas;"""

SEED_NAMES = {
    "cost_calculations",
    "cost_alerts",
    "global_vendor_pricing",
    "rate_limit_configs",
    "company_quotas",
}

IN_FORCE_GLOBAL = (
    "SELECT count(*) FROM vendor_prices WHERE tenant_id = '' AND min_input_tokens = 0 AND effective_from <= now() "
    "AND (effective_to IS NULL OR effective_to > now());"
)


@pytest.fixture
def upgraded(pg: ThrowawayPostgres) -> Iterator[tuple[str, str]]:
    """(url, database name) of a new database brought to head by the alembic command line."""
    name = pg.empty_database("seed002_verification")
    url = pg.server.url(name)
    up = alembic(url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    yield url, name
    pg.drop(name)


def verify(pg: ThrowawayPostgres, database: str) -> tuple[set[str], list[int]]:
    tables = pg.server.psql(SEED_TABLES_EXIST, database=database).split()
    assert len(tables) == len(set(tables)), tables  # one schema, each name once
    counts = [int(n) for n in pg.server.psql(SEED_DEFAULT_DATA, database=database).split()]
    return set(tables), counts


def test_the_seeds_verification_queries_find_the_tables_and_their_default_data(
    pg: ThrowawayPostgres, upgraded: tuple[str, str]
) -> None:
    url, database = upgraded
    tables, (prices, rate_limits, quotas) = verify(pg, database)
    assert tables == SEED_NAMES
    # The view shows every global price in force (revision 0003's list prices, or a sync's), base tiers.
    assert prices == int(pg.server.psql(IN_FORCE_GLOBAL, database=database)) > 0
    assert rate_limits == 3  # seed 002's default limits, as the global rows
    assert quotas == 0  # seed 002 inserts quotas only for existing companies: there are none yet
    # Down to before this revision and up again: the seed's names go and come back, defaults once.
    assert alembic(url, "downgrade", "0008").returncode == 0
    assert set(pg.server.psql(SEED_TABLES_EXIST, database=database).split()) == {"cost_alerts"}
    again = alembic(url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert verify(pg, database) == (tables, [prices, rate_limits, quotas])


async def test_global_vendor_pricing_is_the_global_prices_in_force_under_the_seeds_names(
    connection: AsyncConnection,
) -> None:
    now = datetime.now(UTC)
    rows = [
        # model, tenant, effective_from, effective_to: only the first is a global price in force now
        ("probe-current", "", now - timedelta(days=1), None),
        ("probe-expired", "", now - timedelta(days=9), now - timedelta(days=2)),
        ("probe-future", "", now + timedelta(days=2), None),
        ("probe-tenant", "acme-corp", now - timedelta(days=1), None),
    ]
    for model, tenant, start, end in rows:
        await connection.execute(
            text(
                "INSERT INTO vendor_prices (provider, model, tenant_id, input_per_mtok, output_per_mtok, "
                "cache_read_per_mtok, cache_write_per_mtok, cache_write_1h_per_mtok, reasoning_per_mtok, "
                "effective_from, effective_to, source) "
                "VALUES ('openai', :m, :t, 0.075, 10.5, 0.0375, 0.09375, 0.15, 10.5, :s, :e, 'manual')"
            ),
            {"m": model, "t": tenant, "s": start, "e": end},
        )
    shown = (
        await connection.execute(
            text(
                "SELECT vendor, model, pricing_model, input_price, output_price, input_price_per_1k_tokens, "
                "output_price_per_1k_tokens, input_price_per_1m_tokens, output_price_per_1m_tokens, "
                "cache_read_price_per_1m_tokens, cache_write_price_per_1m_tokens, "
                "cache_write_1h_price_per_1m_tokens, reasoning_price_per_1m_tokens, currency, effective_date, "
                "effective_until, is_active, source "
                "FROM global_vendor_pricing WHERE model LIKE 'probe-%'"
            )
        )
    ).all()
    assert len(shown) == 1
    row = shown[0]._mapping
    assert (row["vendor"], row["model"], row["pricing_model"], row["currency"]) == (
        "openai", "probe-current", "tokens", "USD",
    )  # fmt: skip
    # Per token, per 1K and per 1M: exact decimals (0.075 per 1M is 7.5e-8 per token, not rounded away).
    assert row["input_price"] == Decimal("0.000000075") and row["output_price"] == Decimal("0.0000105")
    assert row["input_price_per_1k_tokens"] == Decimal("0.000075")
    assert row["output_price_per_1k_tokens"] == Decimal("0.0105")
    assert (row["input_price_per_1m_tokens"], row["output_price_per_1m_tokens"]) == (
        Decimal("0.075"),
        Decimal("10.5"),
    )
    assert (
        row["cache_read_price_per_1m_tokens"], row["cache_write_price_per_1m_tokens"],
        row["cache_write_1h_price_per_1m_tokens"], row["reasoning_price_per_1m_tokens"],
    ) == (Decimal("0.0375"), Decimal("0.09375"), Decimal("0.15"), Decimal("10.5"))  # fmt: skip
    assert row["effective_date"] == rows[0][2] and row["effective_until"] is None
    assert row["is_active"] is True and row["source"] == "manual"
    # What a user of seed 002 asks: the active price of a model.
    price = await connection.scalar(
        text(
            "SELECT input_price FROM global_vendor_pricing "
            "WHERE vendor = 'openai' AND model = 'probe-current' AND is_active = true"
        )
    )
    assert price == Decimal("0.000000075")
    kind = await connection.scalar(
        text("SELECT table_type FROM information_schema.tables WHERE table_name = 'global_vendor_pricing'")
    )
    assert kind == "VIEW"


def test_rollback_names_what_the_downgrade_drops_the_view_included() -> None:
    script = ScriptDirectory.from_config(alembic_config()).get_revision("0012")
    assert script is not None
    assert drops_of(script) == (
        "index ix_ai_call_usage_hourly_product_id_hour",
        "index ix_ai_call_usage_hourly_customer_id_hour",
        "index ix_ai_call_usage_hourly_organization_id_hour",
        "table company_quotas",
        "table rate_limit_configs",
        "view global_vendor_pricing",
    )
