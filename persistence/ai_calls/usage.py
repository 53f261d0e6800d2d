"""Providers' usage objects as disjoint token buckets, exactly as the SDKs return them.

`usage=response.usage` takes the `openai` (Chat Completions `CompletionUsage`, Responses
`ResponseUsage`), `anthropic` (`Usage`, `MessageDeltaUsage`) and `google-genai`
(`GenerateContentResponseUsageMetadata`) objects, or their dicts (`model_dump()`, or the REST JSON
with camelCase keys for Gemini). Nothing here imports an SDK: a pydantic model is read through
`model_dump(mode="json")`.

The buckets never overlap (field notes 4), whatever a provider counts inside what
(input / cache_read / cache_write / cache_write_1h / output / reasoning):

- openai: prompt - cached - cache_write / `cached_tokens` / `cache_write_tokens` (every retention:
  OpenAI publishes one cache-write price per model) / 0 / completion - reasoning / `reasoning_tokens`.
- anthropic: `input_tokens` / `cache_read_input_tokens` / `ephemeral_5m_input_tokens` /
  `ephemeral_1h_input_tokens` / output - thinking / `thinking_tokens`. A streaming
  `MessageDeltaUsage` without `input_tokens` is refused: log the final message's usage.
- google: prompt - cached + tool-use prompt / `cached_content_token_count` / 0 / 0 /
  `candidates_token_count` / `thoughts_token_count`.

A normaliser never guesses. A field it does not know that carries a count (a number other than 0,
a non-empty object or list), a billed bucket it cannot price apart (audio tokens), parts that do
not add up to their total, or a missing required count raise `UsageShapeError` naming the field:
the call is refused rather than priced without a bucket. Labels (`service_tier`, `inference_geo`,
`traffic_type`, ...) and breakdowns inside a total (`text_tokens`, `image_tokens`, prediction
tokens) are kept in the raw usage only. Anthropic's `server_tool_use` (web searches, billed per
request, not per token) is kept in the raw usage and not priced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel

from persistence.errors import ValidationError

__all__ = [
    "BUCKETS",
    "TokenUsage",
    "UsageMismatchError",
    "UsageShapeError",
    "check_usage",
    "normalise_usage",
    "states_counts",
    "usage_mapping",
]

_MAX_INT4 = 2**31 - 1


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Disjoint token buckets of one call (each token is in exactly one)."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # short-lived cache writes: Anthropic's 5-minute, OpenAI's
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0  # Anthropic's 1-hour cache writes (priced apart)


BUCKETS = tuple(f.name for f in fields(TokenUsage))


class UsageShapeError(ValidationError):
    """A usage object this normaliser cannot read without guessing; `field` names where (a dotted
    path such as `prompt_tokens_details.audio_tokens`)."""

    def __init__(self, provider: str, field: str, problem: str) -> None:
        self.provider = provider
        self.field = field
        super().__init__(f"invalid AI call: {provider} usage field {field!r} {problem}")


class UsageMismatchError(ValidationError):
    """Token counts passed with a call disagree with its raw usage. `mismatches` maps each bucket
    that differs to (the count given, the count the usage implies)."""

    def __init__(self, provider: str, mismatches: Mapping[str, tuple[int, int]]) -> None:
        self.provider = provider
        self.mismatches = dict(mismatches)
        shown = ", ".join(f"{b} given {g}, usage says {u}" for b, (g, u) in self.mismatches.items())
        super().__init__(
            f"invalid AI call: the token counts disagree with the {provider} usage ({shown}); pass the "
            "usage alone (its buckets are derived from it) or counts that match it"
        )


def usage_mapping(usage: object) -> Mapping[str, Any]:
    """`usage` as a mapping: a mapping as is, an SDK (pydantic) model as `model_dump(mode="json")`."""
    if isinstance(usage, Mapping):
        return usage
    if isinstance(usage, BaseModel):
        dumped = usage.model_dump(mode="json")
        if isinstance(dumped, Mapping):
            return dumped
    raise ValidationError(
        f"invalid AI call: usage must be a mapping or an SDK usage object (a pydantic model such as "
        f"response.usage), got {type(usage).__name__}"
    )


class _Reader:
    """Reads one provider's usage, naming the dotted path of every field it complains about."""

    __slots__ = ("provider",)

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def fail(self, path: str, problem: str) -> UsageShapeError:
        return UsageShapeError(self.provider, path, problem)

    def node(self, parent: Mapping[str, Any], key: str, path: str = "") -> Mapping[str, Any] | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(path + key, f"must be an object, got {type(value).__name__}")
        return value

    def count(
        self, parent: Mapping[str, Any] | None, *keys: str, path: str = "", required: bool = False
    ) -> int:
        """The first of `keys` present (spellings of one field), else 0 (or the error if required)."""
        if parent is not None:
            for key in keys:
                value = parent.get(key)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int):
                    raise self.fail(path + key, f"must be an int, got {type(value).__name__}")
                if not 0 <= value <= _MAX_INT4:
                    raise self.fail(path + key, f"must be between 0 and {_MAX_INT4}, got {value}")
                return int(value)
        if required:
            raise self.fail(path + keys[0], "is missing (a required count)")
        return 0

    def only(self, node: Mapping[str, Any], known: frozenset[str], path: str = "") -> None:
        """Refuse a field we do not know that carries a count; labels and zeros are harmless."""
        for key, value in node.items():
            if key in known or value is None or isinstance(value, str | bool) or value == 0:
                continue
            if isinstance(value, Mapping | list | tuple) and not value:
                continue
            hint = " (pass response.usage, not the whole response)" if key in _RESPONSE_KEYS else ""
            raise self.fail(
                f"{path}{key}",
                f"is not a field this normaliser knows, and it carries a count ({value!r:.60}): it may "
                f"be a billed bucket, so the call is refused rather than priced without it{hint}",
            )

    def audio(self, node: Mapping[str, Any] | None, key: str, path: str) -> None:
        if self.count(node, key, path=path):
            raise self.fail(
                path + key,
                "counts audio tokens, which are billed at audio rates the ledger has no bucket for",
            )


_RESPONSE_KEYS = frozenset({"usage", "usage_metadata", "usageMetadata", "choices", "candidates", "content"})

# OpenAI ----------------------------------------------------------------------------------------

_OPENAI_CHAT = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }
)
_OPENAI_RESPONSES = frozenset(
    {"input_tokens", "output_tokens", "total_tokens", "input_tokens_details", "output_tokens_details"}
)
_OPENAI_IN = frozenset(
    {
        "cached_tokens",
        "cache_write_tokens",
        "cache_write_tokens_details",
        "audio_tokens",
        "image_tokens",
        "text_tokens",
    }
)
_OPENAI_OUT = frozenset(
    {
        "reasoning_tokens",
        "audio_tokens",
        "text_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
    }
)
_OPENAI_TTL = frozenset({"ttl_30m_tokens", "ttl_12h_tokens"})


def _openai(r: _Reader, u: Mapping[str, Any]) -> TokenUsage:
    """Chat Completions or Responses. The prompt/input count includes cache reads and cache writes;
    the completion/output count includes reasoning. Cache writes of every retention (`ttl_30m`,
    `ttl_12h`) are one bucket: OpenAI publishes one cache-write price per model."""
    keys = set(u) - {"total_tokens"}
    responses = not _OPENAI_RESPONSES.isdisjoint(keys)
    if responses and not _OPENAI_CHAT.isdisjoint(keys):
        raise r.fail(sorted(keys & _OPENAI_CHAT)[0], "mixes Chat Completions and Responses usage fields")
    if responses:
        i, o, di, do = "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"
        r.only(u, _OPENAI_RESPONSES)
    else:
        i, o, di, do = (
            "prompt_tokens",
            "completion_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
        )
        r.only(u, _OPENAI_CHAT)
    prompt = r.count(u, i, required=True)
    completion = r.count(u, o, required=True)
    if u.get("total_tokens") is not None and r.count(u, "total_tokens") != prompt + completion:
        raise r.fail("total_tokens", f"is {u['total_tokens']}, not {i} + {o} ({prompt + completion})")
    details_in = r.node(u, di)
    if details_in is not None:
        r.only(details_in, _OPENAI_IN, f"{di}.")
        r.audio(details_in, "audio_tokens", f"{di}.")
    cached = r.count(details_in, "cached_tokens", path=f"{di}.")
    written = r.count(details_in, "cache_write_tokens", path=f"{di}.")
    ttl = None if details_in is None else r.node(details_in, "cache_write_tokens_details", f"{di}.")
    if ttl is not None:
        where = f"{di}.cache_write_tokens_details."
        r.only(ttl, _OPENAI_TTL, where)
        parts = r.count(ttl, "ttl_30m_tokens", path=where) + r.count(ttl, "ttl_12h_tokens", path=where)
        if parts != written:
            raise r.fail(
                where + "ttl_30m_tokens", f"+ ttl_12h_tokens is {parts}, not cache_write_tokens ({written})"
            )
    details_out = r.node(u, do)
    if details_out is not None:
        r.only(details_out, _OPENAI_OUT, f"{do}.")
        r.audio(details_out, "audio_tokens", f"{do}.")
    reasoning = r.count(details_out, "reasoning_tokens", path=f"{do}.")
    if cached + written > prompt:
        raise r.fail(
            f"{di}.cached_tokens", f"+ cache_write_tokens ({cached + written}) is above {i} ({prompt})"
        )
    if reasoning > completion:
        raise r.fail(f"{do}.reasoning_tokens", f"({reasoning}) is above {o} ({completion})")
    return TokenUsage(prompt - cached - written, completion - reasoning, cached, written, reasoning)


# Anthropic -------------------------------------------------------------------------------------

_ANTHROPIC = frozenset(
    {"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation",
     "output_tokens_details", "server_tool_use", "iterations"}
)  # fmt: skip
_ANTHROPIC_WRITES = frozenset({"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"})


def _anthropic(r: _Reader, u: Mapping[str, Any]) -> TokenUsage:
    """`input_tokens` excludes cache reads and writes; `cache_creation` splits the writes into
    5-minute and 1-hour ones (without it, as before the 1-hour cache existed, all are 5-minute);
    `output_tokens` includes `output_tokens_details.thinking_tokens`."""
    r.only(u, _ANTHROPIC)
    uncached = r.count(u, "input_tokens", required=True)
    output = r.count(u, "output_tokens", required=True)
    read = r.count(u, "cache_read_input_tokens")
    written = r.count(u, "cache_creation_input_tokens")
    w5m, w1h = written, 0
    creation = r.node(u, "cache_creation")
    if creation is not None:
        r.only(creation, _ANTHROPIC_WRITES, "cache_creation.")
        w5m = r.count(creation, "ephemeral_5m_input_tokens", path="cache_creation.")
        w1h = r.count(creation, "ephemeral_1h_input_tokens", path="cache_creation.")
        if u.get("cache_creation_input_tokens") is not None and w5m + w1h != written:
            raise r.fail(
                "cache_creation", f"adds up to {w5m + w1h}, not cache_creation_input_tokens ({written})"
            )
    details = r.node(u, "output_tokens_details")
    if details is not None:
        r.only(details, frozenset({"thinking_tokens"}), "output_tokens_details.")
    thinking = r.count(details, "thinking_tokens", path="output_tokens_details.")
    if thinking > output:
        raise r.fail(
            "output_tokens_details.thinking_tokens", f"({thinking}) is above output_tokens ({output})"
        )
    tools = r.node(u, "server_tool_use")
    if tools is not None:  # billed per request, not per token: kept in the raw usage only
        r.only(tools, frozenset({"web_search_requests", "web_fetch_requests"}), "server_tool_use.")
    iterations = u.get("iterations")
    if iterations is not None:
        if not isinstance(iterations, list | tuple):
            raise r.fail("iterations", f"must be a list, got {type(iterations).__name__}")
        for n, step in enumerate(iterations):
            # Sampling steps are inside the top-level counts; anything else (a compaction) is not.
            if not isinstance(step, Mapping) or step.get("type") != "message":
                raise r.fail(
                    f"iterations[{n}]",
                    "is not a message iteration: its tokens are not in the top-level counts",
                )
    return TokenUsage(uncached, output - thinking, read, w5m, thinking, w1h)


# Google ----------------------------------------------------------------------------------------

# Each field with its snake_case (google-genai's model_dump) and camelCase (REST JSON) spelling.
_G_PROMPT = ("prompt_token_count", "promptTokenCount")
_G_CANDIDATES = ("candidates_token_count", "candidatesTokenCount")
_G_CACHED = ("cached_content_token_count", "cachedContentTokenCount")
_G_THOUGHTS = ("thoughts_token_count", "thoughtsTokenCount")
_G_TOOL_PROMPT = ("tool_use_prompt_token_count", "toolUsePromptTokenCount")
_G_TOTAL = ("total_token_count", "totalTokenCount")
_G_DETAILS = (
    ("prompt_tokens_details", "promptTokensDetails"),
    ("candidates_tokens_details", "candidatesTokensDetails"),
    ("cache_tokens_details", "cacheTokensDetails"),
    ("tool_use_prompt_tokens_details", "toolUsePromptTokensDetails"),
)
_GOOGLE = frozenset(
    {*_G_PROMPT, *_G_CANDIDATES, *_G_CACHED, *_G_THOUGHTS, *_G_TOOL_PROMPT, *_G_TOTAL,
     *(name for pair in _G_DETAILS for name in pair)}
)  # fmt: skip


def _google(r: _Reader, u: Mapping[str, Any]) -> TokenUsage:
    """The prompt count includes cached content; tool-use prompt tokens and thoughts are counted
    apart (the total adds prompt, candidates, tool-use prompt and thoughts)."""
    r.only(u, _GOOGLE)
    prompt = r.count(u, *_G_PROMPT)
    candidates = r.count(u, *_G_CANDIDATES)
    cached = r.count(u, *_G_CACHED)
    thoughts = r.count(u, *_G_THOUGHTS)
    tool_prompt = r.count(u, *_G_TOOL_PROMPT)
    total = next((name for name in _G_TOTAL if u.get(name) is not None), None)
    if total is not None and r.count(u, total) != prompt + candidates + tool_prompt + thoughts:
        raise r.fail(
            total,
            f"is {u[total]}, not prompt + candidates + tool-use prompt + thoughts "
            f"({prompt + candidates + tool_prompt + thoughts})",
        )
    if cached > prompt:
        raise r.fail(_G_CACHED[0], f"({cached}) is above the prompt count ({prompt})")
    for pair in _G_DETAILS:
        name = next((n for n in pair if u.get(n) is not None), None)
        if name is None:
            continue
        entries = u[name]
        if not isinstance(entries, list | tuple):
            raise r.fail(name, f"must be a list, got {type(entries).__name__}")
        for n, entry in enumerate(entries):
            where = f"{name}[{n}]."
            if not isinstance(entry, Mapping):
                raise r.fail(f"{name}[{n}]", f"must be an object, got {type(entry).__name__}")
            r.only(entry, frozenset({"modality", "token_count", "tokenCount"}), where)
            if entry.get("modality") == "AUDIO":
                r.audio(entry, "token_count" if "token_count" in entry else "tokenCount", where)
    return TokenUsage(prompt - cached + tool_prompt, candidates, cached, 0, thoughts)


# Cohere and others -----------------------------------------------------------------------------


def _cohere(r: _Reader, u: Mapping[str, Any]) -> TokenUsage:
    """`billed_units` (what is billed); `tokens` (raw counts, not billed as such) is kept only."""
    r.only(u, frozenset({"billed_units", "tokens", "input_tokens", "output_tokens"}))
    billed = r.node(u, "billed_units")
    if billed is None:
        billed, where = u, ""
    else:
        where = "billed_units."
        r.only(billed, frozenset({"input_tokens", "output_tokens"}), where)
    return TokenUsage(
        r.count(billed, "input_tokens", path=where), r.count(billed, "output_tokens", path=where)
    )


def _plain(r: _Reader, u: Mapping[str, Any]) -> TokenUsage:
    """Any other provider: only a usage that is exactly input/output(/total) counts is understood."""
    r.only(u, frozenset({"input_tokens", "output_tokens", "total_tokens"}))
    if u.get("input_tokens") is None and u.get("output_tokens") is None:
        raise r.fail(
            "input_tokens",
            "is missing: there is no usage normaliser for this provider; pass the token counts explicitly",
        )
    return TokenUsage(r.count(u, "input_tokens"), r.count(u, "output_tokens"))


_NORMALISERS: dict[str, Callable[[_Reader, Mapping[str, Any]], TokenUsage]] = {
    "openai": _openai,
    "azure": _openai,
    "azure_openai": _openai,
    "anthropic": _anthropic,
    "google": _google,
    "gemini": _google,
    "vertex_ai": _google,
    "cohere": _cohere,
}
# The top-level fields that make a usage state token counts (then it must agree with given counts).
_COUNT_FIELDS: dict[Callable[[_Reader, Mapping[str, Any]], TokenUsage], frozenset[str]] = {
    _openai: _OPENAI_CHAT | _OPENAI_RESPONSES,
    _anthropic: _ANTHROPIC - {"server_tool_use", "iterations"},
    _google: _GOOGLE,
    _cohere: frozenset({"billed_units", "input_tokens", "output_tokens"}),
}


def normalise_usage(provider: str, usage: object) -> TokenUsage:
    """Disjoint buckets from a provider's usage (an SDK object or its dict); see the module docstring."""
    u = usage_mapping(usage)
    p = provider.lower()
    return _NORMALISERS.get(p, _plain)(_Reader(p), u)


def states_counts(provider: str, usage: Mapping[str, Any]) -> bool:
    """Whether `usage` holds token counts a normaliser of `provider` reads (else it is opaque JSON)."""
    normaliser = _NORMALISERS.get(provider.lower())
    return normaliser is not None and not _COUNT_FIELDS[normaliser].isdisjoint(usage)


def check_usage(provider: str, usage: Mapping[str, Any], given: TokenUsage) -> None:
    """Refuse counts that disagree with the usage they came with (`UsageMismatchError`). A usage
    that states no counts this provider's normaliser reads (free-form JSON) is not checked."""
    if not states_counts(provider, usage):
        return
    derived = normalise_usage(provider, usage)
    if derived != given:
        raise UsageMismatchError(
            provider.lower(),
            {
                b: (getattr(given, b), getattr(derived, b))
                for b in BUCKETS
                if getattr(given, b) != getattr(derived, b)
            },
        )
