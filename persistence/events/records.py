"""Seed 004's event models: `PlatformEvent`, `CostEvent`, `AgentExecution` and their enums.

Validated when built (`ValidationError`, nothing queued): ids are non-empty strings of at most 100
characters, categories and cost types are the enums (or their values), money is a `Decimal` (a float
is taken by its shortest repr and rounded to the column's 10 places; a Decimal with more places is
refused, never rounded silently), scores lie in [0, 1], timestamps are timezone-aware (kept in UTC),
JSON payloads are objects PostgreSQL's `jsonb` can hold. Each event carries an `event_id` (a uuid4
unless given) and its `time` (now unless given), fixed when it is built, so a replayed copy is the
same row: writes are idempotent on (tenant_id, time, event_id), the first write wins. A cost event
of a ledger call carries its `call_id`, and its event id is then `call_event_id(call_id)`, so the
call's cost is one row however often (and by whom) it is logged, given the call's time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import Enum, StrEnum
from typing import Any, ClassVar, TypeVar

from persistence.errors import ValidationError

__all__ = [
    "AgentExecution",
    "CostEvent",
    "CostType",
    "Event",
    "EventCategory",
    "PlatformEvent",
    "ServiceProvider",
    "call_event_id",
    "decode_event",
    "encode_event",
]

MONEY_PLACES = 10  # NUMERIC(20, 10)
SCORE_PLACES = 6  # NUMERIC(7, 6)
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1


class EventCategory(StrEnum):
    USER_BEHAVIOR = "user_behavior"
    AGENT_PERFORMANCE = "agent_performance"
    SYSTEM_HEALTH = "system_health"


class CostType(StrEnum):
    LLM = "llm"
    EMBEDDING = "embedding"
    STORAGE = "storage"
    COMPUTE = "compute"


class ServiceProvider(StrEnum):
    """The seed names openai and pinecone "etc."; the rest are the usual others. A provider not
    listed is `OTHER` (its name can go in `service_tier` or `metadata`)."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GOOGLE = "google"
    COHERE = "cohere"
    PINECONE = "pinecone"
    SUPABASE = "supabase"
    AWS = "aws"
    AZURE = "azure"
    OTHER = "other"


E = TypeVar("E", bound=StrEnum)


def _enum(name: str, kind: type[E], value: object) -> E:
    if isinstance(value, kind):
        return value
    try:
        if isinstance(value, str):
            return kind(value)
        raise ValueError(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ValidationError(f"{name} must be one of {allowed}, got {value!r}") from None


def _text(name: str, value: object, *, optional: bool = False, limit: int = 100) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise ValidationError(
            f"{name} must be a non-empty string of at most {limit} characters (no NUL), got {value!r}"
        )
    return value


def _int(name: str, value: object, *, optional: bool = False, limit: int = _INT32) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ValidationError(f"{name} must be an int in [0, {limit}], got {value!r}")
    return int(value)


def _decimal(name: str, value: object, places: int, *, optional: bool = False) -> Decimal | None:
    """A Decimal with at most `places` fractional digits. A float is taken by its shortest repr
    (0.012 is 0.012) and rounded to `places`; an int or str is exact; a Decimal with more places is
    refused (rounding money silently is how ledgers drift)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise ValidationError(f"{name} must be a Decimal (or int, float, str), got {type(value).__name__}")
    try:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationError(f"{name} must be finite, got {value!r}")
            number = Decimal(repr(value)).quantize(Decimal(1).scaleb(-places))
        else:
            number = Decimal(value)
    except InvalidOperation:
        raise ValidationError(f"{name} must be a number, got {value!r}") from None
    if not number.is_finite():
        raise ValidationError(f"{name} must be finite, got {value!r}")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        raise ValidationError(f"{name} has more than {places} decimal places: {value!r}")
    return number


def _json_default(value: object) -> object:
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(type(value).__name__)


def _json(name: str, value: object) -> tuple[dict[str, Any], str]:
    """A JSON object as (a detached copy, its text); `ValidationError` if jsonb cannot hold it."""
    if not isinstance(value, Mapping):
        raise ValidationError(f"{name} must be a mapping, got {type(value).__name__}")
    try:
        text = json.dumps(value, default=_json_default, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":"))  # fmt: skip
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{name} is not JSON (jsonb): {type(exc).__name__}: {exc}") from None
    if "\\u0000" in text:
        raise ValidationError(f"{name} contains a NUL character, which jsonb cannot store")
    copy: dict[str, Any] = json.loads(text)
    return copy, text


def _time(value: object) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"time must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _uuid(value: object) -> uuid.UUID:
    if value is None:
        return uuid.uuid4()
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValidationError(f"event_id must be a UUID, got {value!r}")


def call_event_id(call_id: int) -> uuid.UUID:
    """The event id of ledger call `call_id`'s cost event: `md5('persistence.ai_call:' || call_id)`
    as a uuid, the same expression revision 0023's check holds the table to (SQL has md5, not sha1)."""
    digest = hashlib.md5(f"persistence.ai_call:{call_id}".encode(), usedforsecurity=False)
    return uuid.UUID(hex=digest.hexdigest())


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


Money = Decimal | int | float | str  # what a money or score argument may be (stored as Decimal)
Json = Mapping[str, Any]


@dataclass(frozen=True, init=False)
class PlatformEvent:
    """Something that happened on the platform (a query, a page view, a health signal)."""

    kind: ClassVar[str] = "platform"

    tenant_id: str
    event_type: str
    event_category: EventCategory
    user_id: str | None
    session_id: str | None
    event_data: Json
    metadata: Json
    time: datetime
    event_id: uuid.UUID
    event_data_json: str = field(init=False, repr=False, compare=False)
    metadata_json: str = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        *,
        tenant_id: str,
        event_type: str,
        event_category: EventCategory | str,
        user_id: str | None = None,
        session_id: str | None = None,
        event_data: Json | None = None,
        metadata: Json | None = None,
        time: datetime | None = None,
        event_id: uuid.UUID | str | None = None,
    ) -> None:
        _set(self, "tenant_id", _text("tenant_id", tenant_id))
        _set(self, "event_type", _text("event_type", event_type))
        _set(self, "event_category", _enum("event_category", EventCategory, event_category))
        _set(self, "user_id", _text("user_id", user_id, optional=True))
        _set(self, "session_id", _text("session_id", session_id, optional=True))
        data, data_json = _json("event_data", {} if event_data is None else event_data)
        meta, meta_json = _json("metadata", {} if metadata is None else metadata)
        _set(self, "event_data", data)
        _set(self, "event_data_json", data_json)
        _set(self, "metadata", meta)
        _set(self, "metadata_json", meta_json)
        _set(self, "time", _time(time))
        _set(self, "event_id", _uuid(event_id))


@dataclass(frozen=True, init=False)
class CostEvent:
    """Money a tenant's activity cost (an LLM call, embeddings, storage, compute), in USD."""

    kind: ClassVar[str] = "cost"

    tenant_id: str
    cost_type: CostType
    cost_usd: Decimal
    service: ServiceProvider
    user_id: str | None
    quantity: int | None
    service_tier: str | None
    metadata: Json
    time: datetime
    event_id: uuid.UUID
    call_id: int | None
    metadata_json: str = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        *,
        tenant_id: str,
        cost_type: CostType | str,
        cost_usd: Money,
        service: ServiceProvider | str,
        user_id: str | None = None,
        quantity: int | None = None,
        service_tier: str | None = None,
        metadata: Json | None = None,
        time: datetime | None = None,
        event_id: uuid.UUID | str | None = None,
        call_id: int | None = None,
    ) -> None:
        """`call_id`: the ledger call (`ai_calls.id`) this cost is; the event id is then derived
        from it (another one is refused) and `time` must be given: the call's `created_at`, so
        every copy of the call's event is the same row."""
        _set(self, "tenant_id", _text("tenant_id", tenant_id))
        _set(self, "cost_type", _enum("cost_type", CostType, cost_type))
        cost = _decimal("cost_usd", cost_usd, MONEY_PLACES)
        if cost is None or cost < 0 or cost >= 10**10:
            raise ValidationError(f"cost_usd must be in [0, 1e10), got {cost_usd!r}")
        _set(self, "cost_usd", cost)
        _set(self, "service", _enum("service", ServiceProvider, service))
        _set(self, "user_id", _text("user_id", user_id, optional=True))
        _set(self, "quantity", _int("quantity", quantity, optional=True, limit=_INT64))
        _set(self, "service_tier", _text("service_tier", service_tier, optional=True))
        meta, meta_json = _json("metadata", {} if metadata is None else metadata)
        _set(self, "metadata", meta)
        _set(self, "metadata_json", meta_json)
        _set(self, "time", _time(time))
        _set(self, "call_id", _int("call_id", call_id, optional=True, limit=_INT64))
        if call_id is None:
            _set(self, "event_id", _uuid(event_id))
            return
        if time is None:
            raise ValidationError("a cost event with a call_id needs the call's time (its created_at)")
        derived = call_event_id(call_id)
        if event_id is not None and _uuid(event_id) != derived:
            raise ValidationError(
                f"event_id of call {call_id}'s cost event must be {derived}, got {event_id!r}"
            )
        _set(self, "event_id", derived)


def _score(name: str, value: object) -> Decimal | None:
    score = _decimal(name, value, SCORE_PLACES, optional=True)
    if score is not None and not 0 <= score <= 1:
        raise ValidationError(f"{name} must be in [0, 1], got {value!r}")
    return score


@dataclass(frozen=True, init=False)
class AgentExecution:
    """One run of an agent: how long, whether it succeeded, its quality and cost."""

    kind: ClassVar[str] = "agent"

    tenant_id: str
    agent_id: str
    agent_type: str
    execution_time_ms: int
    success: bool
    user_id: str | None
    quality_score: Decimal | None
    citation_accuracy: Decimal | None
    hallucination_detected: bool | None
    cost_usd: Decimal | None
    total_tokens: int | None
    error_message: str | None
    metadata: Json
    time: datetime
    event_id: uuid.UUID
    metadata_json: str = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        *,
        tenant_id: str,
        agent_id: str,
        agent_type: str,
        execution_time_ms: int,
        success: bool,
        user_id: str | None = None,
        quality_score: Money | None = None,
        citation_accuracy: Money | None = None,
        hallucination_detected: bool | None = None,
        cost_usd: Money | None = None,
        total_tokens: int | None = None,
        error_message: str | None = None,
        metadata: Json | None = None,
        time: datetime | None = None,
        event_id: uuid.UUID | str | None = None,
    ) -> None:
        _set(self, "tenant_id", _text("tenant_id", tenant_id))
        _set(self, "agent_id", _text("agent_id", agent_id))
        _set(self, "agent_type", _text("agent_type", agent_type, limit=50))
        _set(self, "execution_time_ms", _int("execution_time_ms", execution_time_ms))
        if not isinstance(success, bool):
            raise ValidationError(f"success must be a bool, got {success!r}")
        _set(self, "success", success)
        _set(self, "user_id", _text("user_id", user_id, optional=True))
        _set(self, "quality_score", _score("quality_score", quality_score))
        _set(self, "citation_accuracy", _score("citation_accuracy", citation_accuracy))
        if hallucination_detected is not None and not isinstance(hallucination_detected, bool):
            raise ValidationError(
                f"hallucination_detected must be a bool or None, got {hallucination_detected!r}"
            )
        _set(self, "hallucination_detected", hallucination_detected)
        cost = _decimal("cost_usd", cost_usd, MONEY_PLACES, optional=True)
        if cost is not None and not 0 <= cost < 10**10:
            raise ValidationError(f"cost_usd must be in [0, 1e10), got {cost_usd!r}")
        _set(self, "cost_usd", cost)
        _set(self, "total_tokens", _int("total_tokens", total_tokens, optional=True))
        if error_message is not None and (not isinstance(error_message, str) or "\x00" in error_message):
            raise ValidationError("error_message must be a string without NUL characters, or None")
        _set(self, "error_message", error_message)
        meta, meta_json = _json("metadata", {} if metadata is None else metadata)
        _set(self, "metadata", meta)
        _set(self, "metadata_json", meta_json)
        _set(self, "time", _time(time))
        _set(self, "event_id", _uuid(event_id))


Event = PlatformEvent | CostEvent | AgentExecution
_KINDS: dict[str, type[PlatformEvent] | type[CostEvent] | type[AgentExecution]] = {
    cls.kind: cls for cls in (PlatformEvent, CostEvent, AgentExecution)
}


def encode_event(event: Event) -> dict[str, Any]:
    """The event as a JSON object (a spool line's record): Decimals, times and ids as strings."""
    out: dict[str, Any] = {"kind": event.kind}
    for f in dataclasses.fields(event):
        if not f.init:
            continue
        value = getattr(event, f.name)
        if isinstance(value, Decimal | uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Enum):
            value = value.value
        out[f.name] = value
    return out


def decode_event(data: Mapping[str, Any]) -> Event:
    """The event of `encode_event`'s object, validated again; `ValidationError` (or KeyError,
    TypeError, ValueError) if it is not one."""
    fields = dict(data)
    cls = _KINDS[fields.pop("kind")]
    fields["time"] = datetime.fromisoformat(fields["time"])
    for name in ("cost_usd", "quality_score", "citation_accuracy"):
        if fields.get(name) is not None:
            fields[name] = Decimal(fields[name])
    return cls(**fields)
