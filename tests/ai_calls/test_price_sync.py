"""genai-prices into `vendor_prices`: what revision 0010 loads, idempotent syncs, rows nobody may
overwrite, a changed upstream price as a new effective-dated row."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from genai_prices.data import providers as bundled
from genai_prices.types import ModelPrice, Provider, Tier, TieredPrices
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger
from persistence.ai_calls.price_api import add_price, list_prices
from persistence.ai_calls.price_sync import EPOCH, PriceRow, genai_rows, plan_sync, sync_prices
from persistence.ai_calls.price_sync import _Existing as Existing
from tests.ai_calls.conftest import scalar

D = Decimal


def openai_with(model: str, **prices: Decimal) -> list[Provider]:
    """A copy of genai-prices' OpenAI data with `model`'s prices replaced (an upstream price change)."""
    provider = copy.deepcopy(next(p for p in bundled if p.id == "openai"))
    found = next(m for m in provider.models if m.id == model)
    found.prices = ModelPrice(**prices)
    return [provider]


async def version(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "SELECT version FROM vendor_prices_version"))


async def test_upgrade_head_loads_genai_prices_for_current_models(engine: AsyncEngine) -> None:
    rows = {
        (p.provider, p.model): p
        for p in await list_prices(engine, tenant_id="", min_input_tokens=0)
        if p.effective_to is None
    }
    for key in [
        ("openai", "gpt-5"),
        ("anthropic", "claude-sonnet-4-5"),
        ("google", "gemini-2.5-pro"),
        ("google", "gemini-2.5-flash"),
        ("cohere", "command-r-plus"),
        ("anthropic", "claude-sonnet-4-0"),
    ]:
        assert key in rows, key
        assert rows[key].source == "genai-prices", rows[key]
    gpt5 = rows[("openai", "gpt-5")]
    assert (gpt5.input_per_mtok, gpt5.output_per_mtok, gpt5.cache_read_per_mtok, gpt5.reasoning_per_mtok) == (
        D("1.25"),
        D("10"),
        D("0.125"),
        D("10"),
    )
    sonnet = rows[("anthropic", "claude-sonnet-4-5")]
    assert (sonnet.cache_write_per_mtok, sonnet.cache_write_1h_per_mtok) == (D("3.75"), D("6"))
    tiers = [
        r for r in genai_rows(tiers=True)[0] if (r.provider, r.model) == ("anthropic", "claude-sonnet-4-5")
    ]
    assert [(r.min_input_tokens, r.input_per_mtok) for r in tiers] == [(0, D("3")), (200_000, D("6"))]
    # Revision 0003's hand-typed rows priced nothing on a fresh database: they are gone.
    assert await scalar(engine, "SELECT count(*) FROM vendor_prices WHERE source = 'migration 0003'") == 0
    # genai-prices' dated changes are effective-dated rows (o3's price cut of 2025-06-10).
    o3 = await list_prices(engine, provider="openai", model="o3", tenant_id="")
    assert [(p.effective_from, p.effective_to, p.input_per_mtok) for p in o3] == [
        (EPOCH, datetime(2025, 6, 10, tzinfo=UTC), D("10")),
        (datetime(2025, 6, 10, tzinfo=UTC), None, D("2")),
    ]


async def test_sync_is_idempotent(engine: AsyncEngine) -> None:
    before = await version(engine)
    first = await sync_prices(engine)
    second = await sync_prices(engine)
    for report in (first, second):
        assert (report.added, report.changed, report.skipped_manual, report.rows_inserted) == (0, 0, 0, 0)
        assert report.unchanged == len({(r.provider, r.model) for r in genai_rows(tiers=True)[0]})
    assert await version(engine) == before  # nothing was written
    reasons = {(c.provider, c.model): c.reason for c in first.unsupported}
    assert reasons[("deepseek", "deepseek-chat")] == "time-of-day prices are not modelled"  # off-peak prices


async def test_a_changed_upstream_price_is_a_new_effective_dated_row(engine: AsyncEngine) -> None:
    [old] = await list_prices(engine, provider="openai", model="gpt-5")
    changed = openai_with("gpt-5", input_mtok=D("2"), cache_read_mtok=D("0.2"), output_mtok=D("16"))
    gpt54 = next(m for m in changed[0].models if m.id == "gpt-5.4")  # tiered: base 2.5 up to 272k tokens
    gpt54.prices = ModelPrice(input_mtok=TieredPrices(D("3"), [Tier(272_000, D("6"))]), output_mtok=D("15"))
    dry = await sync_prices(engine, source=changed, dry_run=True)
    assert (dry.changed, dry.rows_inserted, dry.rows_closed) == (2, 3, 3)  # gpt-5.4: both tiers
    assert await list_prices(engine, provider="openai", model="gpt-5") == [old]

    report = await sync_prices(engine, source=changed)
    assert (report.added, report.changed, report.rows_inserted, report.rows_closed) == (0, 2, 3, 3)
    change, tiered = sorted((c for c in report.changes if c.kind == "changed"), key=lambda c: c.model)
    assert (change.provider, change.model, change.reason) == ("openai", "gpt-5", "")
    assert (tiered.model, tiered.reason) == ("gpt-5.4", "")  # tiers are imported, nothing under-priced
    assert [
        (p.min_input_tokens, p.input_per_mtok)
        for p in await list_prices(engine, provider="openai", model="gpt-5.4")
    ] == [(0, D("2.5")), (0, D("3")), (272_000, D("5")), (272_000, D("6"))]
    closed, new = await list_prices(engine, provider="openai", model="gpt-5")
    # History is kept: the old row keeps its prices and ends where the new one starts (the sync's time).
    assert (closed.id, closed.input_per_mtok, closed.effective_from) == (old.id, D("1.25"), EPOCH)
    assert closed.effective_to == new.effective_from == change.effective_from
    assert (new.input_per_mtok, new.output_per_mtok, new.cache_read_per_mtok, new.cache_write_per_mtok) == (
        D("2"),
        D("16"),
        D("0.2"),
        D("2"),
    )
    assert new.effective_to is None
    again = await sync_prices(engine, source=changed)
    assert (again.changed, again.rows_inserted, again.rows_closed) == (0, 0, 0)


async def test_manual_rows_and_tenant_overrides_survive_a_sync(engine: AsyncEngine) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    manual = await add_price(
        engine,
        "openai",
        "gpt-5-mini",
        input_per_mtok=D("0.3"),
        output_per_mtok=D("2.4"),
        effective_from=start,
    )
    vip = await add_price(
        engine,
        "openai",
        "gpt-5",
        input_per_mtok=D("1"),
        output_per_mtok=D("8"),
        effective_from=start,
        tenant_id="vip",
    )
    upstream = openai_with("gpt-5-mini", input_mtok=D("9"), output_mtok=D("9"))
    gpt5 = next(m for m in upstream[0].models if m.id == "gpt-5")
    gpt5.prices = ModelPrice(input_mtok=D("9"), output_mtok=D("9"))
    report = await sync_prices(engine, source=upstream)
    skipped = {(c.provider, c.model) for c in report.changes if c.kind == "skipped"}
    assert skipped == {("openai", "gpt-5-mini")}
    rows = await list_prices(engine, provider="openai", model="gpt-5-mini")
    assert (
        rows[-1] == manual
    )  # the hand-entered row is untouched (the genai row before it was closed by add_price)
    assert [p.effective_to for p in rows[:-1]] == [start]
    assert await list_prices(engine, provider="openai", model="gpt-5", tenant_id="vip") == [vip]
    # The global gpt-5 row is genai-prices' own: it follows upstream.
    assert [
        p.input_per_mtok for p in await list_prices(engine, provider="openai", model="gpt-5", tenant_id="")
    ] == [
        D("1.25"),
        D("9"),
    ]


def test_a_scheduled_row_that_never_applied_is_replaced() -> None:
    """A row starting after the sync (a price genai-prices had announced) is deleted when upstream
    changes its plan; rows in force before the sync are only ever closed."""
    now = datetime(2026, 12, 7, tzinfo=UTC)
    later = now + timedelta(days=30)
    b1 = (D(1), D(2), D(1), D(1), D(2), None)
    b2 = (D(3), D(4), D(3), D(3), D(4), None)
    existing = [
        Existing(1, "openai", "m", b1, EPOCH, later, "genai-prices 0.2.4"),
        Existing(2, "openai", "m", b2, later, None, "genai-prices 0.2.4"),
    ]
    desired = [PriceRow("openai", "m", *b1, EPOCH, None, "genai-prices 0.2.5")]
    plan = plan_sync(existing, desired, now)
    assert (plan.deletes, plan.closes) == ([2], [])  # row 1 already ends where upstream changes its plan
    assert [(r.effective_from, r.effective_to) for r in plan.inserts] == [(later, None)]


async def test_a_model_0003_did_not_know_is_priced_by_the_logger(engine: AsyncEngine) -> None:
    at = datetime(2026, 11, 2, tzinfo=UTC)
    async with AICallLogger(engine) as log:
        ids = [
            await log.log_call(
                provider=provider,
                model=model,
                input_tokens=1_000_000,
                output_tokens=100_000,
                request_id=model,
                created_at=at,
            )
            for provider, model in (
                ("openai", "gpt-5-2025-08-07"),
                ("anthropic", "claude-sonnet-4-5-20250929"),
                ("anthropic", "claude-sonnet-4-20250514"),
            )
        ]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT c.cost_usd, c.cost_source, p.model FROM ai_calls c JOIN vendor_prices p ON p.id = c.price_id "
                    "WHERE c.id = ANY(:ids) ORDER BY c.id"
                ),
                {"ids": ids},
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (D("2.250000"), "computed", "gpt-5"),  # 1M * 1.25 + 0.1M * 10
        (D("8.250000"), "computed", "claude-sonnet-4-5"),  # above 200k input: 1M * 6 + 0.1M * 22.5
        (D("4.500000"), "computed", "claude-sonnet-4-0"),
    ]


async def test_a_price_added_while_a_logger_runs_prices_its_very_next_call(engine: AsyncEngine) -> None:
    change = datetime(2026, 11, 1, tzinfo=UTC)
    call: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1_000_000,
        "output_tokens": 0,
    }
    async with AICallLogger(engine) as log:  # default price_ttl: 60 s
        await log.log_call(**call, request_id="before", created_at=change - timedelta(hours=1))
        new = await add_price(
            engine, "openai", "gpt-4o", input_per_mtok=D("5"), output_per_mtok=D("20"), effective_from=change
        )
        await log.log_call(**call, request_id="after", created_at=change + timedelta(hours=2))
        await log.log_batch([{**call, "request_id": "batch", "created_at": change + timedelta(hours=3)}])
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT request_id, cost_usd, price_id FROM ai_calls WHERE request_id IN ('before', 'after', 'batch') "
                    "ORDER BY created_at"
                )
            )
        ).all()
    assert [(r[0], r[1]) for r in rows] == [
        ("before", D("2.500000")),
        ("after", D("5.000000")),
        ("batch", D("5.000000")),
    ]
    assert rows[0][2] != new.id and rows[1][2] == rows[2][2] == new.id
