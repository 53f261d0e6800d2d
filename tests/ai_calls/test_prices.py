"""Vendor prices: the default rows (genai-prices, revision 0010), non-overlapping periods, computed costs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.ai_calls import AICallLogger, AICallRecord, PriceBook
from persistence.ai_calls.prices import LOAD_PRICES
from persistence.errors import ConflictError, translate
from persistence.models import VendorPrice


async def test_default_prices_cover_the_four_vendors(connection: AsyncConnection) -> None:
    rows = (await connection.execute(text(LOAD_PRICES))).all()
    book = PriceBook(rows)
    providers = {r.provider for r in rows}
    assert {"openai", "anthropic", "google", "cohere"} <= providers
    record = AICallRecord(
        provider="anthropic",
        model="claude-sonnet-4-20250514",
        input_tokens=1000,
        output_tokens=500,
        cache_read_tokens=10_000,
        cache_write_tokens=2_000,
        created_at=datetime(2025, 6, 1, tzinfo=UTC),
    )
    priced = book.price(record)
    assert priced is not None
    # 1000*3 + 500*15 + 10000*0.30 + 2000*3.75 = 21000 per million
    assert (priced.cost_usd, priced.computed_cost_usd, priced.cost_source) == (
        Decimal("0.021000"),
        Decimal("0.021"),
        "computed",
    )


async def test_overlapping_periods_are_a_conflict(connection: AsyncConnection) -> None:
    row = {
        "provider": "acme-ai",
        "model": "m",
        "input_per_mtok": 1,
        "output_per_mtok": 2,
        "cache_read_per_mtok": 0,
        "cache_write_per_mtok": 1,
        "reasoning_per_mtok": 2,
        "effective_from": datetime(2026, 1, 1, tzinfo=UTC),
        "effective_to": datetime(2026, 6, 1, tzinfo=UTC),
    }
    await connection.execute(insert(VendorPrice).values(row))
    # Adjacent is fine; so is the same period for a tenant.
    await connection.execute(
        insert(VendorPrice).values({**row, "effective_from": row["effective_to"], "effective_to": None})
    )
    await connection.execute(insert(VendorPrice).values({**row, "tenant_id": "vip"}))
    savepoint = await connection.begin_nested()
    with pytest.raises(DBAPIError) as info:
        await connection.execute(
            insert(VendorPrice).values(
                {**row, "effective_from": datetime(2026, 5, 1, tzinfo=UTC), "effective_to": None}
            )
        )
    await savepoint.rollback()
    err = translate(info.value)
    assert isinstance(err, ConflictError) and err.constraint == "vendor_prices_no_overlap"
    n = await connection.scalar(
        select(VendorPrice.id).where(VendorPrice.provider == "acme-ai").with_only_columns(text("count(*)"))
    )
    assert n == 3


async def test_log_call_without_a_cost_uses_the_default_price(engine: AsyncEngine) -> None:
    async with AICallLogger(engine) as log:
        call_id = await log.log_call(
            provider="openai",
            model="gpt-4o",
            usage={
                "prompt_tokens": 2000,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 100},
            },
            request_id="chatcmpl-1",
            created_at=datetime(2026, 2, 1, tzinfo=UTC),
        )
    async with engine.connect() as conn:
        row = (
            (await conn.execute(text("SELECT * FROM ai_calls WHERE id = :i"), {"i": call_id}))
            .mappings()
            .one()
        )
    # 976*2.50 + 200*10 + 1024*1.25 + 100*10 = 6720 per million
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        976,
        1024,
        200,
        100,
    )
    assert (row["cost_usd"], row["computed_cost_usd"], row["cost_source"]) == (
        Decimal("0.006720"),
        Decimal("0.006720000000"),
        "computed",
    )


def test_quotes_follow_effective_dates_through_the_memo() -> None:
    """The memoised quote equals the exact Decimal reference across period edges and tenants."""
    jan, mar, may = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 3, 5))
    d = Decimal
    rows = [
        (1, "acme-ai", "m", "", d("3"), d("15"), d("0.3"), d("3.75"), d("15"), jan, mar),
        (2, "acme-ai", "m", "", d("2.000001"), d("10"), d("0.2"), d("2.5"), d("10"), mar, None),
        (3, "acme-ai", "m", "vip", d("1"), d("1"), d("0"), d("0"), d("0"), mar, may),
        (4, "acme-ai", "x", "", d("0.0000001"), d("1"), d("0"), d("0"), d("0"), jan, None),  # 7 places
    ]
    book = PriceBook(rows)
    days = [jan.replace(day=1 + i % 27, month=1 + i % 7) for i in range(40)]  # back and forth in time
    for i, at in enumerate(days):
        for org in (None, "vip", "other"):
            for model in ("m", "x"):
                record = AICallRecord(provider="acme-ai", model=model, input_tokens=1000 + i, output_tokens=7 * i,
                                      cache_read_tokens=i, reasoning_tokens=3, organization_id=org,
                                      created_at=at)  # fmt: skip
                price = book.lookup("acme-ai", model, org, at)
                quote = book.quote(record)
                assert price is not None and quote is not None
                exact = price.cost(record)
                assert quote == (
                    exact.quantize(d("0.000001"), rounding="ROUND_HALF_UP"),
                    exact,
                    "computed",
                    price.id,
                )
                if org == "vip" and model == "m":
                    assert price.id == (3 if mar <= at < may else 1 if at < mar else 2)
    before = AICallRecord(
        provider="acme-ai", model="m", input_tokens=1, output_tokens=1, created_at=jan.replace(year=2025)
    )
    assert book.quote(before) is None
    given = AICallRecord(provider="acme-ai", model="m", input_tokens=1, output_tokens=1, cost_usd=d("0.25"),
                         created_at=jan.replace(year=2025))  # fmt: skip
    assert book.quote(given) == (d("0.250000"), None, "provided", None)
    half = AICallRecord(provider="acme-ai", model="x", input_tokens=0, output_tokens=500_000, created_at=mar)
    assert book.quote(half) == (d("0.500000"), d("0.5"), "computed", 4)


def test_a_snapshot_of_a_priced_model_gets_its_price() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    d = Decimal
    rows = [
        (1, "openai", "gpt-4o", "", d("2.5"), d("10"), d("1.25"), d("0"), d("10"), at, None),
        (2, "openai", "gpt-4o-mini", "", d("0.15"), d("0.6"), d("0.075"), d("0"), d("0.6"), at, None),
        (3, "openai", "gpt-4o-2024-05-13", "", d("5"), d("15"), d("0"), d("0"), d("15"), at, None),
        (4, "google", "gemini-1.5-pro", "", d("1.25"), d("5"), d("0.3125"), d("0"), d("5"), at, None),
        (5, "cohere", "command-r", "", d("0.15"), d("0.6"), d("0"), d("0"), d("0.6"), at, None),
    ]
    book = PriceBook(rows)

    def price_id(provider: str, model: str) -> int | None:
        price = book.lookup(provider, model, None, at)
        record = AICallRecord(provider=provider, model=model, input_tokens=1, output_tokens=1, created_at=at)
        quote = book.quote(record)
        assert (quote is None) == (price is None) and (quote is None or quote[3] == price.id)  # type: ignore[union-attr]
        return None if price is None else price.id

    assert price_id("openai", "gpt-4o-2024-08-06") == 1
    assert price_id("openai", "gpt-4o-mini-2024-07-18") == 2
    assert price_id("openai", "gpt-4o-2024-05-13") == 3  # a snapshot with its own price keeps it
    assert price_id("google", "gemini-1.5-pro-002") == 4
    assert price_id("cohere", "command-r-08-2024") == 5
    assert price_id("openai", "gpt-4o-latest") == 1
    # A snapshot's own price counts only where and when it is in force; elsewhere the model's does.
    vip_later = (6, "openai", "gpt-4o-2024-08-06", "vip", d("9"), d("9"), d("0"), d("0"), d("9"),
                 datetime(2026, 6, 1, tzinfo=UTC), None)  # fmt: skip
    book = PriceBook([*rows, vip_later])
    assert price_id("openai", "gpt-4o-2024-08-06") == 1  # no tenant, and before June
    assert book.lookup("openai", "gpt-4o-2024-08-06", "vip", at) == book.lookup("openai", "gpt-4o", None, at)
    june = datetime(2026, 6, 2, tzinfo=UTC)
    found = book.lookup("openai", "gpt-4o-2024-08-06", "vip", june)
    assert found is not None and found.id == 6
    vip_june = AICallRecord(provider="openai", model="gpt-4o-2024-08-06", input_tokens=1, output_tokens=1,
                            organization_id="vip", created_at=june)  # fmt: skip
    vip_march = dataclasses.replace(vip_june, created_at=at)
    assert [(q or (0, 0, 0, 0))[3] for q in map(book.quote, (vip_march, vip_june, vip_march))] == [1, 6, 1]
    # Anything else is not a snapshot: no guessing from a prefix.
    assert price_id("openai", "gpt-4o-audio-preview") is None
    assert price_id("openai", "gpt-4") is None
    assert price_id("anthropic", "gpt-4o-2024-08-06") is None


def test_one_hour_cache_writes_are_priced_at_their_own_rate_or_not_at_all() -> None:
    """Never at the 5-minute rate: a row without a 1-hour price does not price a call that has some."""
    at = datetime(2026, 3, 1, tzinfo=UTC)
    d = Decimal
    rows = [
        (1, "anthropic", "claude-a", "", d("3"), d("15"), d("0.3"), d("3.75"), d("15"), at, None, d("6")),
        (2, "anthropic", "claude-b", "", d("3"), d("15"), d("0.3"), d("3.75"), d("15"), at, None, None),
        (
            3,
            "anthropic",
            "claude-c",
            "",
            d("3"),
            d("15"),
            d("0.3"),
            d("3.75"),
            d("15"),
            at,
            None,
            d("6.0000001"),
        ),
    ]
    book = PriceBook(rows)

    def record(model: str, **kw: object) -> AICallRecord:
        fields: dict[str, object] = {"provider": "anthropic", "model": model, "input_tokens": 100,
                                     "output_tokens": 10, "cache_write_tokens": 2_000, "created_at": at}  # fmt: skip
        return AICallRecord(**{**fields, **kw})  # type: ignore[arg-type]

    # 100*3 + 10*15 + 2000*3.75 + 4000*6 = 31950 per million (the 5-minute rate would give 23950)
    assert book.quote(record("claude-a", cache_write_1h_tokens=4_000)) == (
        d("0.031950"),
        d("0.03195"),
        "computed",
        1,
    )
    assert book.quote(record("claude-b", cache_write_1h_tokens=4_000)) is None
    given = record("claude-b", cache_write_1h_tokens=4_000, cost_usd=d("0.5"))
    assert book.quote(given) == (d("0.500000"), None, "provided", None)
    assert book.quote(record("claude-b")) == (d("0.007950"), d("0.00795"), "computed", 2)  # no 1-hour writes
    # A 1-hour price with more than 6 places goes through the exact Decimal path.
    exact = d("0.0319500004")
    assert book.quote(record("claude-c", cache_write_1h_tokens=4_000)) == (
        d("0.031950"),
        exact,
        "computed",
        3,
    )
