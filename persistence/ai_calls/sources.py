"""Usage sources: what a metering vendor says we used, read from its API or from an export file.

Both adapters produce the same `VendorUsage`, parsed from seed 000's `/v1/usage` shape
(`total_transactions`, `total_cost`, `by_provider`) plus optional per-model-and-day `lines`. JSON
numbers are read as `Decimal` (never float), so a vendor's `12.345678` stays exact.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import SecretStr

from persistence.errors import ConfigurationError, InvalidRequestError, UsageSourceError

_MAX_BODY = 64 * 1024 * 1024  # a usage report is kilobytes; anything this large is not one
_CALL_KEYS = ("calls", "transactions", "total_transactions", "count")
_COST_KEYS = ("cost", "cost_usd", "total_cost", "total_cost_usd")


@dataclass(frozen=True, slots=True)
class UsageAmount:
    """Calls and cost for one slice of usage."""

    calls: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class UsageLine:
    """The vendor's usage for one provider, model and UTC day."""

    provider: str
    model: str
    day: date
    calls: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class VendorUsage:
    """A source's numbers for a period. `by_provider` / `lines` are None when the source lacks them."""

    total_calls: int
    total_cost_usd: Decimal
    by_provider: Mapping[str, UsageAmount] | None = None
    lines: tuple[UsageLine, ...] | None = None


@runtime_checkable
class UsageSource(Protocol):
    """Anything that can say how much was used in [start, end). `name` files its reports."""

    @property
    def name(self) -> str: ...

    async def fetch(self, start: datetime, end: datetime) -> VendorUsage: ...


# --------------------------------------------------------------------------------------------------
# Parsing (shared by the HTTP and file adapters)
# --------------------------------------------------------------------------------------------------


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise UsageSourceError(f"{what}: expected a whole number of calls, got {type(value).__name__}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise UsageSourceError(f"{what}: not a number") from None
    if not number.is_finite() or number != number.to_integral_value() or number < 0:
        raise UsageSourceError(f"{what}: expected a non-negative whole number")
    return int(number)


def _money(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise UsageSourceError(f"{what}: expected an amount, got {type(value).__name__}")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise UsageSourceError(f"{what}: not a number") from None
    if not amount.is_finite() or amount < 0:
        raise UsageSourceError(f"{what}: expected a finite, non-negative amount")
    return amount


def _pick(entry: Mapping[str, Any], keys: Iterable[str], what: str) -> object:
    for key in keys:
        if key in entry:
            return entry[key]
    raise UsageSourceError(f"{what}: missing (one of {', '.join(keys)})")


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise UsageSourceError(f"{what}: expected a non-empty string of at most {limit} characters")
    return value


def _day(value: object, what: str) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    raise UsageSourceError(f"{what}: expected a date (YYYY-MM-DD)")


def _amount(entry: object, what: str) -> UsageAmount:
    if not isinstance(entry, Mapping):
        raise UsageSourceError(f"{what}: expected an object")
    return UsageAmount(
        calls=_count(_pick(entry, _CALL_KEYS, f"{what} calls"), f"{what} calls"),
        cost_usd=_money(_pick(entry, _COST_KEYS, f"{what} cost"), f"{what} cost"),
    )


def _line(entry: object, what: str) -> UsageLine:
    if not isinstance(entry, Mapping):
        raise UsageSourceError(f"{what}: expected an object")
    amount = _amount(entry, what)
    return UsageLine(
        provider=_text(entry.get("provider"), f"{what}.provider", 50).lower(),  # ours are lower case
        model=_text(entry.get("model"), f"{what}.model", 100),
        day=_day(entry.get("date", entry.get("day")), f"{what}.date"),
        calls=amount.calls,
        cost_usd=amount.cost_usd,
    )


def providers_of(lines: Iterable[UsageLine]) -> dict[str, UsageAmount]:
    """Per-provider totals of model/day lines."""
    calls: dict[str, int] = {}
    cost: dict[str, Decimal] = {}
    for line in lines:
        calls[line.provider] = calls.get(line.provider, 0) + line.calls
        cost[line.provider] = cost.get(line.provider, Decimal(0)) + line.cost_usd
    return {p: UsageAmount(calls[p], cost[p]) for p in sorted(calls)}


def parse_usage(payload: object) -> VendorUsage:
    """`VendorUsage` from seed 000's `/v1/usage` JSON (numbers already parsed as Decimal).

    `by_provider` values take `calls`/`transactions` and `cost`/`cost_usd`; optional `lines` (or
    `by_model_day`) hold `{provider, model, date, calls, cost}`. Without `by_provider` (or with an
    empty one), it is derived from the lines. Provider names are compared in lower case, as ours are.
    """
    if not isinstance(payload, Mapping):
        raise UsageSourceError("usage report: expected a JSON object")
    total_calls = _count(_pick(payload, ("total_transactions", "total_calls"), "total_transactions"), "total")
    total_cost = _money(_pick(payload, ("total_cost", "total_cost_usd"), "total_cost"), "total_cost")
    raw_lines = payload.get("lines", payload.get("by_model_day"))
    lines: tuple[UsageLine, ...] | None = None
    if raw_lines is not None:
        if not isinstance(raw_lines, list):
            raise UsageSourceError("lines: expected a list")
        lines = tuple(_line(entry, f"lines[{i}]") for i, entry in enumerate(raw_lines))
    raw_providers = payload.get("by_provider")
    by_provider: dict[str, UsageAmount] | None = None
    if raw_providers is not None:
        if not isinstance(raw_providers, Mapping):
            raise UsageSourceError("by_provider: expected an object")
        by_provider = {}
        for p, v in raw_providers.items():
            name, amount = _text(p, "by_provider key", 50).lower(), _amount(v, f"by_provider[{p!r}]")
            seen = by_provider.get(name)  # "OpenAI" and "openai" are one provider, as in our ledger
            by_provider[name] = (
                amount
                if seen is None
                else UsageAmount(seen.calls + amount.calls, seen.cost_usd + amount.cost_usd)
            )
    if not by_provider:  # absent, or an empty object: no per-provider figures
        by_provider = providers_of(lines) if lines is not None else None
    return VendorUsage(total_calls, total_cost, by_provider, lines)


def _loads(body: bytes | str, what: str) -> object:
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageSourceError(f"{what}: not valid JSON ({type(exc).__name__})") from None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number")


def check_period(start: datetime, end: datetime) -> None:
    """Timezone-aware bounds with start < end, or `InvalidRequestError`."""
    for label, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise InvalidRequestError(f"{label} must be a timezone-aware datetime (UTC), got {value!r}")
    if end <= start:
        raise InvalidRequestError(f"the period is empty: end {end.isoformat()} <= start {start.isoformat()}")


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


class HttpUsageSource:
    """The metering vendor's usage API: `GET {base_url}/v1/usage?start_date=...&end_date=...`.

    Bearer key as `SecretStr` (sent only to the configured host: the header is not forwarded on
    redirects, and never appears in errors or reprs). Each attempt has `timeout` seconds; 5xx, 429 and
    network errors are retried `retries` times with exponential backoff and jitter (honouring
    `Retry-After` up to `max_backoff`); other 4xx fail at once. Runs urllib in a worker thread.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str,
        *,
        name: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        path: str = "/v1/usage",
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("metering API URL must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise ConfigurationError("metering API URL must not carry credentials; use the API key")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise ConfigurationError("timeout must be > 0; retries, backoff and max_backoff >= 0")
        self._url = base_url.rstrip("/") + "/" + path.lstrip("/")
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self._name = name or parts.hostname
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.attempts = 0  # total HTTP attempts made, for diagnostics and tests

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"HttpUsageSource({self._url!r}, name={self._name!r})"

    async def fetch(self, start: datetime, end: datetime) -> VendorUsage:
        check_period(start, end)
        query = urllib.parse.urlencode({"start_date": start.isoformat(), "end_date": end.isoformat()})
        url = f"{self._url}?{query}"
        attempt = 0
        while True:
            self.attempts += 1
            try:
                body = await asyncio.to_thread(self._get, url)
                return parse_usage(_loads(body, "usage report"))
            except _Retry as retry:
                if attempt >= self.retries:
                    raise UsageSourceError(
                        f"{self._name}: usage API failed after {attempt + 1} attempts: {retry.reason}",
                        status=retry.status,
                        retryable=True,
                    ) from None
                await asyncio.sleep(self._delay(attempt, retry.retry_after))
                attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.max_backoff, self.backoff * (2.0**attempt))
        delay = base * (0.5 + random.random() / 2)  # jitter spreads many clients' retries
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _get(self, url: str) -> bytes:
        request = urllib.request.Request(url, method="GET")  # noqa: S310 - scheme checked in __init__
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", "persistence-reconciliation/1")
        # Unredirected: urllib would otherwise copy the key to wherever a redirect points.
        request.add_unredirected_header("Authorization", f"Bearer {self._key.get_secret_value()}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                body: bytes = response.read(_MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
            if status >= 500 or status == 429:
                raise _Retry(f"HTTP {status}", status, _retry_after(exc.headers.get("Retry-After"))) from None
            hint = " (check METERING_API_KEY)" if status in (401, 403) else ""
            raise UsageSourceError(
                f"{self._name}: usage API answered HTTP {status}{hint}", status=status
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retry(f"network error: {type(reason).__name__}", None, None) from None
        if len(body) > _MAX_BODY:
            raise UsageSourceError(f"{self._name}: usage report larger than {_MAX_BODY} bytes")
        return body


class _Retry(Exception):
    def __init__(self, reason: str, status: int | None, retry_after: float | None) -> None:
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return seconds if seconds >= 0 else None


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


class FileUsageSource:
    """A vendor export: JSON in the `/v1/usage` shape, or CSV with one row per provider, model and day.

    CSV columns: `provider`, `model`, `date` (YYYY-MM-DD, UTC), `calls` (or `transactions`), `cost`
    (or `cost_usd`). CSV rows are filtered to the days that overlap the period; a JSON export is taken
    as the vendor's numbers for exactly the period asked.
    """

    def __init__(self, path: Path | str, *, name: str | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".json", ".csv"):
            raise ConfigurationError(f"usage file must be .json or .csv, got {self.path.name!r}")
        self._format = suffix[1:]
        self._name = name or f"file:{self.path.name}"

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"FileUsageSource({str(self.path)!r}, name={self._name!r})"

    async def fetch(self, start: datetime, end: datetime) -> VendorUsage:
        check_period(start, end)
        try:
            raw = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            raise UsageSourceError(f"cannot read usage file {self.path}: {exc.strerror}") from None
        if self._format == "json":
            return parse_usage(_loads(raw, str(self.path)))
        return _parse_csv(raw, start, end)


def _parse_csv(raw: bytes, start: datetime, end: datetime) -> VendorUsage:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageSourceError("usage CSV is not UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = {name.strip().lower() for name in reader.fieldnames or ()}
    needed = {"provider", "model", "date"}
    if not needed <= fields or not fields & set(_CALL_KEYS) or not fields & set(_COST_KEYS):
        raise UsageSourceError("usage CSV needs columns provider, model, date, calls and cost")
    first_day = start.astimezone(UTC).date()
    last_day = (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    lines = []
    for number, row in enumerate(reader, start=2):
        entry = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        line = _line(entry, f"CSV row {number}")
        if first_day <= line.day <= last_day:
            lines.append(line)
    total_calls = sum(line.calls for line in lines)
    total_cost = sum((line.cost_usd for line in lines), Decimal(0))
    return VendorUsage(total_calls, total_cost, providers_of(lines), tuple(lines))
