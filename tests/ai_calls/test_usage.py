"""`usage=response.usage` with the real openai, anthropic and google-genai SDK types (built locally,
no network): every bucket, and the cost to the micro-dollar against a hand computation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from anthropic.types import Message
from google.genai import types as genai
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger, AICallRecord, TokenUsage, normalise_usage, rebuild_rollups
from persistence.ai_calls.usage import UsageMismatchError, UsageShapeError
from persistence.errors import ValidationError
from persistence.models import VendorPrice

AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def chat_completion(**usage: Any) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-usage-1",
            "object": "chat.completion",
            "created": 1773144000,
            "model": "gpt-usage-2026-03-01",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
            "usage": {
                "prompt_tokens": 12_000,
                "completion_tokens": 1_500,
                "total_tokens": 13_500,
                "prompt_tokens_details": {"cached_tokens": 8_000, "cache_write_tokens": 3_000, "audio_tokens": 0,
                                          "image_tokens": 0, "text_tokens": 12_000},
                "completion_tokens_details": {"reasoning_tokens": 900, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
                **usage,
            },
        }
    )  # fmt: skip


def response() -> Response:
    return Response.model_validate(
        {
            "id": "resp_usage_1",
            "object": "response",
            "created_at": 1773144000,
            "model": "gpt-usage",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 5_000,
                "output_tokens": 800,
                "total_tokens": 5_800,
                "input_tokens_details": {"cached_tokens": 2_048, "cache_write_tokens": 1_024,
                                         "cache_write_tokens_details": {"ttl_30m_tokens": 1_000, "ttl_12h_tokens": 24}},
                "output_tokens_details": {"reasoning_tokens": 512},
            },
        }
    )  # fmt: skip


def claude_message(**usage: Any) -> Message:
    return Message.model_validate(
        {
            "id": "msg_usage_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-usage",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 1_200,
                "output_tokens": 2_500,
                "cache_read_input_tokens": 30_000,
                "cache_creation_input_tokens": 6_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 2_000, "ephemeral_1h_input_tokens": 4_000},
                "output_tokens_details": {"thinking_tokens": 1_800},
                "service_tier": "standard",
                **usage,
            },
        }
    )


def gemini_response(**usage: Any) -> genai.GenerateContentResponse:
    fields: dict[str, Any] = {
        "prompt_token_count": 40_000,
        "cached_content_token_count": 32_768,
        "candidates_token_count": 700,
        "thoughts_token_count": 1_200,
        "tool_use_prompt_token_count": 300,
        "total_token_count": 42_200,
        "prompt_tokens_details": [
            genai.ModalityTokenCount(modality=genai.MediaModality.TEXT, token_count=40_000)
        ],
        "traffic_type": genai.TrafficType.ON_DEMAND,
        **usage,
    }
    return genai.GenerateContentResponse(
        response_id="gemini-usage-1",
        model_version="gemini-usage",
        usage_metadata=genai.GenerateContentResponseUsageMetadata(**fields),
    )


# What each response's usage is, bucket by bucket (TokenUsage: input, output, cache_read,
# cache_write (5 minutes / OpenAI's), reasoning, cache_write_1h).
CHAT = TokenUsage(12_000 - 8_000 - 3_000, 1_500 - 900, 8_000, 3_000, 900, 0)
RESPONSES = TokenUsage(5_000 - 2_048 - 1_024, 800 - 512, 2_048, 1_024, 512, 0)
CLAUDE = TokenUsage(1_200, 2_500 - 1_800, 30_000, 2_000, 1_800, 4_000)
GEMINI = TokenUsage(40_000 - 32_768 + 300, 700, 32_768, 0, 1_200, 0)


def test_openai_chat_completion_usage_object_and_its_dicts() -> None:
    usage = chat_completion().usage
    assert usage is not None
    assert normalise_usage("openai", usage) == CHAT
    assert normalise_usage("openai", usage.model_dump()) == CHAT
    assert normalise_usage("azure", usage.model_dump(mode="json")) == CHAT


def test_openai_responses_usage_object_counts_both_retentions_as_cache_writes() -> None:
    usage = response().usage
    assert usage is not None
    assert normalise_usage("openai", usage) == RESPONSES
    assert normalise_usage("openai", usage.model_dump()) == RESPONSES


def test_anthropic_usage_splits_one_hour_writes_and_thinking() -> None:
    usage = claude_message().usage
    assert normalise_usage("anthropic", usage) == CLAUDE
    assert normalise_usage("anthropic", usage.model_dump()) == CLAUDE
    # Without the TTL breakdown (before the 1-hour cache existed) every write is a 5-minute one.
    plain = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 7}
    assert normalise_usage("anthropic", plain) == TokenUsage(10, 5, 0, 7, 0, 0)


def test_gemini_usage_metadata_object_rest_json_and_dict() -> None:
    usage = gemini_response().usage_metadata
    assert usage is not None
    assert normalise_usage("google", usage) == GEMINI
    assert normalise_usage("gemini", usage.model_dump()) == GEMINI
    assert normalise_usage("vertex_ai", usage.model_dump(mode="json", by_alias=True)) == GEMINI  # camelCase


@pytest.mark.parametrize(
    ("provider", "usage", "field"),
    [
        # A bucket the ledger cannot price apart.
        ("openai", chat_completion(prompt_tokens_details={"audio_tokens": 40}).usage,
         "prompt_tokens_details.audio_tokens"),
        ("google", gemini_response(prompt_tokens_details=[
            genai.ModalityTokenCount(modality=genai.MediaModality.AUDIO, token_count=40)]).usage_metadata,
         "prompt_tokens_details[0].token_count"),
        # A count in a field the normaliser does not know.
        ("openai", {"prompt_tokens": 10, "completion_tokens": 2, "search_tokens": 5}, "search_tokens"),
        ("anthropic", {"input_tokens": 10, "output_tokens": 2, "cache_creation": {"ephemeral_24h_input_tokens": 3}},
         "cache_creation.ephemeral_24h_input_tokens"),
        # The whole response instead of its usage.
        ("openai", chat_completion(), "choices"),
        # Parts that do not add up.
        ("openai", chat_completion(total_tokens=13_000).usage, "total_tokens"),
        ("anthropic", claude_message(cache_creation_input_tokens=5_000).usage, "cache_creation"),
        ("google", gemini_response(total_token_count=41_000).usage_metadata, "total_token_count"),
        ("openai", {"prompt_tokens": 10, "completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 3}},
         "completion_tokens_details.reasoning_tokens"),
        # Missing, mixed or foreign.
        ("anthropic", {"output_tokens": 2}, "input_tokens"),
        ("openai", {"prompt_tokens": 10, "completion_tokens": 2, "output_tokens": 2}, "completion_tokens"),
        ("anthropic", {"input_tokens": 1, "output_tokens": 1, "iterations": [{"type": "compaction"}]},
         "iterations[0]"),
        ("mistral", {"prompt_tokens": 10}, "prompt_tokens"),
    ],
)  # fmt: skip
def test_a_shape_the_normaliser_would_have_to_guess_is_refused_naming_the_field(
    provider: str, usage: Any, field: str
) -> None:
    with pytest.raises(UsageShapeError) as info:
        normalise_usage(provider, usage)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValidationError)


def test_labels_and_zero_counts_in_unknown_fields_are_kept_not_refused() -> None:
    usage = {"input_tokens": 3, "output_tokens": 1, "speed": "fast", "inference_geo": "us", "new_count": 0}
    assert normalise_usage("anthropic", usage) == TokenUsage(3, 1)


def test_counts_that_disagree_with_the_usage_are_refused() -> None:
    message = claude_message()
    # Seed 000's integration copies input/output from response.usage: output includes thinking, and
    # all cache writes would be priced at the 5-minute rate.
    with pytest.raises(UsageMismatchError) as info:
        AICallRecord(
            provider="anthropic",
            model=message.model,
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
            cache_read_tokens=30_000,
            cache_write_tokens=6_000,
            usage=message.usage,
        )
    assert info.value.mismatches == {
        "output_tokens": (2_500, 700),
        "cache_write_tokens": (6_000, 2_000),
        "reasoning_tokens": (0, 1_800),
        "cache_write_1h_tokens": (0, 4_000),
    }
    assert "output_tokens given 2500, usage says 700" in str(info.value)
    # A bucket given beside a usage that derives the others is checked too.
    with pytest.raises(UsageMismatchError, match="cache_read_tokens given 1, usage says 8000"):
        AICallRecord.coerce(
            {"provider": "openai", "model": "m", "usage": chat_completion().usage, "cache_read_tokens": 1}
        )
    # Counts that agree are accepted, and so is a usage that states no counts (free-form JSON).
    agreed = _record("anthropic", message.usage, CLAUDE)
    assert agreed.total_tokens == 1_200 + 2_500 + 30_000 + 6_000
    AICallRecord(provider="openai", model="m", input_tokens=1, output_tokens=1, usage={"note": "x"})


def test_the_sdk_object_is_stored_as_its_json_dump() -> None:
    usage = gemini_response().usage_metadata
    assert usage is not None
    record = _record("google", usage, GEMINI)
    same = AICallRecord.from_usage(
        provider="google", model="gemini-usage", usage=usage.model_dump(mode="json")
    )
    assert record.usage == usage.model_dump(mode="json")
    assert record.usage_json == same.usage_json and record.payload_hash == same.payload_hash


def _buckets(usage: TokenUsage) -> dict[str, int]:
    return {name: getattr(usage, name) for name in TokenUsage.__dataclass_fields__}


def _record(provider: str, usage: Any, b: TokenUsage) -> AICallRecord:
    return AICallRecord(
        provider=provider,
        model="gemini-usage",
        usage=usage,
        input_tokens=b.input_tokens,
        output_tokens=b.output_tokens,
        cache_read_tokens=b.cache_read_tokens,
        cache_write_tokens=b.cache_write_tokens,
        reasoning_tokens=b.reasoning_tokens,
        cache_write_1h_tokens=b.cache_write_1h_tokens,
    )


# USD per million tokens: input, output, cache_read, cache_write, reasoning, cache_write_1h.
PRICES = {
    ("openai", "gpt-usage"): ("1.25", "10.00", "0.125", "1.5625", "10.00", None),
    ("anthropic", "claude-usage"): ("3.00", "15.00", "0.30", "3.75", "15.00", "6.00"),
    ("google", "gemini-usage"): ("0.30", "2.50", "0.03", "0.30", "2.50", None),
}


@pytest.mark.commits
async def test_sdk_responses_are_logged_bucket_by_bucket_and_priced_to_the_micro_dollar(
    fresh_engine: AsyncEngine,
) -> None:
    names = ("input", "output", "cache_read", "cache_write", "reasoning", "cache_write_1h")
    async with fresh_engine.begin() as conn:
        for (provider, model), figures in PRICES.items():
            price = {
                f"{n}_per_mtok": None if f is None else Decimal(f)
                for n, f in zip(names, figures, strict=True)
            }
            await conn.execute(
                insert(VendorPrice).values(
                    provider=provider, model=model, effective_from=AT - timedelta(days=30), **price
                )
            )
    chat, resp, claude, gemini = chat_completion(), response(), claude_message(), gemini_response()
    async with AICallLogger(fresh_engine) as log:
        # One statement per call (log_call) and the COPY path (log_batch) both take SDK objects.
        await log.log_call("openai", chat.model, usage=chat.usage, request_id=chat.id, created_at=AT)
        await log.log_call("anthropic", claude.model, usage=claude.usage, request_id=claude.id, created_at=AT)
        assert await log.log_batch([
            {"provider": "openai", "model": resp.model, "usage": resp.usage, "request_id": resp.id, "created_at": AT},
            {"provider": "google", "model": gemini.model_version, "usage": gemini.usage_metadata,
             "request_id": gemini.response_id, "created_at": AT},
        ]) == 2  # fmt: skip
        stats = await log.get_stats(AT - timedelta(hours=1), AT + timedelta(hours=1))
        # Seed 000's counts (output includes thinking) beside the usage: refused, nothing written.
        with pytest.raises(UsageMismatchError):
            await log.log_call(
                "anthropic",
                claude.model,
                input_tokens=claude.usage.input_tokens,
                output_tokens=claude.usage.output_tokens,
                usage=claude.usage,
                request_id="msg_usage_2",
                created_at=AT,
            )
    async with fresh_engine.connect() as conn:
        rows = {
            r.request_id: r
            for r in (
                await conn.execute(
                    text(
                        "SELECT request_id, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
                        "reasoning_tokens, cache_write_1h_tokens, total_tokens, cost_usd, computed_cost_usd, "
                        "cost_source, usage FROM ai_calls"
                    )
                )
            ).all()
        }
    # Hand computation, per million tokens, from PRICES and the buckets above:
    # chat:      1000*1.25 + 600*10 + 8000*0.125 + 3000*1.5625 + 900*10            = 21937.5
    # responses: 1928*1.25 + 288*10 + 2048*0.125 + 1024*1.5625 + 512*10            = 12266
    # claude:    1200*3 + 700*15 + 30000*0.30 + 2000*3.75 + 1800*15 + 4000*6.00    = 81600
    #            (the 4000 one-hour writes at 3.75, the 5-minute rate, would make it 72600)
    # gemini:    7532*0.30 + 700*2.50 + 32768*0.03 + 1200*2.50                     = 7992.64
    expected = {
        chat.id: (CHAT, "0.021938", "0.0219375"),
        resp.id: (RESPONSES, "0.012266", "0.012266"),
        claude.id: (CLAUDE, "0.081600", "0.0816"),
        gemini.response_id: (GEMINI, "0.007993", "0.00799264"),
    }
    for request_id, (buckets, cost, computed) in expected.items():
        row = rows[request_id]
        got = TokenUsage(row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens,
                         row.reasoning_tokens, row.cache_write_1h_tokens)  # fmt: skip
        assert got == buckets, request_id
        assert row.total_tokens == sum(_buckets(buckets).values())
        assert (row.cost_usd, row.computed_cost_usd, row.cost_source) == (
            Decimal(cost),
            Decimal(computed),
            "computed",
        )
    assert len(rows) == 4
    assert rows[claude.id].usage == claude.usage.model_dump(mode="json")
    # The rollups (folded when the logger closed) and get_stats agree with the ledger, bucket by bucket.
    assert stats["total_tokens"] == sum(r.total_tokens for r in rows.values())
    assert stats["total_cost_usd"] == Decimal("0.123797")
    sums = "sum(cache_write_tokens), sum(cache_write_1h_tokens), sum(total_tokens), sum(cost_usd)"
    async with fresh_engine.connect() as conn:
        raw = (await conn.execute(text(f"SELECT {sums} FROM ai_calls"))).one()
        folded = (await conn.execute(text(f"SELECT {sums} FROM ai_call_model_hourly"))).one()
    assert tuple(raw) == tuple(folded) == (3_000 + 1_024 + 2_000, 4_000, raw[2], Decimal("0.123797"))
    await rebuild_rollups(fresh_engine, AT - timedelta(hours=1), AT + timedelta(hours=1))
    async with fresh_engine.connect() as conn:
        rebuilt = (await conn.execute(text(f"SELECT {sums} FROM ai_call_usage_hourly"))).one()
    assert tuple(rebuilt) == tuple(raw)
