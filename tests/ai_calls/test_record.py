"""AICallRecord validation and usage normalisation: pure Python, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from persistence.ai_calls import AICallRecord, TokenUsage, normalise_usage
from persistence.errors import ValidationError

BASE: dict[str, Any] = {"provider": "openai", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5}


class _BadStr:
    """Its str() is text PostgreSQL cannot store: it must never be stored as its str()."""

    def __str__(self) -> str:
        return "bad\ud800"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input_tokens": -1}, "input_tokens must be between"),
        ({"output_tokens": 2**31}, "output_tokens must be between"),
        ({"cache_read_tokens": True}, "cache_read_tokens must be an int"),
        ({"input_tokens": 1.0}, "input_tokens must be an int"),
        ({"cost_usd": Decimal("NaN")}, "finite"),
        ({"cost_usd": Decimal("Infinity")}, "finite"),
        ({"cost_usd": Decimal("-0.01")}, "negative"),
        ({"cost_usd": float("nan")}, "finite"),
        ({"cost_usd": float("inf")}, "finite"),
        ({"cost_usd": -0.5}, "negative"),
        ({"cost_usd": True}, "got bool"),
        ({"cost_usd": "abc"}, "not a number"),
        ({"cost_usd": Decimal("10000")}, "at most"),
        ({"cost_usd": Decimal("1E+300")}, "at most"),
        ({"cost_usd": 1e300}, "at most"),
        ({"provider": "x" * 300}, "300 characters"),
        ({"provider": ""}, "provider must be"),
        ({"provider": "open ai"}, "provider must be"),
        ({"model": "m" * 101}, "model must be 1 to 100"),
        ({"customer_id": "c\x00"}, "control characters"),
        ({"environment": "e" * 21}, "environment must be"),
        ({"created_at": datetime(2026, 1, 1)}, "timezone-aware"),  # noqa: DTZ001
        ({"created_at": "2026-01-01T00:00:00Z"}, "must be a datetime"),
        ({"status": "ok"}, "status must be one of"),
        ({"latency_ms": -1}, "latency_ms must be between"),
        ({"usage": {"x": float("nan")}}, "JSON"),
        # What PostgreSQL would refuse mid-COPY (issue 13): refused here, naming the field.
        ({"customer_id": "cust_\ud800"}, "customer_id contains a lone surrogate"),
        ({"model": "gpt-\udfff"}, "model contains a lone surrogate"),
        ({"request_id": "r\udc80"}, "request_id contains a lone surrogate"),
        ({"usage": {"note": "a\x00b"}}, r"usage\['note'\] contains NUL"),
        ({"usage": {"a\x00": 1}}, "a key of usage contains NUL"),
        ({"usage": {"tiers": [{"\ud83d": 1}]}}, r"a key of usage\['tiers'\]\[0\] contains a lone surrogate"),
        ({"usage": {"list": ["ok", "\udc00"]}}, r"usage\['list'\]\[1\] contains a lone surrogate"),
        ({"usage": {"x": float("inf")}}, "finite number"),
        ({"usage": {"x": [Decimal("NaN")]}}, r"usage\['x'\]\[0\] is a Decimal, not a JSON value"),
        ({"usage": {"x": Decimal("-Infinity")}}, "is a Decimal, not a JSON value"),
        # Only JSON-native values (issue 13 review): nothing is turned into its str() unchecked.
        ({"usage": {"x": {1, 2}}}, r"usage\['x'\] is a set, not a JSON value"),
        ({"usage": {"x": _BadStr()}}, r"usage\['x'\] is a _BadStr, not a JSON value"),
        ({"usage": {"cost": Decimal("1.5")}}, "is a Decimal, not a JSON value"),
        ({"usage": {"at": datetime(2026, 1, 1, tzinfo=UTC)}}, "is a datetime, not a JSON value"),
        ({"usage": {"by_tier": {2: 1}}}, r"a key of usage\['by_tier'\] must be a str, got int"),
        ({"usage": {"big": float(2**60)}}, "would not read back equal"),
        ({"cost_usd": Decimal("1e-7")}, "cost_usd has more than 6 decimal places"),
        ({"cost_usd": Decimal("0.1234567")}, "cost_usd has more than 6 decimal places"),
        ({"cost_usd": "0.0000015"}, "cost_usd has more than 6 decimal places"),
        ({"created_at": datetime.max.replace(tzinfo=UTC)}, "created_at is out of range"),
        ({"created_at": datetime.min.replace(tzinfo=UTC)}, "created_at is out of range"),
        ({"created_at": datetime(1, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=14)))}, "out of range"),
        ({"created_at": datetime(1, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=14)))}, "out of range"),
        (
            {"created_at": datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-14)))},
            "out of range",
        ),
    ],
)
def test_bad_input_is_a_validation_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AICallRecord(**{**BASE, **overrides})


def test_values_are_normalised() -> None:
    at = datetime(2026, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    record = AICallRecord(**{**BASE, "provider": "OpenAI", "cost_usd": 0.0000015, "created_at": at})
    assert record.provider == "openai"
    assert record.cost_usd == Decimal("0.000002")  # a float: its repr, half-up to the ledger's 6 places
    assert AICallRecord(**{**BASE, "cost_usd": "0.1234560"}).cost_usd == Decimal("0.123456")  # exact
    assert AICallRecord(**{**BASE, "cost_usd": 1234 * 0.000003}).cost_usd == Decimal("0.003702")
    assert record.created_at == at and record.created_at.tzinfo is UTC
    assert record.hour == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert record.total_tokens == 15


def test_a_float_cost_is_taken_at_its_shortest_repr() -> None:
    # Seed 000's callers compute costs in float; the seed stores Decimal(str(cost)), and so do we.
    def stored(cost: float) -> object:
        return AICallRecord(**{**BASE, "cost_usd": cost}).cost_usd

    assert stored(0.1 + 0.2) == Decimal("0.300000")
    assert stored(1000 * 0.000003 + 200 * 0.000015) == Decimal("0.006000")
    assert stored(0.0000015) == Decimal("0.000002")  # half-up to 6 places
    assert stored(1e-7) == Decimal("0.000000")
    assert type(stored(0.25)) is Decimal

    class NumpyLikeFloat(float):  # numpy >= 2's float64 is a float whose repr is 'np.float64(0.1)'
        def __repr__(self) -> str:
            return f"np.float64({float.__repr__(self)})"

    assert stored(NumpyLikeFloat(0.1)) == Decimal("0.100000")


def test_idempotency_key_and_payload_hash() -> None:
    a = AICallRecord(**BASE, request_id="req-1")
    later = AICallRecord(**BASE, request_id="req-1", created_at=datetime.now(UTC) + timedelta(seconds=5))
    other = AICallRecord(**{**BASE, "output_tokens": 6}, request_id="req-1")
    assert a.idempotency_key == "openai:req-1"
    assert a.payload_hash == later.payload_hash  # a retry logged later is the same call
    assert a.payload_hash != other.payload_hash
    assert AICallRecord(**BASE, event_id="e1").idempotency_key == "event:e1"
    one, two = AICallRecord(**BASE), AICallRecord(**BASE)
    assert one.idempotency_key != two.idempotency_key  # no caller key: every log is a new call


def test_coerce_refuses_unknown_fields_and_missing_ones() -> None:
    with pytest.raises(ValidationError, match="unknown field"):
        AICallRecord.coerce({**BASE, "tokens": 3})
    with pytest.raises(ValidationError, match="output_tokens"):
        AICallRecord.coerce({"provider": "openai", "model": "gpt-4o", "input_tokens": 1})
    with pytest.raises(ValidationError, match="mapping"):
        AICallRecord.coerce(["openai"])  # type: ignore[arg-type]


def test_openai_usage_splits_cached_and_reasoning_tokens() -> None:
    chat = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 256},
    }
    assert normalise_usage("openai", chat) == TokenUsage(176, 44, 1024, 0, 256)
    responses = {
        "input_tokens": 50,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 5},
    }
    assert normalise_usage("openai", responses) == TokenUsage(50, 15, 0, 0, 5)
    with pytest.raises(
        ValidationError, match=r"prompt_tokens_details\.cached_tokens.* is above prompt_tokens"
    ):
        normalise_usage(
            "openai",
            {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 6}},
        )


def test_anthropic_google_cohere_usage() -> None:
    anthropic = {
        "input_tokens": 30,
        "output_tokens": 400,
        "cache_read_input_tokens": 9000,
        "cache_creation_input_tokens": 1200,
    }
    assert normalise_usage("anthropic", anthropic) == TokenUsage(30, 400, 9000, 1200, 0)
    gemini = {"promptTokenCount": 5000, "cachedContentTokenCount": 4096, "candidatesTokenCount": 80,
              "thoughtsTokenCount": 300, "totalTokenCount": 5380}  # fmt: skip
    assert normalise_usage("google", gemini) == TokenUsage(904, 80, 4096, 0, 300)
    assert normalise_usage("cohere", {"billed_units": {"input_tokens": 7, "output_tokens": 3}}) == TokenUsage(
        7, 3
    )


def test_from_usage_keeps_the_raw_usage_and_total_counts_every_token_once() -> None:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 1024},
    }
    record = AICallRecord.from_usage(provider="openai", model="gpt-4o", usage=usage)
    assert record.total_tokens == 1500  # the provider's own total: cached tokens not counted twice
    assert record.usage_json is not None and '"cached_tokens":1024' in record.usage_json


def test_deeply_nested_usage_is_a_validation_error_not_a_recursion_error() -> None:
    usage: dict[str, Any] = {}
    node = usage
    for _ in range(100_000):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(ValidationError, match="nested deeper than"):
        AICallRecord(**{**BASE, "usage": usage})


def test_emoji_and_other_valid_text_are_kept_verbatim() -> None:
    record = AICallRecord(
        **{**BASE, "customer_id": "cust_\U0001f600\u00e9", "usage": {"\u00e9": "\U0001f600", "n": -0.0}}
    )
    assert record.customer_id == "cust_\U0001f600\u00e9"
    assert record.usage_json == '{"n":-0.0,"\u00e9":"\U0001f600"}'
