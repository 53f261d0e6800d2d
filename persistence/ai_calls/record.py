"""`AICallRecord`: one validated, immutable AI call, and normalisers for providers' usage objects.

Everything is checked in Python before any SQL runs, so bad input raises `ValidationError` and
writes nothing. Token buckets are disjoint (field notes 4): `input_tokens` is uncached input,
`cache_read_tokens` / `cache_write_tokens` (5-minute) / `cache_write_1h_tokens` are cached input,
`output_tokens` excludes `reasoning_tokens`. Providers disagree on whether "input" includes cache
reads, so pass the raw usage (`usage=response.usage`) and let `usage.normalise_usage` split it
rather than copying its numbers by hand; counts passed with it must agree with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel

from persistence.ai_calls.usage import (
    BUCKETS,
    TokenUsage,
    UsageMismatchError,
    check_usage,
    normalise_usage,
    usage_mapping,
)
from persistence.errors import ValidationError
from persistence.models.ai_calls import CALL_STATUSES
from persistence.values import text_problem

__all__ = ["MAX_COST_USD", "NO_ORGANIZATION", "AICallRecord", "organization_of", "tenant_of"]

MICRO = Decimal("0.000001")
MAX_COST_USD = Decimal("9999.999999")  # NUMERIC(10, 6), the seed's column
_MAX_INT4 = 2**31 - 1
_PROVIDER = re.compile(r"[a-z0-9][a-z0-9._-]{0,49}")
_TEXT_LIMITS = {
    "model": 100,
    "customer_id": 100,
    "organization_id": 100,
    "product_id": 100,
    "environment": 20,
    "request_id": 200,
    "trace_id": 200,
    "error_class": 100,
    "event_id": 200,
}


def _fail(message: str) -> ValidationError:
    return ValidationError(f"invalid AI call: {message}")


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= _MAX_INT4:
        raise _fail(f"{name} must be between 0 and {_MAX_INT4}, got {value}")
    return value


def _text(name: str, value: object, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise _fail(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise _fail(f"{name} must be a str, got {type(value).__name__}")
    limit = _TEXT_LIMITS[name]
    if not value or len(value) > limit:
        raise _fail(f"{name} must be 1 to {limit} characters, got {len(value)}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise _fail(f"{name} must not contain control characters")
    problem = text_problem(value)
    if problem is not None:  # a lone surrogate: COPY would fail mid-batch with a UnicodeEncodeError
        raise _fail(f"{name} {problem}")
    return value


def money(value: object, name: str = "cost_usd") -> Decimal | None:
    """A cost as an exact Decimal with the ledger's 6 places (NUMERIC(10, 6)).

    An exact input (Decimal, int, str) with more than 6 decimal places is a `ValidationError`: the
    ledger would round it (lossy). A float (seed 000's callers pass them) is taken at its shortest
    repr, as the seed does with `Decimal(str(cost))`, and rounded half-up to 6 places: 0.1 + 0.2
    becomes 0.300000, not the binary value's 55 digits. From here on money is Decimal only.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail(f"{name} must be a Decimal, int, str or float, got bool")
    try:
        amount = (
            value
            if isinstance(value, Decimal)
            else Decimal(repr(float(value)))  # float(): numpy's float64 repr is 'np.float64(0.1)'
            if isinstance(value, float)
            else Decimal(value)
            if isinstance(value, int | str)
            else None
        )
    except InvalidOperation:
        raise _fail(f"{name} is not a number: {value!r}") from None
    if amount is None:
        raise _fail(f"{name} must be a Decimal, int, str or float, got {type(value).__name__}")
    if not amount.is_finite():
        raise _fail(f"{name} must be finite, got {amount}")
    if amount < 0:
        raise _fail(f"{name} must not be negative, got {amount}")
    if amount > MAX_COST_USD or amount.quantize(MICRO, rounding=ROUND_HALF_UP) > MAX_COST_USD:
        raise _fail(f"{name} must be at most {MAX_COST_USD}, got {amount}")
    rounded = amount.quantize(MICRO, rounding=ROUND_HALF_UP)
    if not isinstance(value, float) and rounded != amount:
        raise _fail(f"{name} has more than 6 decimal places ({amount}); the ledger would round it (lossy)")
    return rounded


def positive_int(name: str, value: object) -> int:
    """A public method's count argument (a batch size, a concurrency): a positive int, else
    `ValidationError` naming it (not a TypeError later, nor a float silently accepted)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValidationError(f"{name} must be a positive int, got {value}")
    return int(value)


def positive_seconds(name: str, value: object) -> float:
    """A duration argument: a finite positive number of seconds (NaN would freeze a timed loop)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(f"{name} must be a finite number of seconds above 0, got {value!r}")
    return float(value)


_UTC_MIN = datetime.min.replace(tzinfo=UTC)
_UTC_MAX = datetime.max.replace(tzinfo=UTC)


def _utc(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise _fail(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _fail(f"{name} must be timezone-aware (naive datetimes are ambiguous), got {value!r}")
    try:
        at = value.astimezone(UTC)
    except OverflowError:  # its UTC equivalent is before year 1 or after year 9999
        raise _fail(f"{name} is out of range (its UTC time is outside years 1-9999), got {value!r}") from None
    if at in (_UTC_MIN, _UTC_MAX):
        # asyncpg sends these as -infinity / infinity, which read back as something else
        raise _fail(f"{name} is out of range (datetime.min/max are infinities in PostgreSQL), got {value!r}")
    return at


def _json(value: Mapping[str, Any]) -> str:
    """Canonical JSON of `usage` (sorted keys, no spaces), from `_plain`'s checked copy.

    Only JSON-native values are accepted (what reads back equal from jsonb): a dict with str keys,
    a list or tuple (read back as a list), str, int, finite float, bool, None. Anything else (a
    Decimal, a datetime, a set, an object with its own `__str__`, a non-str key) is a
    `ValidationError` naming where it is: converting it to text would store something else.
    """
    plain = _plain(value, "usage", 0)
    try:
        return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:  # not expected after _plain: still typed
        raise _fail(f"usage is not JSON-serialisable: {exc}") from None


MAX_USAGE_DEPTH = 100
_JSON_INT_BITS = 14000  # jsonb holds it; Python's int/str conversion limit stops near 4300 digits


def _plain(node: object, where: str, depth: int) -> Any:
    """A plain-JSON copy of `node` (exact builtin types), or `ValidationError` naming `where`:
    every key and string is text PostgreSQL stores verbatim, every number finite and read back equal,
    the nesting at most `MAX_USAGE_DEPTH` deep."""
    if node is None or isinstance(node, bool):
        return node
    if isinstance(node, str):
        problem = text_problem(node)
        if problem is not None:
            raise _fail(f"{where} {problem}")
        return str.__str__(node)
    if isinstance(node, int):
        if node.bit_length() > _JSON_INT_BITS:
            raise _fail(f"{where} is an integer too large to store")
        return int.__index__(node)
    if isinstance(node, float):
        value = float.__float__(node)
        if not math.isfinite(value):
            raise _fail(f"{where} must be a finite number (JSON has no NaN or infinity), got {value}")
        if abs(value) >= 2**53 and value.is_integer() and Decimal(repr(value)) != Decimal(value):
            raise _fail(f"{where} is a float this large that would not read back equal; pass an int")
        return value
    if depth >= MAX_USAGE_DEPTH:
        raise _fail(f"usage is nested deeper than {MAX_USAGE_DEPTH} levels")
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, item in node.items():
            if not isinstance(key, str):
                raise _fail(f"a key of {where} must be a str, got {type(key).__name__}")
            if (problem := text_problem(key)) is not None:
                raise _fail(f"a key of {where} {problem}")
            shown = key if len(key) <= 40 else f"{key[:37]}..."
            out[str.__str__(key)] = _plain(item, f"{where}[{shown!r}]", depth + 1)
        return out
    if isinstance(node, list | tuple):
        return [_plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node)]
    raise _fail(
        f"{where} is a {type(node).__name__}, not a JSON value (usage takes dict with str keys, list, "
        "str, int, finite float, bool, None)"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AICallRecord:
    """One AI call, validated on construction (`ValidationError` on the first bad field).

    `cost_usd` None means "compute it from `vendor_prices`". `created_at` defaults to now (UTC).
    The idempotency key is `provider:request_id`, else `event:<event_id>`, else a fresh random event
    id (then a retry of the same log cannot be recognised: pass `request_id` or `event_id`).
    """

    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cost_usd: Decimal | None = None  # a Decimal after validation (int, str and float accepted)
    latency_ms: int | None = None
    status: str = "success"
    error_class: str | None = None
    customer_id: str | None = None
    organization_id: str | None = None
    product_id: str | None = None
    environment: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    usage: Mapping[str, Any] | BaseModel | None = None  # an SDK object is kept as its model_dump(mode="json")
    event_id: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Derived, filled by __post_init__.
    usage_json: str | None = field(init=False, repr=False, compare=False, default=None)
    idempotency_key: str = field(init=False, default="")
    payload_hash: bytes = field(init=False, repr=False, default=b"")

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        provider = self.provider
        if not isinstance(provider, str):
            raise _fail(f"provider must be a str, got {type(provider).__name__}")
        if not _PROVIDER.fullmatch(provider.lower()):
            shown = provider if len(provider) <= 60 else provider[:57] + "..."
            raise _fail(
                f"provider must be 1 to 50 characters of a-z, 0-9, '.', '_', '-' (got {len(provider)} "
                f"characters: {shown!r})"
            )
        set_(self, "provider", provider.lower())
        _text("model", self.model, required=True)
        for name in BUCKETS:
            _count(name, getattr(self, name))
        if self.total_tokens > 2**63 - 1:
            raise _fail("total_tokens out of range")
        set_(self, "cost_usd", money(self.cost_usd))
        if self.latency_ms is not None:
            _count("latency_ms", self.latency_ms)
        if self.status not in CALL_STATUSES:
            raise _fail(f"status must be one of {', '.join(CALL_STATUSES)}, got {self.status!r}")
        for name in ("error_class", "customer_id", "organization_id", "product_id", "environment",
                     "request_id", "trace_id", "event_id"):  # fmt: skip
            _text(name, getattr(self, name))
        set_(self, "created_at", _utc("created_at", self.created_at))
        if self.usage is not None:
            usage = usage_mapping(self.usage)
            set_(self, "usage", usage)
            set_(self, "usage_json", _json(usage))
            if not (isinstance(usage, _Derived) and usage.provider == self.provider):
                check_usage(self.provider, usage, TokenUsage(*(getattr(self, b) for b in BUCKETS)))
        if self.request_id is not None:
            key = f"{self.provider}:{self.request_id}"
        else:
            key = f"event:{self.event_id if self.event_id is not None else uuid.uuid4()}"
        set_(self, "idempotency_key", key)
        set_(self, "payload_hash", self._hash())

    @classmethod
    def from_usage(
        cls, *, provider: str, model: str, usage: Mapping[str, Any] | BaseModel, **fields: Any
    ) -> AICallRecord:
        """A record whose token buckets come from the provider's raw usage object (kept as JSONB):
        `AICallRecord.from_usage(provider="openai", model=..., usage=response.usage)`. Bucket counts
        also given in `fields` must agree with it (`UsageMismatchError`)."""
        if not isinstance(provider, str):
            raise _fail(f"provider must be a str, got {type(provider).__name__}")
        plain = usage_mapping(usage)
        buckets = normalise_usage(provider, plain)
        given = {b: _count(b, value) for b in BUCKETS if (value := fields.pop(b, None)) is not None}
        differ = {b: (n, getattr(buckets, b)) for b, n in given.items() if n != getattr(buckets, b)}
        if differ:
            raise UsageMismatchError(provider.lower(), differ)
        fields.update({b: getattr(buckets, b) for b in BUCKETS})
        return cls(provider=provider, model=model, usage=_Derived(provider.lower(), plain), **fields)

    @classmethod
    def coerce(cls, value: AICallRecord | Mapping[str, Any]) -> AICallRecord:
        """A record from a record or a dict of its fields (seed 000's `log_batch` takes dicts)."""
        if isinstance(value, AICallRecord):
            return value
        if not isinstance(value, Mapping):
            raise _fail(f"a call must be an AICallRecord or a mapping, got {type(value).__name__}")
        fields = dict(value)
        unknown = set(fields) - _INIT_FIELDS
        if unknown:
            raise _fail(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        if fields.get("usage") is not None and (
            fields.get("input_tokens") is None and fields.get("output_tokens") is None
        ):
            fields.pop("input_tokens", None)
            fields.pop("output_tokens", None)
            return cls.from_usage(**fields)
        try:
            return cls(**fields)
        except TypeError as exc:  # a missing required field
            raise _fail(str(exc)) from None

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
            + self.reasoning_tokens
        )

    @property
    def hour(self) -> datetime:
        """The UTC hour the call belongs to (its rollup bucket)."""
        return self.created_at.replace(minute=0, second=0, microsecond=0)

    def _hash(self) -> bytes:
        """SHA-256 of the call's content, without `created_at`: a retry logged later is the same call."""
        content = [
            self.provider, self.model, self.input_tokens, self.output_tokens, self.cache_read_tokens,
            self.cache_write_tokens, self.reasoning_tokens,
            None if self.cost_usd is None else str(self.cost_usd), self.latency_ms, self.status,
            self.error_class, self.customer_id, self.organization_id, self.product_id, self.environment,
            self.request_id, self.trace_id, self.usage_json,
        ]  # fmt: skip
        if self.cache_write_1h_tokens:  # appended only when used: earlier calls keep their hashes
            content.append(["cache_write_1h_tokens", self.cache_write_1h_tokens])
        return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).digest()


class _Derived(dict[str, Any]):
    """A usage whose buckets `from_usage` just derived from it: the record need not check them again."""

    __slots__ = ("provider",)

    def __init__(self, provider: str, usage: Mapping[str, Any]) -> None:
        super().__init__(usage)
        self.provider = provider


_INIT_FIELDS = {
    name for name in AICallRecord.__dataclass_fields__ if AICallRecord.__dataclass_fields__[name].init
}


# What the ledger's NOT NULL tenant column stores for a call without an organization (revision
# 0025, as `vendor_prices.tenant_id` does). Records refuse an organization id of '', so None <-> ''
# is lossless: these two functions are the ledger's boundary.
NO_ORGANIZATION = ""


def tenant_of(record: AICallRecord) -> str:
    """The `organization_id` stored for `record`."""
    organization = record.organization_id
    return NO_ORGANIZATION if organization is None else organization


def organization_of(stored: str | None) -> str | None:
    """A stored `organization_id` as the record field it came from (None for '')."""
    return None if stored == NO_ORGANIZATION else stored


def hour_floor(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_ceil(at: datetime) -> datetime:
    floor = hour_floor(at)
    return floor if floor == at else floor + timedelta(hours=1)
