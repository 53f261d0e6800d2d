"""The AI step of the service: a classifier that stands in for a real LLM call (no network, deterministic).

A real implementation calls a provider's SDK and returns the provider's raw `usage` object; the service
logs it to the ledger as is (`AICallLogger` splits the token buckets and prices the call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

PROVIDER = "anthropic"
MODEL = "claude-sonnet-4-20250514"  # priced by persistence's vendor_prices (revision 0003)

_KEYWORDS = {
    "medical": ("vaccine", "drug", "disease", "patient", "dose"),
    "legal": ("court", "law", "contract", "judge", "statute"),
    "financial": ("price", "market", "inflation", "stock", "bank"),
}


@dataclass(frozen=True, slots=True)
class Classification:
    claim_type: str
    provider: str
    model: str
    usage: dict[str, int] = field(default_factory=dict)  # the provider's raw usage object
    latency_ms: int = 0


class Classifier(Protocol):
    async def classify(self, content: str) -> Classification: ...


class KeywordClassifier:
    """Labels a claim by keywords; reports the usage an LLM call on the same text would have."""

    async def classify(self, content: str) -> Classification:
        words = content.lower().split()
        claim_type = next(
            (label for label, keys in _KEYWORDS.items() if any(k in words for k in keys)), "general"
        )
        usage = {"input_tokens": 40 + len(words), "output_tokens": 5}
        return Classification(claim_type, PROVIDER, MODEL, usage, latency_ms=120 + len(words))
