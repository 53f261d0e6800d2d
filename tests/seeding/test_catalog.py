"""The seeding catalog prices calls exactly as the ledger does from the migrated `vendor_prices`.

The catalog reads its list prices from genai-prices (the rows revision 0010 loads); these tests fail when
the two disagree (a retyped figure, or a later revision that changes a price the seed data use).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.ai_calls import AICallRecord, PriceBook
from persistence.ai_calls.prices import LOAD_PRICES
from persistence.seeding import MODEL_CATALOG, SeedPlan
from persistence.seeding.calls import make_ai_calls
from persistence.seeding.generate import Clock

AS_OF = datetime(2025, 11, 19, tzinfo=UTC)


async def price_book(connection: AsyncConnection) -> PriceBook:
    return PriceBook((await connection.execute(text(LOAD_PRICES))).all())


async def test_every_catalog_model_has_its_vendor_price(connection: AsyncConnection) -> None:
    book = await price_book(connection)
    for spec in MODEL_CATALOG:
        price = book.lookup(spec.provider, spec.model, None, AS_OF)
        assert price is not None, f"{spec.provider}/{spec.model} has no price in vendor_prices"
        assert (
            price.input_per_mtok,
            price.output_per_mtok,
            price.cache_read_per_mtok,
            price.cache_write_per_mtok,
        ) == (
            spec.input_per_mtok,
            spec.output_per_mtok,
            spec.cache_read_per_mtok,
            spec.cache_write_per_mtok,
        ), spec.model


async def test_seeded_calls_cost_what_the_ledger_computes(connection: AsyncConnection) -> None:
    book = await price_book(connection)
    plan = SeedPlan(ai_calls=600, days=10, as_of=AS_OF)
    rows = make_ai_calls(plan, Clock(AS_OF, plan.days))
    assert set(Counter(row["model"] for row in rows)) == {spec.model for spec in MODEL_CATALOG}
    for row in rows:
        priced = book.price(AICallRecord.coerce({**row, "cost_usd": None}))
        assert priced is not None and priced.cost_source == "computed"
        assert priced.cost_usd == row["cost_usd"], row["request_id"]
