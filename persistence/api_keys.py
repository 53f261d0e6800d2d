"""API keys: issued once, stored as a keyed hash, checked in one indexed lookup.

Format (63 ASCII characters, no character outside `[0-9A-Za-z_]`):

    sk_<environment>_<key_id>_<secret><checksum>
    sk_live_3kTMd9fQa0ZxP1bR_q8Vn2LwYc7Hs4Jd0Ke6Mf5Ng3Pb1Rt9Sa2Uh<6 chars>

- `environment`: `live` or `test` (`ApiKeyConfig.environment`), so a test key is refused by a live
  service before any query, and a leaked key says which kind it is.
- `key_id`: 16 base62 characters (95 random bits), public; the row's lookup key.
- `secret`: 32 base62 characters (190 random bits).
- `checksum`: CRC32 of everything before it, as 6 base62 digits (zero-padded), like GitHub's
  tokens: a typo or a truncated key is refused without a query, and scanners can tell a key from
  noise offline.

Stored (`api_keys`): the key id, `HMAC-SHA256(pepper, "sk_<environment>_<key_id>_<secret>")` and a
display prefix (`sk_live_<key_id>_` plus the secret's first 4 characters). The raw key is never
sent to the database, never logged and never put in an exception; the one object that holds it is
the `IssuedApiKey` returned at creation (as `SecretStr`). The pepper (`PERSISTENCE_API_KEY_PEPPER`)
lives outside the database: without it a copy of the table cannot be used to check guesses.

`ApiKeys.authenticate` runs at most one statement (a unique-index lookup by key id, joined to the
company and user for their `active` flags) and compares hashes with `hmac.compare_digest`. Unknown
key and wrong secret give the same `InvalidApiKey`; expiry, revocation and deactivation are told
apart only once the secret has matched (the caller has proven it holds the key). Time is the
database server's (`statement_timestamp()`). `last_used_at` is not written per request: uses are
kept in memory (latest per key) and written by one `UPDATE ... FROM unnest(...)` every
`flush_interval` seconds or `flush_keys` keys, in a background task, and on `close()`; a failed
write keeps them for the next one. A crash loses at most that window of `last_used_at` updates.

Row-level security (revision 0026): the management calls (`create`, `rotate`, `revoke`, `get`,
`list_keys`) name their company and act as that tenant. `authenticate` cannot (the key's tenant is
what it looks up): where RLS binds the login it calls revision 0027's SECURITY DEFINER function
`api_key_candidates(key_id)` instead of its join (the same one statement; the owner keeps the join).
The last-use writer spans tenants: under RLS it writes one UPDATE per company, each under that
company's tenant, in its one transaction (no definer function that could touch any key).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, Final

from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import (
    ARRAY,
    DateTime,
    Interval,
    LargeBinary,
    Row,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    select,
    text,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.config import ApiKeyConfig, ApiKeyEnvironment
from persistence.errors import (
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    PersistenceError,
    raise_translated,
)
from persistence.models import ApiKey, Company, User
from persistence.observe.loggers import get_logger
from persistence.pinning import pin_of
from persistence.tenancy import TENANT_SETTING, check_tenant, row_security_binds
from persistence.transaction import connection_scope, in_transaction

__all__ = [
    "ApiKeyConfigurationError",
    "ApiKeyExpired",
    "ApiKeyInactive",
    "ApiKeyInfo",
    "ApiKeyPrincipal",
    "ApiKeyRevoked",
    "ApiKeyScopeError",
    "ApiKeys",
    "AuthenticationError",
    "AuthenticationFailure",
    "InvalidApiKey",
    "IssuedApiKey",
    "checksum_ok",
]

log = get_logger("persistence.api_keys")

PREFIX: Final = "sk"
KEY_ID_LENGTH: Final = 16
SECRET_LENGTH: Final = 32
CHECKSUM_LENGTH: Final = 6
DISPLAY_SECRET_CHARS: Final = 4
KEY_LENGTH: Final = len(PREFIX) + len("_live_") + KEY_ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_FORMAT = re.compile(
    rf"{PREFIX}_(live|test)_([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_[0-9A-Za-z]{{{SECRET_LENGTH + CHECKSUM_LENGTH}}}",
    re.ASCII,
)
_DUMMY_HASH: Final = bytes(32)
_MAX_SCOPE = 64


# -- errors ---------------------------------------------------------------------------------------------
class AuthenticationFailure(StrEnum):
    """Why a key was refused. `invalid` covers malformed, bad checksum, unknown id and wrong secret
    alike, so the answer never tells a guesser which part was wrong."""

    MISSING = "missing"
    INVALID = "invalid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    INACTIVE = "inactive"


_MESSAGES = {
    AuthenticationFailure.MISSING: "no API key was given",
    AuthenticationFailure.INVALID: "the API key is not valid",
    AuthenticationFailure.EXPIRED: "the API key has expired",
    AuthenticationFailure.REVOKED: "the API key has been revoked",
    AuthenticationFailure.INACTIVE: "the API key's company or user is deactivated",
}


class AuthenticationError(PersistenceError):
    """An API key was refused; `reason` says why. Messages are fixed texts: never the key."""

    default_reason = AuthenticationFailure.INVALID

    def __init__(self, reason: AuthenticationFailure | None = None) -> None:
        self.reason = reason if reason is not None else type(self).default_reason
        super().__init__(_MESSAGES[self.reason])


class InvalidApiKey(AuthenticationError):
    """No key, or not a key we issued: malformed, bad checksum, other environment, unknown, wrong secret."""


class ApiKeyExpired(AuthenticationError):
    """The key was ours, but its `expires_at` (or its rotation's overlap) has passed."""

    default_reason = AuthenticationFailure.EXPIRED


class ApiKeyRevoked(AuthenticationError):
    """The key was ours, but it has been revoked."""

    default_reason = AuthenticationFailure.REVOKED


class ApiKeyInactive(AuthenticationError):
    """The key was ours, but its company or user is deactivated (`active = false`)."""

    default_reason = AuthenticationFailure.INACTIVE


class ApiKeyScopeError(PersistenceError):
    """An authenticated key lacks scopes the operation needs (HTTP 403, not 401)."""

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = tuple(sorted(missing))
        super().__init__(f"the API key lacks the scope(s): {', '.join(self.missing)}")


class ApiKeyConfigurationError(ConfigurationError):
    """Keys cannot be issued or checked: no pepper (or a bad one) is configured."""


# -- results --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ApiKeyPrincipal:
    """Who an authenticated key speaks for."""

    company_id: str
    user_id: str | None
    key_id: str
    scopes: frozenset[str]
    expires_at: datetime | None

    def has_scopes(self, *scopes: str) -> bool:
        return self.scopes.issuperset(scopes)

    def require(self, *scopes: str) -> None:
        """`ApiKeyScopeError` unless the key has every one of `scopes`."""
        missing = set(scopes) - self.scopes
        if missing:
            raise ApiKeyScopeError(missing)


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A new key, the only time it exists in full: hand `key.get_secret_value()` to its owner once.

    `repr`/`str` show `key` as `SecretStr('**********')`."""

    key: SecretStr = field(repr=False)
    company_id: str
    key_id: str
    user_id: str | None
    name: str
    scopes: tuple[str, ...]
    display_prefix: str
    created_at: datetime
    expires_at: datetime | None
    rotated_from: str | None


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """A stored key as listed to its owner (no hash, no secret)."""

    company_id: str
    key_id: str
    user_id: str | None
    name: str
    environment: str
    display_prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rotated_from: str | None


# -- format ---------------------------------------------------------------------------------------------
def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def _random62(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def _parse(raw: object) -> tuple[str, str, str] | None:
    """(environment, key_id, body) of a well-formed key whose checksum matches; None otherwise."""
    if not isinstance(raw, str) or len(raw) != KEY_LENGTH:
        return None
    match = _KEY_FORMAT.fullmatch(raw)
    if match is None:
        return None
    body, check = raw[:-CHECKSUM_LENGTH], raw[-CHECKSUM_LENGTH:]
    if not hmac.compare_digest(_checksum(body), check):
        return None
    return match.group(1), match.group(2), body


def checksum_ok(raw: str) -> bool:
    """True when `raw` has our format and its checksum matches (offline: says nothing of validity)."""
    return _parse(raw) is not None


# -- statements -----------------------------------------------------------------------------------------
_KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
_COMPANIES: Table = Company.__table__  # type: ignore[assignment]
_USERS: Table = User.__table__  # type: ignore[assignment]
_NOW = func.statement_timestamp()

# The one statement of `authenticate`: the index on key_id (not unique: every unique key leads with
# the tenant, revision 0025; two companies' keys could share an id, their HMACs tell them apart),
# then the company's and user's primary keys. Flags are computed on the server's clock.
_LOOKUP = (
    select(
        _KEYS.c.company_id,
        _KEYS.c.user_id,
        _KEYS.c.key_id,
        _KEYS.c.secret_hash,
        _KEYS.c.scopes,
        _KEYS.c.expires_at,
        _KEYS.c.revoked_at.is_not(None).label("revoked"),
        func.coalesce(_KEYS.c.expires_at <= _NOW, False).label("expired"),
        and_(_COMPANIES.c.active, func.coalesce(_USERS.c.active, true())).label("active"),
        _NOW.label("now"),
    )
    .select_from(
        _KEYS.join(_COMPANIES, _COMPANIES.c.company_id == _KEYS.c.company_id).outerjoin(
            _USERS, and_(_USERS.c.company_id == _KEYS.c.company_id, _USERS.c.user_id == _KEYS.c.user_id)
        )
    )
    .where(_KEYS.c.key_id == bindparam("key_id"))
)

_ISSUED_COLUMNS = (
    _KEYS.c.company_id,
    _KEYS.c.key_id,
    _KEYS.c.user_id,
    _KEYS.c.name,
    _KEYS.c.scopes,
    _KEYS.c.display_prefix,
    _KEYS.c.created_at,
    _KEYS.c.expires_at,
    _KEYS.c.rotated_from,
)
_EXPIRY = func.coalesce(
    bindparam("expires_at", type_=DateTime(timezone=True)), _NOW + bindparam("expires_in", type_=Interval())
)
_INSERT = (
    insert(_KEYS)
    .values(
        company_id=bindparam("company_id"),
        key_id=bindparam("key_id"),
        user_id=bindparam("user_id"),
        name=bindparam("name"),
        environment=bindparam("environment"),
        secret_hash=bindparam("secret_hash"),
        display_prefix=bindparam("display_prefix"),
        scopes=bindparam("scopes"),
        expires_at=_EXPIRY,
    )
    .returning(*_ISSUED_COLUMNS)
)

# Rotation in one statement: the old key (if it still works) now expires at the end of the overlap,
# and the new key takes its company, user, name and scopes.
_ROTATE = text("""
WITH old AS (
    UPDATE api_keys
       SET expires_at = least(coalesce(expires_at, 'infinity'), statement_timestamp() + CAST(:overlap AS interval))
     WHERE company_id = :company_id AND key_id = :old_key_id AND environment = :environment
       AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > statement_timestamp())
 RETURNING company_id, user_id, name, scopes
)
INSERT INTO api_keys (company_id, key_id, user_id, name, environment, secret_hash, display_prefix,
                      scopes, expires_at, rotated_from)
SELECT company_id, :key_id, user_id, name, :environment, CAST(:secret_hash AS bytea), :display_prefix,
       scopes, coalesce(CAST(:expires_at AS timestamptz), statement_timestamp() + CAST(:expires_in AS interval)),
       :old_key_id
  FROM old
RETURNING company_id, key_id, user_id, name, scopes, display_prefix, created_at, expires_at, rotated_from
""").bindparams(
    bindparam("overlap", type_=Interval()),
    bindparam("expires_at", type_=DateTime(timezone=True)),
    bindparam("expires_in", type_=Interval()),
    bindparam("secret_hash", type_=LargeBinary()),
)

_REVOKE = (
    update(_KEYS)
    .where(_KEYS.c.company_id == bindparam("company"), _KEYS.c.key_id == bindparam("key"))
    .values(revoked_at=func.coalesce(_KEYS.c.revoked_at, _NOW))
    .returning(_KEYS.c.revoked_at)
)

# Batched last use: one UPDATE for every key used since the last flush (latest use wins).
_FLUSH = text("""
UPDATE api_keys AS k
   SET last_used_at = greatest(k.last_used_at, u.used_at)
  FROM unnest(CAST(:company_ids AS varchar[]), CAST(:key_ids AS varchar[]),
              CAST(:used_at AS timestamptz[])) AS u(company_id, key_id, used_at)
 WHERE k.company_id = u.company_id AND k.key_id = u.key_id
""").bindparams(
    bindparam("company_ids", type_=ARRAY(String())),
    bindparam("key_ids", type_=ARRAY(String())),
    bindparam("used_at", type_=ARRAY(DateTime(timezone=True))),
)

_INFO_COLUMNS = [c for c in _KEYS.c if c.name != "secret_hash"]

# Under row-level security (a service login) the key's tenant is unknown until it is found:
# revision 0027's SECURITY DEFINER function returns the key id's candidate rows, the same columns.
_CANDIDATES = text("SELECT * FROM api_key_candidates(:key_id)").bindparams(
    bindparam("key_id", type_=String())
)
_SET_TENANT = text("SELECT set_config(:setting, :tenant_id, true)")
_GET_TENANT = text("SELECT current_setting(:setting, true)")


# -- the service ----------------------------------------------------------------------------------------
class ApiKeys:
    """Issue, check, rotate and revoke API keys on `engine`.

    The pepper and environment come from the arguments, else from `config` or `ApiKeyConfig()` (the
    environment). Use it as `async with ApiKeys(engine) as keys:` or call `close()` at shutdown, so
    the last uses are written.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        pepper: SecretStr | str | None = None,
        environment: ApiKeyEnvironment | None = None,
        config: ApiKeyConfig | None = None,
        flush_interval: float = 30.0,
        flush_keys: int = 1000,
    ) -> None:
        if flush_interval <= 0 or flush_keys < 1:
            raise InvalidRequestError("ApiKeys: flush_interval must be > 0 and flush_keys >= 1")
        if config is None and (pepper is None or environment is None):
            try:
                config = ApiKeyConfig()
            except PydanticValidationError as exc:
                names = ", ".join(str(err["loc"][0]) for err in exc.errors(include_input=False) if err["loc"])
                raise ApiKeyConfigurationError(f"invalid API key settings: {names}") from None
        given = SecretStr(pepper) if isinstance(pepper, str) else pepper
        chosen = given if given is not None else (config.pepper if config is not None else None)
        if chosen is not None and len(chosen.get_secret_value()) < 32:
            raise ApiKeyConfigurationError("the API key pepper must be at least 32 characters")
        self.engine = engine
        self.environment: ApiKeyEnvironment = (
            environment if environment is not None else config.environment if config is not None else "live"
        )
        self.flush_interval = flush_interval
        self.flush_keys = flush_keys
        self._pepper = chosen
        self._pending: dict[tuple[str, str], datetime] = {}
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"ApiKeys(environment={self.environment!r}, pending_last_used={len(self._pending)})"

    async def __aenter__(self) -> ApiKeys:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- issuing ------------------------------------------------------------------------------------
    async def create(
        self,
        company_id: str,
        *,
        user_id: str | None = None,
        name: str = "",
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
    ) -> IssuedApiKey:
        """Issue a key for a company (`user_id` None: a company-wide key) and return it, once.

        `expires_at` (aware) or `expires_in` (from the server's clock), or neither: no expiry.
        An unknown company or user is an `IntegrityViolation`.
        """
        key_id, raw, values = self._new_key()
        params = {
            **values,
            "company_id": company_id,
            "user_id": user_id,
            "name": _name(name),
            "scopes": list(_scopes(scopes)),
            **_expiry(expires_at, expires_in),
        }
        async with _tenant_scope(self.engine, company_id) as conn:
            row = (await conn.execute(_INSERT, params)).one()
        log.info("api key issued", company_id=company_id, key_id=key_id, user_id=user_id)
        return _issued(raw, row)

    async def rotate(
        self,
        company_id: str,
        key_id: str,
        *,
        overlap: timedelta = timedelta(hours=24),
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
    ) -> IssuedApiKey:
        """Replace a working key: the new key (same company, user, name and scopes) works at once,
        the old one until `overlap` has passed (or its own expiry, if sooner). One statement.

        The new key's expiry is `expires_at`/`expires_in` (neither: none). A key that is unknown,
        revoked or expired is a `NotFoundError`.
        """
        if overlap < timedelta(0):
            raise InvalidRequestError("rotate: overlap must not be negative")
        new_id, raw, values = self._new_key()
        params = {
            **values,
            "company_id": company_id,
            "old_key_id": key_id,
            "overlap": overlap,
            **_expiry(expires_at, expires_in),
        }
        async with _tenant_scope(self.engine, company_id) as conn:
            row = (await conn.execute(_ROTATE, params)).one_or_none()
        if row is None:
            raise NotFoundError("working ApiKey", f"{company_id}/{key_id}")
        log.info("api key rotated", company_id=company_id, key_id=new_id, rotated_from=key_id)
        return _issued(raw, row)

    async def revoke(self, company_id: str, key_id: str) -> datetime:
        """Revoke a key now (idempotent: a second call returns the first revocation's time)."""
        async with _tenant_scope(self.engine, company_id) as conn:
            revoked_at = (await conn.execute(_REVOKE, {"company": company_id, "key": key_id})).scalar()
        if revoked_at is None:
            raise NotFoundError("ApiKey", f"{company_id}/{key_id}")
        log.info("api key revoked", company_id=company_id, key_id=key_id)
        return revoked_at  # type: ignore[no-any-return]

    # -- reading ------------------------------------------------------------------------------------
    async def get(self, company_id: str, key_id: str) -> ApiKeyInfo:
        stmt = select(*_INFO_COLUMNS).where(_KEYS.c.company_id == company_id, _KEYS.c.key_id == key_id)
        async with _tenant_scope(self.engine, company_id) as conn:
            row = (await conn.execute(stmt)).one_or_none()
        if row is None:
            raise NotFoundError("ApiKey", f"{company_id}/{key_id}")
        return _info(row)

    async def list_keys(self, company_id: str, *, user_id: str | None = None) -> list[ApiKeyInfo]:
        """A company's keys (or one user's), newest first; revoked and expired ones included."""
        stmt = select(*_INFO_COLUMNS).where(_KEYS.c.company_id == company_id)
        if user_id is not None:
            stmt = stmt.where(_KEYS.c.user_id == user_id)
        stmt = stmt.order_by(_KEYS.c.created_at.desc(), _KEYS.c.key_id)
        async with _tenant_scope(self.engine, company_id) as conn:
            return [_info(row) for row in await conn.execute(stmt)]

    # -- checking -----------------------------------------------------------------------------------
    async def authenticate(self, raw_key: str, *, scopes: Iterable[str] = ()) -> ApiKeyPrincipal:
        """The principal of a valid key, or an `AuthenticationError` (`ApiKeyScopeError` if it lacks
        one of `scopes`). A key that is malformed, fails its checksum or belongs to another
        environment is refused before any statement; any other runs exactly one."""
        parsed = _parse(raw_key)
        if parsed is None or parsed[0] != self.environment:
            raise InvalidApiKey()
        _, key_id, body = parsed
        digest = self._digest(body)
        async with _read_scope(self.engine) as conn:
            lookup = _CANDIDATES if await _binds(conn) else _LOOKUP
            rows = (await conn.execute(lookup, {"key_id": key_id})).all()
        row = None
        for candidate in rows or (None,):  # one row, all but never (95 random bits): the key's own
            stored = candidate.secret_hash if candidate is not None else _DUMMY_HASH
            if hmac.compare_digest(stored, digest) and candidate is not None:
                row = candidate
        if row is None:
            log.debug("api key refused", reason="invalid", key_id=key_id)  # debug: guesses are cheap to send
            raise InvalidApiKey()
        failure = (
            ApiKeyRevoked() if row.revoked
            else ApiKeyExpired() if row.expired
            else ApiKeyInactive() if not row.active
            else None
        )  # fmt: skip
        if failure is not None:
            log.info("api key refused", reason=failure.reason.value, key_id=key_id, company_id=row.company_id)
            raise failure
        principal = ApiKeyPrincipal(
            row.company_id, row.user_id, row.key_id, frozenset(row.scopes), row.expires_at
        )
        self._note_use(row.company_id, row.key_id, row.now)
        principal.require(*scopes)
        return principal

    # -- last use -----------------------------------------------------------------------------------
    def _note_use(self, company_id: str, key_id: str, at: datetime) -> None:
        key = (company_id, key_id)
        previous = self._pending.get(key)
        if previous is None or at > previous:
            self._pending[key] = at
        if len(self._pending) >= self.flush_keys:
            self._spawn_flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self._spawn_flush)

    def _spawn_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = asyncio.get_running_loop().create_task(self._flush_in_background())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_in_background(self) -> None:
        try:
            await self.flush()
        except PersistenceError as exc:
            log.warning("api key last use not written; kept for the next flush", error=type(exc).__name__)

    async def flush(self) -> int:
        """Write the buffered last uses now (one statement); returns how many keys it covered.
        On failure they stay buffered (newer uses win) and the error is raised."""
        async with self._flush_lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            keys = sorted(batch)  # a stable row order, so concurrent flushers lock rows in one order
            params = {
                "company_ids": [company for company, _ in keys],
                "key_ids": [key for _, key in keys],
                "used_at": [batch[key] for key in keys],
            }
            try:
                async with connection_scope(self.engine) as conn:
                    if await _binds(conn):
                        await _flush_per_company(conn, keys, batch)
                    else:
                        await conn.execute(_FLUSH, params)
            except BaseException:
                for key, at in batch.items():
                    newer = self._pending.get(key)
                    if newer is None or at > newer:
                        self._pending[key] = at
                raise
            return len(batch)

    async def close(self) -> None:
        """Stop the timer, wait for running flushes, and write what is left."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()

    # -- internals ----------------------------------------------------------------------------------
    def _digest(self, body: str) -> bytes:
        if self._pepper is None:
            raise ApiKeyConfigurationError(
                "API keys need a pepper: set PERSISTENCE_API_KEY_PEPPER (32+ characters) or pass pepper="
            )
        return hmac.new(
            self._pepper.get_secret_value().encode(), body.encode("ascii"), hashlib.sha256
        ).digest()

    def _new_key(self) -> tuple[str, SecretStr, dict[str, Any]]:
        key_id, secret = _random62(KEY_ID_LENGTH), _random62(SECRET_LENGTH)
        head = f"{PREFIX}_{self.environment}_{key_id}_"
        body = head + secret
        values = {
            "key_id": key_id,
            "environment": self.environment,
            "secret_hash": self._digest(body),
            "display_prefix": head + secret[:DISPLAY_SECRET_CHARS],
        }
        return key_id, SecretStr(body + _checksum(body)), values


@contextlib.asynccontextmanager
async def _read_scope(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """The lookup's connection: the block's (or the test pin's) when there is one; otherwise a
    pooled connection in autocommit, so the one statement is one round trip (no BEGIN/COMMIT)."""
    if in_transaction() or pin_of(engine) is not None:
        async with connection_scope(engine) as conn:
            yield conn
        return
    try:
        async with engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")
    except Exception as exc:
        raise_translated(exc)


async def _binds(conn: AsyncConnection) -> bool:
    """Whether row-level security binds `conn`'s login (`tenancy.row_security_binds`, cached per
    connection: no round trip for the owner after a connection's first call)."""
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    return await row_security_binds(raw)


@contextlib.asynccontextmanager
async def _tenant_scope(engine: AsyncEngine, company_id: str) -> AsyncIterator[AsyncConnection]:
    """`connection_scope` acting for `company_id`, for the key management calls (each names its
    company): where row-level security binds the login, the transaction first sets the tenant.
    Refused before any statement inside another company's `tenant()` context."""
    check_tenant(company_id)
    async with connection_scope(engine) as conn:
        if await _binds(conn):
            await conn.execute(_SET_TENANT, {"setting": TENANT_SETTING, "tenant_id": company_id})
        yield conn


async def _flush_per_company(
    conn: AsyncConnection, keys: list[tuple[str, str]], batch: dict[tuple[str, str], datetime]
) -> None:
    """The batched last-use write under row-level security: one UPDATE per company, each acting
    as that company, in the one transaction; the transaction's own tenant is put back after."""
    before = (await conn.execute(_GET_TENANT, {"setting": TENANT_SETTING})).scalar()
    companies = sorted({company for company, _ in keys})
    for company in companies:
        mine = [key for key in keys if key[0] == company]
        await conn.execute(_SET_TENANT, {"setting": TENANT_SETTING, "tenant_id": company})
        await conn.execute(
            _FLUSH,
            {
                "company_ids": [company] * len(mine),
                "key_ids": [key for _, key in mine],
                "used_at": [batch[key] for key in mine],
            },
        )
    await conn.execute(_SET_TENANT, {"setting": TENANT_SETTING, "tenant_id": before or ""})


def _name(name: str) -> str:
    if not isinstance(name, str) or len(name) > 100:
        raise InvalidRequestError("name must be a string of at most 100 characters")
    return name


def _scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(scopes, str):
        raise InvalidRequestError("scopes must be a collection of strings, not one string")
    chosen = tuple(sorted(set(scopes)))
    if any(not isinstance(s, str) or not s or len(s) > _MAX_SCOPE or s.isspace() for s in chosen):
        raise InvalidRequestError(f"scopes must be non-empty strings of at most {_MAX_SCOPE} characters")
    return chosen


def _expiry(expires_at: datetime | None, expires_in: timedelta | None) -> dict[str, object]:
    if expires_at is not None and expires_in is not None:
        raise InvalidRequestError("give expires_at or expires_in, not both")
    if expires_at is not None and (expires_at.tzinfo is None or expires_at.utcoffset() is None):
        raise InvalidRequestError("expires_at must be a timezone-aware datetime")
    return {"expires_at": expires_at, "expires_in": expires_in}


def _issued(raw: SecretStr, row: Row[Any]) -> IssuedApiKey:
    return IssuedApiKey(
        key=raw,
        company_id=row.company_id,
        key_id=row.key_id,
        user_id=row.user_id,
        name=row.name,
        scopes=tuple(row.scopes),
        display_prefix=row.display_prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        rotated_from=row.rotated_from,
    )


def _info(row: Row[Any]) -> ApiKeyInfo:
    return ApiKeyInfo(
        company_id=row.company_id,
        key_id=row.key_id,
        user_id=row.user_id,
        name=row.name,
        environment=row.environment,
        display_prefix=row.display_prefix,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        rotated_from=row.rotated_from,
    )
