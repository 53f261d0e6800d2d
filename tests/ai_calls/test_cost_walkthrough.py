"""Issue 15's first check, end to end as a user meets it: after `alembic upgrade head`, seed 000's
integration example logs `claude-sonnet-4-20250514` and a model migration 0003 never knew, both
priced from the price book; a model nobody prices is stored unpriced, counted as such, and priced
by `persistence prices reprice` after `persistence prices add`, the rollups equal to a raw scan."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import SyncAICallLogger
from persistence.ai_calls import fold_rollups
from persistence.config import DatabaseConfig
from persistence.testing import ThrowawayPostgres
from tests.ai_calls.test_reprice import assert_rollups_equal_a_raw_scan
from tests.ai_calls.test_sync import FakeAnthropicMessages, seed_db_config
from tests.test_cli import persistence

pytestmark = pytest.mark.commits

# A model genai-prices prices but revision 0003's hand-typed list did not.
NEW_MODEL = ("openai", "gpt-5-2025-08-07")
NOBODY = ("acme-ai", "acme-large-2026-12-01")


async def test_every_call_is_kept_and_priced_once_a_price_exists(
    migrated: ThrowawayPostgres, fresh_database: DatabaseConfig, engine: AsyncEngine
) -> None:
    async with engine.connect() as conn:
        known_to_0003 = await conn.scalar(
            text(
                "SELECT count(*) FROM vendor_prices WHERE model LIKE 'gpt-5%' AND source IS DISTINCT FROM 'genai-prices'"
            )
        )
    assert known_to_0003 == 0
    pg_logger = SyncAICallLogger(seed_db_config(migrated, fresh_database))
    messages = FakeAnthropicMessages()

    def make_ai_call(provider: str, model: str, prompt: str, customer_id: str) -> str:
        """Seed 000's `make_ai_call`, as written but for the provider and model."""
        start_time = time.time()
        response = messages.create(
            model=model, max_tokens=1000, messages=[{"role": "user", "content": prompt}]
        )
        latency_ms = int((time.time() - start_time) * 1000)
        cost_usd = response.usage.input_tokens * 0.000003 + response.usage.output_tokens * 0.000015
        pg_logger.log_call(
            provider=provider,
            model=response.model,
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            cost_usd=cost_usd,
            latency_ms=latency_ms,
            customer_id=customer_id,
            organization_id="acme-corp",
            product_id="chatbot",
            environment="production",
            request_id=response.id,
        )
        return response.content[0].text

    start = datetime.now(UTC) - timedelta(minutes=1)
    try:
        make_ai_call("anthropic", "claude-sonnet-4-20250514", "Hello, Claude!", "cust_001")
        make_ai_call(*NEW_MODEL, "Hello, GPT!", "cust_002")
        # A service that leaves the cost to the ledger, on a model nobody prices yet.
        pg_logger.log_call(provider=NOBODY[0], model=NOBODY[1], input_tokens=1200, output_tokens=300,
                           organization_id="acme-corp", request_id="msg_nobody")  # fmt: skip
        stats = pg_logger.get_stats(start, datetime.now(UTC) + timedelta(minutes=1))
    finally:
        pg_logger.close()

    async with engine.connect() as conn:
        calls = {
            (r.provider, r.model): r
            for r in await conn.execute(
                text(
                    "SELECT c.provider, c.model, c.input_tokens, c.output_tokens, c.cost_usd, c.computed_cost_usd, "
                    "c.cost_source, p.source AS price_source, p.input_per_mtok, p.output_per_mtok "
                    "FROM ai_calls c LEFT JOIN vendor_prices p ON p.id = c.price_id"
                )
            )
        }
    for key in (("anthropic", "claude-sonnet-4-20250514"), NEW_MODEL):
        row = calls[key]
        # Priced from the maintained book: the computed cost is the row's rates times the tokens.
        assert row.price_source == "genai-prices", key
        expected = (
            row.input_tokens * row.input_per_mtok + row.output_tokens * row.output_per_mtok
        ) / Decimal(1_000_000)
        assert row.computed_cost_usd == expected and row.computed_cost_usd > 0, key
        assert row.cost_source == "provided" and row.cost_usd is not None, key
    unpriced = calls[NOBODY]
    assert (unpriced.cost_usd, unpriced.computed_cost_usd, unpriced.cost_source) == (None, None, "unpriced")
    assert stats["total_calls"] == 3 and stats["unpriced_calls"] == 1
    assert stats["unpriced_tokens"] == unpriced.input_tokens + unpriced.output_tokens

    url = migrated.server.url(fresh_database.database or "")
    since = (start - timedelta(days=1)).date().isoformat()
    add = persistence(url, "prices", "add", *NOBODY, "--input", "2", "--output", "8", "--from", since)
    assert (add.returncode, add.stderr) == (0, ""), add.stderr
    first = persistence(url, "prices", "reprice", "--since", since)
    assert (first.returncode, first.stderr) == (0, ""), first.stderr
    assert first.stdout.startswith("repriced 1 call(s)"), first.stdout
    again = persistence(url, "prices", "reprice", "--since", since)
    assert again.stdout.startswith("repriced 0 call(s)"), again.stdout

    async with engine.connect() as conn:
        repriced = (
            await conn.execute(
                text("SELECT computed_cost_usd, cost_usd, cost_source FROM ai_calls WHERE provider = :p"),
                {"p": NOBODY[0]},
            )
        ).one()
    expected = (unpriced.input_tokens * 2 + unpriced.output_tokens * 8) / Decimal(1_000_000)
    assert repriced.computed_cost_usd == expected and repriced.cost_source != "unpriced"
    await fold_rollups(engine)
    await assert_rollups_equal_a_raw_scan(engine)
