"""The typed price API: Decimal only, tenant overrides, a new price ending the open one, listing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger, AICallRecord, PriceBook
from persistence.ai_calls.price_api import FloatPriceError, add_price, list_prices
from persistence.errors import ConflictError, ValidationError
from tests.ai_calls.conftest import scalar

D = Decimal
START = datetime(2026, 2, 1, tzinfo=UTC)


async def test_floats_and_inexact_prices_are_refused(engine: AsyncEngine) -> None:
    with pytest.raises(FloatPriceError, match="float"):
        await add_price(engine, "acme", "m", input_per_mtok=0.1, output_per_mtok=D(1), effective_from=START)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="6 decimal places"):
        await add_price(
            engine, "acme", "m", input_per_mtok=D("0.0000001"), output_per_mtok=D(1), effective_from=START
        )
    with pytest.raises(ValidationError, match="timezone-aware"):
        await add_price(
            engine,
            "acme",
            "m",
            input_per_mtok=D(1),
            output_per_mtok=D(1),
            effective_from=datetime(2026, 2, 1),  # noqa: DTZ001 - the naive value under test
        )
    assert await list_prices(engine, provider="acme") == []


async def test_a_tenant_override_wins_for_its_calls_only(engine: AsyncEngine) -> None:
    base = await add_price(
        engine, "Acme", "m", input_per_mtok=D(2), output_per_mtok=D(8), effective_from=START
    )
    vip = await add_price(
        engine, "acme", "m", input_per_mtok=D(1), output_per_mtok=D(4), effective_from=START, tenant_id="vip"
    )
    assert (
        base.provider,
        base.tenant_id,
        base.cache_read_per_mtok,
        base.reasoning_per_mtok,
        base.source,
    ) == (
        "acme",
        "",
        D(2),
        D(8),
        "manual",
    )
    assert vip.cache_write_1h_per_mtok is None
    async with AICallLogger(engine) as log:
        for org in ("vip", "other"):
            await log.log_call(
                provider="acme",
                model="m",
                input_tokens=1_000_000,
                output_tokens=0,
                organization_id=org,
                request_id=org,
                created_at=START + timedelta(days=1),
            )
    costs = await scalar(
        engine,
        "SELECT string_agg(organization_id || '=' || cost_usd || '@' || (price_id = :vip)::text, ' ' "
        "ORDER BY organization_id) FROM ai_calls WHERE provider = 'acme'",
        vip=vip.id,
    )
    assert costs == "other=2.000000@false vip=1.000000@true"
    assert await list_prices(engine, provider="acme", tenant_id="vip") == [vip]
    assert await list_prices(engine, provider="acme", tenant_id="") == [base]
    assert await list_prices(engine, provider="acme", at=START - timedelta(seconds=1)) == []


async def test_a_new_price_ends_the_open_one_and_overlaps_are_conflicts(engine: AsyncEngine) -> None:
    first = await add_price(
        engine, "acme", "m", input_per_mtok=D(2), output_per_mtok=D(8), effective_from=START
    )
    later = START + timedelta(days=30)
    second = await add_price(
        engine, "acme", "m", input_per_mtok=D(3), output_per_mtok=D(9), effective_from=later
    )
    [closed, open_] = await list_prices(engine, provider="acme")
    assert (closed.id, closed.effective_to, open_.id, open_.effective_to) == (
        first.id,
        later,
        second.id,
        None,
    )
    with pytest.raises(ConflictError):  # a bounded period inside an existing one
        await add_price(
            engine,
            "acme",
            "m",
            input_per_mtok=D(1),
            output_per_mtok=D(1),
            effective_from=START + timedelta(days=1),
            effective_to=START + timedelta(days=2),
        )
    assert len(await list_prices(engine, provider="acme")) == 2


def test_a_dated_name_resolves_through_genai_prices_match_rules() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        (1, "anthropic", "claude-sonnet-4-5", "", D(3), D(15), D("0.3"), D("3.75"), D(15), at, None, D(6)),
        (2, "anthropic", "claude-sonnet-4-5", "vip", D(1), D(5), D("0.1"), D(1), D(5), at, None, D(2)),
        (3, "openai", "gpt-4o", "", D("2.5"), D(10), D("1.25"), D("2.5"), D(10), at, None, None),
    ]
    book = PriceBook(rows)

    def price_id(provider: str, model: str, org: str | None = None) -> int | None:
        record = AICallRecord(
            provider=provider,
            model=model,
            input_tokens=1,
            output_tokens=1,
            organization_id=org,
            created_at=at,
        )
        quote = book.quote(record)
        return None if quote is None else quote[3]

    assert price_id("anthropic", "claude-sonnet-4-5-20250929") == 1
    assert price_id("anthropic", "claude-sonnet-4-5-20250929", "vip") == 2  # the tenant's override covers it
    assert price_id("anthropic", "claude-sonnet-4-20250514") is None  # another model: never borrowed
    assert price_id("openai", "gpt-4o-mini") is None
    assert price_id("openai", "chatgpt-4o-latest") is None  # genai-prices prices it apart from gpt-4o
