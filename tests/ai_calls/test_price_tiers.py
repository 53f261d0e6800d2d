"""Context-length price tiers (revision 0016): a long call is priced at its tier, the whole call, as
genai-prices charges it; tenant overrides per tier; the sync imports every tier idempotently; the
revision up and down on a database with data."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from alembic.script import ScriptDirectory
from genai_prices.data import providers as bundled
from genai_prices.types import ModelPrice, Provider, Tier, TieredPrices, Usage
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.ai_calls import AICallLogger, AICallRecord, PriceBook
from persistence.ai_calls.price_api import add_price, list_prices
from persistence.ai_calls.price_sync import sync_prices
from persistence.ai_calls.prices import LOAD_PRICES
from persistence.config import DatabaseConfig
from persistence.migrations import alembic_config
from persistence.testing import ThrowawayPostgres
from tests.test_cli import persistence
from tests.test_migrations import alembic, empty_db

__all__ = ["empty_db"]  # the fixture, shared with tests/test_migrations.py

D = Decimal
AT = datetime(2026, 3, 1, 12, tzinfo=UTC)
SONNET = ("anthropic", "claude-sonnet-4-5")


def sonnet_prices() -> ModelPrice:
    model = next(m for m in next(p for p in bundled if p.id == "anthropic").models if m.id == SONNET[1])
    assert isinstance(model.prices, ModelPrice)
    return model.prices


def test_genai_prices_publishes_the_tiers_this_file_computes_with() -> None:
    """The rates the hand computations below use, as genai-prices publishes them (USD per Mtok):
    base / above 200k input tokens, each rate charged for the whole call."""
    prices = sonnet_prices()
    rates = {}
    for key in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"):
        value = getattr(prices, key)
        assert isinstance(value, TieredPrices)
        rates[key] = (value.base, [(t.start, t.price) for t in value.tiers])
    assert rates == {
        "input_mtok": (D("3"), [(200_000, D("6"))]),
        "output_mtok": (D("15"), [(200_000, D("22.5"))]),
        "cache_read_mtok": (D("0.3"), [(200_000, D("0.6"))]),
        "cache_write_mtok": (D("3.75"), [(200_000, D("7.5"))]),
    }


async def book(connection: AsyncConnection) -> PriceBook:
    return PriceBook((await connection.execute(text(LOAD_PRICES))).all())


def call(
    input_tokens: int, *, cache_read: int = 0, cache_write: int = 0, org: str | None = None
) -> AICallRecord:
    return AICallRecord(
        provider=SONNET[0],
        model="claude-sonnet-4-5-20250929",
        input_tokens=input_tokens,
        output_tokens=10_000,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        organization_id=org,
        created_at=AT,
    )


async def test_a_250k_input_call_is_priced_at_the_upper_tier_the_whole_call(
    connection: AsyncConnection,
) -> None:
    prices = await book(connection)
    # 150k uncached + 80k cache reads + 20k cache writes = 250k input tokens > 200k: every bucket at
    # the upper tier. 150_000*6 + 80_000*0.6 + 20_000*7.5 + 10_000*22.5 = 1_323_000 per Mtok.
    record = call(150_000, cache_read=80_000, cache_write=20_000)
    quote = prices.quote(record)
    assert quote is not None
    cost, computed, source, price_id = quote
    assert (cost, computed, source) == (D("1.323000"), D("1.323"), "computed")
    tier = await connection.execute(
        text("SELECT min_input_tokens FROM vendor_prices WHERE id = :id"), {"id": price_id}
    )
    assert tier.scalar() == 200_000
    # genai-prices' own computation of the same usage agrees (its input_tokens include cached ones).
    usage = Usage(
        input_tokens=250_000, cache_read_tokens=80_000, cache_write_tokens=20_000, output_tokens=10_000
    )
    assert sonnet_prices().calc_price(usage)["total_price"] == computed


async def test_a_100k_call_and_a_call_of_exactly_200k_are_priced_at_the_base_tier(
    connection: AsyncConnection,
) -> None:
    prices = await book(connection)
    # 100_000*3 + 10_000*15 = 450_000 per Mtok.
    assert prices.quote(call(100_000))[:3] == (D("0.450000"), D("0.45"), "computed")  # type: ignore[index]
    # genai-prices' threshold is strict: 200_000 input tokens are not above 200k. 200_000*3 + 150_000.
    assert prices.quote(call(200_000))[:3] == (D("0.750000"), D("0.75"), "computed")  # type: ignore[index]
    # 200_001: the upper tier. 200_001*6 + 10_000*22.5 = 1_425_006.
    assert prices.quote(call(200_001))[:3] == (D("1.425006"), D("1.425006"), "computed")  # type: ignore[index]


async def test_the_logger_stores_the_tier_row_that_priced_a_long_call(engine: AsyncEngine) -> None:
    async with AICallLogger(engine) as log:
        long_id = await log.log_call(
            provider="anthropic",
            model="claude-sonnet-4-5",
            input_tokens=250_000,
            output_tokens=10_000,
            created_at=AT,
        )
        short_id = await log.log_call(
            provider="anthropic",
            model="claude-sonnet-4-5",
            input_tokens=100_000,
            output_tokens=10_000,
            created_at=AT,
        )
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT c.cost_usd, p.min_input_tokens FROM ai_calls c JOIN vendor_prices p ON p.id = c.price_id "
                    "WHERE c.id = ANY(:ids) ORDER BY c.id"
                ),
                {"ids": [long_id, short_id]},
            )
        ).all()
    # 250_000*6 + 10_000*22.5 = 1_725_000; 100_000*3 + 10_000*15 = 450_000.
    assert [tuple(r) for r in rows] == [(D("1.725000"), 200_000), (D("0.450000"), 0)]


async def test_a_tenant_overrides_one_tier(engine: AsyncEngine) -> None:
    override = await add_price(
        engine,
        *SONNET,
        input_per_mtok=D("5"),
        output_per_mtok=D("20"),
        tenant_id="acme",
        min_input_tokens=200_000,
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert (override.tenant_id, override.min_input_tokens) == ("acme", 200_000)
    listed = await list_prices(engine, provider=SONNET[0], model=SONNET[1], tenant_id="acme")
    assert listed == [override]
    async with engine.connect() as conn:
        prices = await book(conn)
    long_acme = prices.quote(call(250_000, org="acme"))
    assert long_acme is not None
    # acme's tier: 250_000*5 + 10_000*20 = 1_450_000.
    assert (long_acme[0], long_acme[3]) == (D("1.450000"), override.id)
    # acme's short call: no override of the base tier, so the global base. 100_000*3 + 10_000*15.
    short_acme = prices.quote(call(100_000, org="acme"))
    assert short_acme is not None and short_acme[0] == D("0.450000") and short_acme[3] != override.id
    # Another tenant's long call: the global tier. 250_000*6 + 10_000*22.5.
    other = prices.quote(call(250_000, org="other"))
    assert other is not None and other[0] == D("1.725000")


def anthropic_with_sonnet(prices: ModelPrice) -> list[Provider]:
    provider = copy.deepcopy(next(p for p in bundled if p.id == "anthropic"))
    next(m for m in provider.models if m.id == SONNET[1]).prices = prices
    return [provider]


async def test_sync_imports_every_tier_idempotently_and_a_changed_tier_is_a_new_row(
    engine: AsyncEngine,
) -> None:
    tiers = await list_prices(engine, provider=SONNET[0], model=SONNET[1], tenant_id="")
    assert [(p.min_input_tokens, p.input_per_mtok, p.output_per_mtok, p.source) for p in tiers] == [
        (0, D("3"), D("15"), "genai-prices"),
        (200_000, D("6"), D("22.5"), "genai-prices"),
    ]
    for _ in range(2):
        report = await sync_prices(engine, providers=["anthropic", "google"])
        assert (report.added, report.changed, report.rows_inserted, report.rows_closed) == (0, 0, 0, 0)
        assert not [c for c in report.changes if "under-priced" in c.reason]
    assert await list_prices(engine, provider=SONNET[0], model=SONNET[1], tenant_id="") == tiers

    # Upstream raises the upper tier's input rate only: one new row for that tier, from the sync's time.
    changed = ModelPrice(
        input_mtok=TieredPrices(D("3"), [Tier(200_000, D("6.5"))]),
        output_mtok=TieredPrices(D("15"), [Tier(200_000, D("22.5"))]),
        cache_read_mtok=TieredPrices(D("0.3"), [Tier(200_000, D("0.6"))]),
        cache_write_mtok=TieredPrices(D("3.75"), [Tier(200_000, D("7.5"))]),
        cache_write_1h_mtok=TieredPrices(D("6"), [Tier(200_000, D("12"))]),
    )
    report = await sync_prices(engine, source=anthropic_with_sonnet(changed), providers=["anthropic"])
    assert (report.changed, report.rows_inserted, report.rows_closed) == (1, 1, 1)
    after = await list_prices(engine, provider=SONNET[0], model=SONNET[1], tenant_id="")
    assert [(p.min_input_tokens, p.input_per_mtok, p.effective_to is None) for p in after] == [
        (0, D("3"), True),
        (200_000, D("6"), False),
        (200_000, D("6.5"), True),
    ]
    again = await sync_prices(engine, source=anthropic_with_sonnet(changed), providers=["anthropic"])
    assert (again.changed, again.rows_inserted) == (0, 0)

    # Upstream drops the tiers: the upper tier is closed, so long calls get the base price again.
    flat = ModelPrice(
        input_mtok=D("3"),
        output_mtok=D("15"),
        cache_read_mtok=D("0.3"),
        cache_write_mtok=D("3.75"),
        cache_write_1h_mtok=D("6"),
    )
    report = await sync_prices(engine, source=anthropic_with_sonnet(flat), providers=["anthropic"])
    # (The test's syncs share one transaction, so one now(): the 6.5 row, which started at that
    # instant, never applied and is deleted; the 6 row already ends there.)
    assert (report.changed, report.rows_inserted, report.rows_deleted) == (1, 0, 1)
    open_rows = await list_prices(
        engine, provider=SONNET[0], model=SONNET[1], tenant_id="", at=datetime.now(UTC)
    )
    assert [p.min_input_tokens for p in open_rows] == [0]


async def test_a_hand_entered_tier_keeps_the_sync_off_the_model(engine: AsyncEngine) -> None:
    await add_price(
        engine,
        "google",
        "gemini-2.5-pro",
        input_per_mtok=D("2"),
        output_per_mtok=D("12"),
        min_input_tokens=128_000,
        effective_from=datetime(2026, 6, 1, tzinfo=UTC),
    )
    report = await sync_prices(engine, providers=["google"])
    [skipped] = [c for c in report.changes if c.model == "gemini-2.5-pro"]
    assert skipped.kind == "skipped"
    assert report.rows_inserted == 0


def test_revision_0016_up_and_down_on_a_database_with_calls(pg: ThrowawayPostgres, empty_db: str) -> None:
    database = empty_db.split("@/", 1)[1].split("?", 1)[0]
    below = ScriptDirectory.from_config(alembic_config()).get_revision("0016").down_revision
    assert isinstance(below, str)
    up = alembic(empty_db, "upgrade", below)
    assert up.returncode == 0, up.stderr
    pg.server.psql(
        "INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, cost_usd, price_id) "
        "SELECT 1, '2026-01-01 10:05Z', provider, model, 250000, 10, 0.75, id FROM vendor_prices "
        "WHERE provider = 'anthropic' AND model = 'claude-sonnet-4-5' AND tenant_id = '';",
        database=database,
    )
    up = alembic(empty_db, "upgrade", "0016")
    assert up.returncode == 0, up.stderr
    tiers = (
        "SELECT min_input_tokens, input_per_mtok FROM vendor_prices WHERE provider = 'anthropic' "
        "AND model = 'claude-sonnet-4-5' AND tenant_id = '' ORDER BY min_input_tokens;"
    )
    assert pg.server.psql(tiers, database=database).split() == ["0|3.000000", "200000|6.000000"]
    in_view = "SELECT count(*) FROM global_vendor_pricing WHERE vendor = 'anthropic' AND model = 'claude-sonnet-4-5';"
    assert pg.server.psql(in_view, database=database).strip() == "1"  # base tiers only
    # A call priced by the upper tier: the downgrade refuses (its price would be gone).
    pg.server.psql(
        "INSERT INTO ai_calls (id, created_at, provider, model, input_tokens, output_tokens, cost_usd, price_id) "
        "SELECT 2, '2026-01-01 10:06Z', provider, model, 250000, 10, 1.5, id FROM vendor_prices "
        "WHERE provider = 'anthropic' AND model = 'claude-sonnet-4-5' AND min_input_tokens = 200000;",
        database=database,
    )
    refused = alembic(empty_db, "downgrade", below)
    assert refused.returncode != 0
    assert "context-length tier" in refused.stderr
    assert pg.server.psql("SELECT version_num FROM alembic_version;", database=database).strip() == "0016"
    pg.server.psql("DELETE FROM ai_calls WHERE id = 2;", database=database)
    down = alembic(empty_db, "downgrade", below)
    assert down.returncode == 0, down.stderr
    base = (
        "SELECT input_per_mtok FROM vendor_prices WHERE provider = 'anthropic' "
        "AND model = 'claude-sonnet-4-5' AND tenant_id = '';"
    )
    assert pg.server.psql(base, database=database).split() == ["3.000000"]  # the upper tier is gone
    columns = "SELECT count(*) FROM information_schema.columns WHERE column_name = 'min_input_tokens';"
    assert pg.server.psql(columns, database=database).strip() == "0"
    assert pg.server.psql("SELECT count(*) FROM ai_calls;", database=database).strip() == "1"
    again = alembic(empty_db, "upgrade", "0016")
    assert again.returncode == 0, again.stderr
    assert pg.server.psql(tiers, database=database).split() == ["0|3.000000", "200000|6.000000"]


@pytest.mark.commits
async def test_prices_add_and_list_take_a_tier_on_the_command_line(
    pg: ThrowawayPostgres, fresh_database: DatabaseConfig
) -> None:
    url = pg.server.url(fresh_database.database or "")
    add = persistence(
        url,
        "prices",
        "add",
        "acme",
        "acme-1",
        "--input",
        "2",
        "--output",
        "8",
        "--above-input-tokens",
        "128000",
    )
    assert (add.returncode, add.stderr) == (0, ""), add.stderr
    assert "acme/acme-1 (global, calls above 128000 input tokens)" in add.stdout
    listed = persistence(
        url, "prices", "list", "--provider", "acme", "--above-input-tokens", "128000", "--json"
    )
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["model"], row["min_input_tokens"], row["input_per_mtok"]) == ("acme-1", 128_000, "2.000000")
    base = persistence(url, "prices", "list", "--provider", "acme", "--above-input-tokens", "0", "--json")
    assert json.loads(base.stdout) == []
    bad = persistence(
        url, "prices", "add", "acme", "acme-1", "--input", "1", "--output", "1", "--above-input-tokens", "-5"
    )
    assert bad.returncode == 2 and "not negative" in bad.stderr
