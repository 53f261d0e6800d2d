"""Prices entered and listed through a typed API (`add_price`, `list_prices`).

`add_price` writes one `vendor_prices` row: a global price, or with `tenant_id` a tenant's override
(matched against a call's `organization_id`, it wins over the global price). Money is Decimal
only: a float is refused with `FloatPriceError` (0.1 is not 0.1 in binary). A price entered from
`effective_from` ends the open-ended row of the same key that started before it (a price change,
one transaction), so the next call after that instant is priced by the new row; a period that
would overlap any other row is a `ConflictError` (the table's trigger). A running `AICallLogger`
prices its next call with the new row (the version counter of revision 0010).

`min_input_tokens` N enters a context-length tier: the row prices (whole) calls whose input tokens,
cached included, exceed N; 0 is the base tier. Each tier is its own effective-dated key; a tenant's
row of one tier overrides that tier only.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.prices import Price
from persistence.errors import PersistenceError, ValidationError, translate

__all__ = ["FloatPriceError", "add_price", "list_prices"]

_PROVIDER = re.compile(r"[a-z0-9][a-z0-9._-]{0,49}")
_MICRO = Decimal("0.000001")
_MAX = Decimal("99999999.999999")  # NUMERIC(14, 6)
_COLUMNS = (
    "id, provider, model, tenant_id, input_per_mtok, output_per_mtok, cache_read_per_mtok, "
    "cache_write_per_mtok, reasoning_per_mtok, effective_from, effective_to, cache_write_1h_per_mtok, source, "
    "min_input_tokens"
)
_CLOSE_OPEN = sa.text(
    "UPDATE vendor_prices SET effective_to = :effective_from "
    "WHERE provider = :provider AND model = :model AND tenant_id = :tenant_id "
    "AND min_input_tokens = :min_input_tokens AND effective_to IS NULL AND effective_from < :effective_from"
)
_INSERT = sa.text(
    "INSERT INTO vendor_prices (provider, model, tenant_id, input_per_mtok, output_per_mtok, "
    "cache_read_per_mtok, cache_write_per_mtok, reasoning_per_mtok, cache_write_1h_per_mtok, "
    "effective_from, effective_to, source, min_input_tokens) VALUES (:provider, :model, :tenant_id, "
    ":input_per_mtok, :output_per_mtok, :cache_read_per_mtok, :cache_write_per_mtok, :reasoning_per_mtok, "
    ":cache_write_1h_per_mtok, :effective_from, :effective_to, :source, :min_input_tokens) RETURNING id, "
    "provider, model, tenant_id, input_per_mtok, output_per_mtok, cache_read_per_mtok, cache_write_per_mtok, "
    "reasoning_per_mtok, effective_from, effective_to, cache_write_1h_per_mtok, source, min_input_tokens"
)


class FloatPriceError(ValidationError):
    """A price given as a float: prices are exact (Decimal), a binary float is not."""


def _price(name: str, value: object, *, required: bool = True) -> Decimal | None:
    if value is None:
        if required:
            raise ValidationError(f"{name} is required")
        return None
    if isinstance(value, float):
        raise FloatPriceError(
            f"{name} must be a Decimal, got the float {value!r} (pass Decimal({str(value)!r}))"
        )
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValidationError(f"{name} must be a Decimal, got {type(value).__name__}")
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0 or amount > _MAX:
        raise ValidationError(f"{name} must be a finite price between 0 and {_MAX} USD per million tokens")
    if amount != amount.quantize(_MICRO):
        raise ValidationError(
            f"{name} has more than 6 decimal places ({amount}); vendor_prices would round it"
        )
    return amount


def _or(value: Decimal | None, fallback: Decimal | None) -> Decimal | None:
    return fallback if value is None else value


def _when(name: str, value: object, *, required: bool) -> datetime | None:
    if value is None and not required:
        return None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValidationError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def _tier(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63 - 1:
        raise ValidationError(f"{name} must be a non-negative integer number of tokens, got {value!r}")
    return value


def _text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or any(ord(c) < 32 for c in value):
        raise ValidationError(f"{name} must be 1 to {limit} printable characters, got {value!r}")
    return value


async def add_price(
    engine: AsyncEngine,
    provider: str,
    model: str,
    *,
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    cache_read_per_mtok: Decimal | None = None,
    cache_write_per_mtok: Decimal | None = None,
    reasoning_per_mtok: Decimal | None = None,
    cache_write_1h_per_mtok: Decimal | None = None,
    effective_from: datetime,
    effective_to: datetime | None = None,
    tenant_id: str | None = None,
    source: str = "manual",
    min_input_tokens: int = 0,
) -> Price:
    """Enter a price (USD per million tokens) in force from `effective_from` (until `effective_to`).

    Omitted buckets are charged as genai-prices charges them: cache reads and writes at the input
    price, reasoning at the output price; no 1-hour cache-write price (calls with some are then
    unpriced, never priced at the 5-minute rate). `min_input_tokens`: the tier (calls above that
    many input tokens; 0 the base price). Returns the stored row.
    """
    if not isinstance(engine, AsyncEngine):
        raise ValidationError(f"engine must be an AsyncEngine, got {type(engine).__name__}")
    provider = _text("provider", provider, 50).lower()
    if not _PROVIDER.fullmatch(provider):
        raise ValidationError(f"provider must be a-z, 0-9, '.', '_', '-' (got {provider!r})")
    inp = _price("input_per_mtok", input_per_mtok)
    out = _price("output_per_mtok", output_per_mtok)
    start = _when("effective_from", effective_from, required=True)
    end = _when("effective_to", effective_to, required=False)
    if start is not None and end is not None and end <= start:
        raise ValidationError("effective_to must be after effective_from")
    params: dict[str, Any] = {
        "provider": provider,
        "model": _text("model", model, 100),
        "tenant_id": "" if tenant_id is None else _text("tenant_id", tenant_id, 100),
        "input_per_mtok": inp,
        "output_per_mtok": out,
        "cache_read_per_mtok": _or(_price("cache_read_per_mtok", cache_read_per_mtok, required=False), inp),
        "cache_write_per_mtok": _or(
            _price("cache_write_per_mtok", cache_write_per_mtok, required=False), inp
        ),
        "reasoning_per_mtok": _or(_price("reasoning_per_mtok", reasoning_per_mtok, required=False), out),
        "cache_write_1h_per_mtok": _price("cache_write_1h_per_mtok", cache_write_1h_per_mtok, required=False),
        "effective_from": start,
        "effective_to": end,
        "source": _text("source", source, 200),
        "min_input_tokens": _tier("min_input_tokens", min_input_tokens),
    }
    try:
        async with engine.begin() as conn:
            if end is None:
                await conn.execute(_CLOSE_OPEN, params)
            row = (await conn.execute(_INSERT, params)).one()
    except PersistenceError:
        raise
    except Exception as exc:
        err = translate(exc)
        if err is None:
            raise
        raise err from exc
    return Price(*row)


async def list_prices(
    engine: AsyncEngine,
    *,
    provider: str | None = None,
    model: str | None = None,
    tenant_id: str | None = None,
    at: datetime | None = None,
    min_input_tokens: int | None = None,
) -> list[Price]:
    """Rows of `vendor_prices`, by provider, model, tenant, tier and start. `tenant_id` '' is the
    global prices only, a tenant's id that tenant's overrides, None all; `at`: only rows in force
    then; `min_input_tokens`: only that tier (0: base prices), None all tiers."""
    if not isinstance(engine, AsyncEngine):
        raise ValidationError(f"engine must be an AsyncEngine, got {type(engine).__name__}")
    where = ["true"]
    params: dict[str, Any] = {}
    if provider is not None:
        where.append("provider = :provider")
        params["provider"] = _text("provider", provider, 50).lower()
    if model is not None:
        where.append("model = :model")
        params["model"] = _text("model", model, 100)
    if tenant_id is not None:
        where.append("tenant_id = :tenant_id")
        params["tenant_id"] = tenant_id if tenant_id == "" else _text("tenant_id", tenant_id, 100)
    if min_input_tokens is not None:
        where.append("min_input_tokens = :min_input_tokens")
        params["min_input_tokens"] = _tier("min_input_tokens", min_input_tokens)
    if at is not None:
        where.append("effective_from <= :at AND (effective_to IS NULL OR effective_to > :at)")
        params["at"] = _when("at", at, required=True)
    statement = sa.text(
        f"SELECT {_COLUMNS} FROM vendor_prices WHERE {' AND '.join(where)} "  # noqa: S608 (fixed fragments, bound values)
        "ORDER BY provider, model, tenant_id, min_input_tokens, effective_from"
    )
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(statement, params)).all()
    except PersistenceError:
        raise
    except Exception as exc:
        err = translate(exc)
        if err is None:
            raise
        raise err from exc
    return [Price(*row) for row in rows]
