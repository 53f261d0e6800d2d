"""Settings: the only module in the package that reads the environment.

`DatabaseConfig` takes the seed's keyword arguments (`host`, `port`, `database`, `user`, `password`,
`pool_size`, `max_overflow`), a full `DATABASE_URL`, or the `DB_*` variables, also from a `.env` file.

Precedence: keyword arguments, then the environment, then `.env`. Within one source, explicit fields
win over the parts of that source's URL. When code names the server (`host=` or `url=`), no
connection field (url, host, port, database, user, password) is taken from the environment, so an
exported production `DATABASE_URL` can never lend its credentials to another host. With neither a
host nor a URL anywhere, the database is "not configured" and the engine uses the embedded server.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from persistence.errors import ConfigurationError

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
RootMethod = Literal["auto", "unshare", "setpriv"]

_URL_SCHEMES = ("postgresql", "postgres")
_ALIASES = {"database": "DB_NAME", "url": "DATABASE_URL", "replicas": "DATABASE_REPLICA_URLS"}
_ALIAS_TO_NAME = {alias: name for name, alias in _ALIASES.items()}
_CONNECTION_FIELDS = frozenset({"url", "host", "port", "database", "user", "password", "replicas"})
_URL_QUERY_FIELDS = {
    "sslmode": "ssl_mode",
    "sslrootcert": "ssl_root_cert",
    "sslcert": "ssl_cert",
    "sslkey": "ssl_key",
    "host": "host",
    "port": "port",
    "application_name": "application_name",
    "connect_timeout": "connect_timeout",
}


class DatabaseConfig(BaseSettings):
    """Connection and pool settings for one PostgreSQL database.

    Environment: `DATABASE_URL`, `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER`, `DB_PASSWORD`, and
    `DB_<FIELD>` for every other field (`DB_POOL_SIZE`, `DB_STATEMENT_TIMEOUT_MS`, ...).
    """

    model_config = SettingsConfigDict(
        env_prefix="DB_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
        env_ignore_empty=True,
        # Inputs may hold a password: validation errors must not echo them.
        hide_input_in_errors=True,
    )

    url: SecretStr | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="postgresql://user:password@host:port/database?sslmode=...; its parts fill unset fields.",
    )
    host: str | None = Field(
        default=None, min_length=1, description="Host name, IP address, or a unix-socket directory."
    )
    port: int = Field(default=5432, ge=1, le=65535)
    database: str | None = Field(default=None, validation_alias="DB_NAME", min_length=1, max_length=63)
    user: str | None = Field(default=None, min_length=1, max_length=63)
    password: SecretStr | None = None

    pool_size: int = Field(default=20, ge=1, description="Connections kept open in the pool.")
    max_overflow: int = Field(default=10, ge=0, description="Extra connections allowed under load.")
    pool_timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for a pooled connection.")
    pool_recycle: int = Field(
        default=1800, ge=-1, description="Seconds after which a connection is replaced."
    )
    pool_pre_ping: bool = Field(
        default=True,
        description="Test a pooled connection before handing it out if it sat idle for pool_ping_idle_s; "
        "False never tests (a dead connection then fails its first statement with a TransientError).",
    )
    pool_ping_idle_s: float = Field(
        default=5.0,
        ge=0,
        description="Idle seconds after which a pooled connection is pinged at checkout (3 round trips "
        "over asyncpg); 0 pings at every checkout (SQLAlchemy's pool_pre_ping). A connection used more "
        "recently is handed out untested: if it died meanwhile, a read outside a transaction block is "
        "retried once on a fresh connection and a write raises TransientError.",
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds allowed to open a connection.")
    statement_timeout_ms: int | None = Field(
        default=None,
        ge=0,
        description="Server-side statement_timeout for every session; None keeps the server's.",
    )
    application_name: str = Field(default="persistence", max_length=63)
    ssl_mode: SSLMode | None = Field(default=None, description="libpq sslmode; None uses asyncpg's default.")
    ssl_root_cert: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ssl_root_cert", "DB_SSL_ROOT_CERT"),
        description="CA certificate(s) that sign the server's certificate (libpq sslrootcert; 'system' "
        "for the system store). Makes `require` verify the chain.",
    )
    ssl_cert: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ssl_cert", "DB_SSL_CERT"),
        description="Client certificate (libpq sslcert).",
    )
    ssl_key: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ssl_key", "DB_SSL_KEY"),
        description="Client certificate's private key (libpq sslkey).",
    )
    echo: bool = Field(default=False, description="Log every SQL statement (SQLAlchemy echo).")
    slow_query_ms: float | None = Field(
        default=None,
        ge=0,
        description="Log statements slower than this (normalised text and duration, never parameters); "
        "None logs none.",
    )
    replicas: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        validation_alias="DATABASE_REPLICA_URLS",
        description="Streaming replicas' URLs (comma-separated in the environment): outermost "
        "transaction(read_only=True) blocks run on a healthy one (see persistence.replicas). Each URL "
        "names its own server; pool, timeout and TLS settings not in it are this config's.",
    )
    replica_max_lag_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A replica whose replay is this many seconds behind what it received is skipped.",
    )
    replica_wait_ms: float = Field(
        default=30.0,
        ge=0,
        le=10_000,
        description="Read-your-writes: how long a read-only block waits for a replica to replay the "
        "caller's last commit before running on the primary instead.",
    )
    replica_retry_after_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A replica that failed (unreachable, shutting down, promoted) is skipped this long.",
    )
    replica_probe_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="A replica's role and lag are re-read by the first block routed to it after this long.",
    )
    replica_reads_outside_blocks: bool = Field(
        default=False,
        description="Also route repository reads made outside any transaction block to a replica.",
    )

    if TYPE_CHECKING:
        # Callers pass plain strings for secrets (as seed 003 does); pydantic wraps them in SecretStr.
        def __init__(
            self,
            *,
            url: SecretStr | str | None = None,
            host: str | None = None,
            port: int = 5432,
            database: str | None = None,
            user: str | None = None,
            password: SecretStr | str | None = None,
            pool_size: int = 20,
            max_overflow: int = 10,
            pool_timeout: float = 30.0,
            pool_recycle: int = 1800,
            pool_pre_ping: bool = True,
            pool_ping_idle_s: float = 5.0,
            connect_timeout: float = 10.0,
            statement_timeout_ms: int | None = None,
            application_name: str = "persistence",
            ssl_mode: SSLMode | None = None,
            ssl_root_cert: Path | str | None = None,
            ssl_cert: Path | str | None = None,
            ssl_key: Path | str | None = None,
            echo: bool = False,
            slow_query_ms: float | None = None,
            replicas: Sequence[SecretStr | str] = (),
            replica_max_lag_s: float = 5.0,
            replica_wait_ms: float = 30.0,
            replica_retry_after_s: float = 5.0,
            replica_probe_interval_s: float = 1.0,
            replica_reads_outside_blocks: bool = False,
        ) -> None: ...

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        given = {_ALIAS_TO_NAME.get(key, key) for key in getattr(init_settings, "init_kwargs", {})}
        code_names_server = bool(given & {"url", "host"})
        return (
            _ScopedSource(settings_cls, init_settings, hide_connection=False),
            _ScopedSource(settings_cls, env_settings, hide_connection=code_names_server),
            _ScopedSource(settings_cls, dotenv_settings, hide_connection=code_names_server),
            _ScopedSource(settings_cls, file_secret_settings, hide_connection=code_names_server),
        )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_url(cls, data: Any) -> Any:
        """URL parts fill unset fields also when the model is built with `model_validate`.

        The URL is wrapped in `SecretStr` first and a bad one is reported by `_check_url`, so no
        validation error (`str()`, `repr()`, `.errors()` input or ctx) can carry its password.
        """
        if not isinstance(data, dict):
            return data
        data = {key: _hidden(key, value) for key, value in data.items()}
        try:
            return _expand_url(data)
        except ValueError:
            return data

    @field_validator("url", mode="after")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _parse_url(value.get_secret_value())
        return value

    @field_validator("replicas", mode="before")
    @classmethod
    def _split_replicas(cls, value: Any) -> Any:
        """`DATABASE_REPLICA_URLS` is comma-separated; each URL is hidden (`SecretStr`) before any check."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return tuple(SecretStr(v) if isinstance(v, str) else v for v in value)
        return value

    @field_validator("replicas", mode="after")
    @classmethod
    def _check_replicas(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for position, url in enumerate(value, 1):
            parts = _parse_url(url.get_secret_value(), setting=f"replica URL #{position}")
            if parts.get("host") is None:
                raise ValueError(f"replica URL #{position} names no host")
        return value

    def replica_config(self, index: int) -> DatabaseConfig:
        """The settings of replica `index`: its URL's server, this config's pool, timeouts and TLS
        (a setting the replica URL carries itself, such as `sslmode`, wins)."""
        url = self.replicas[index]
        named = set(_parse_url(url.get_secret_value()))
        inherited = self.model_dump(
            exclude=set(
                _CONNECTION_FIELDS
                | named
                | {name for name in type(self).model_fields if name.startswith("replica")}
            )
        )
        return type(self).model_validate({**inherited, "url": url})

    @property
    def is_configured(self) -> bool:
        """True when a server was named (URL or host); False means "use the embedded server"."""
        return self.host is not None or self.url is not None

    def sqlalchemy_url(self, driver: str = "asyncpg") -> URL:
        """The URL SQLAlchemy connects with. `str()` of it masks the password."""
        if not self.is_configured:
            raise ValueError(
                "no database configured: set DATABASE_URL or DB_HOST, or use the embedded server"
            )
        password = self.password.get_secret_value() if self.password is not None else None
        query: dict[str, str] = {}
        host: str | None = self.host
        if host is not None and host.startswith("/"):
            # asyncpg takes a unix-socket directory as host; URL.create cannot carry a path as host.
            query["host"] = host
            host = None
        return URL.create(
            f"postgresql+{driver}",
            username=self.user,
            password=password,
            host=host,
            port=self.port,
            database=self.database,
            query=query,
        )

    def describe(self) -> str:
        """`user@host:port/database`, safe to log: never contains the password."""
        if self.host is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
        else:
            host = "<default host>" if self.url is not None else "<embedded>"
        return f"{self.user or '<default user>'}@{host}:{self.port}/{self.database or '<default>'}"

    @classmethod
    def from_environment(cls) -> DatabaseConfig:
        """`DatabaseConfig()`, with invalid settings reported as `ConfigurationError` (inputs hidden)."""
        try:
            return cls()
        except ValidationError as exc:
            raise configuration_error(exc) from None


class _Unreadable:
    """Stands in for a secret of the wrong type, so a validation error cannot echo it."""

    def __repr__(self) -> str:
        return "'**********'"


def _hidden(key: str, value: Any) -> Any:
    """A URL or password as `SecretStr` (any other type of password as an opaque placeholder)."""
    if key in ("url", "DATABASE_URL") and isinstance(value, str):
        return SecretStr(value)
    if key == "password" and value is not None and not isinstance(value, str | SecretStr):
        return _Unreadable()
    return value


def configuration_error(exc: ValidationError) -> ConfigurationError:
    """A readable error naming the offending settings; never their values (they may be secrets)."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors(include_input=False)
    )
    return ConfigurationError(f"invalid database settings: {problems}")


class _ScopedSource(PydanticBaseSettingsSource):
    """One settings source with its own DATABASE_URL expanded into fields, or its connection fields hidden."""

    def __init__(
        self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource, *, hide_connection: bool
    ) -> None:
        super().__init__(settings_cls)
        self._inner = inner
        self._hide_connection = hide_connection

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        data = {_ALIAS_TO_NAME.get(key, key): value for key, value in self._inner().items()}
        if self._hide_connection:
            return {key: value for key, value in data.items() if key not in _CONNECTION_FIELDS}
        try:
            return _expand_url(data)
        except ValueError:
            return data  # validation reports the bad URL as a ValidationError


def _expand_url(data: dict[str, Any]) -> dict[str, Any]:
    """Fill fields missing from `data` with the parts of `data["url"]` (explicit fields win)."""
    raw = data.get("url", data.get("DATABASE_URL"))
    if raw is None:
        return data
    text = raw.get_secret_value() if isinstance(raw, SecretStr) else str(raw)
    merged = dict(data)
    for name, value in _parse_url(text).items():
        alias = _ALIASES.get(name)
        if value is None or name in data or (alias is not None and alias in data):
            continue
        merged[name] = value
    return merged


def _parse_url(raw: str, *, setting: str = "DATABASE_URL") -> dict[str, Any]:
    try:
        url = make_url(raw)
        port = url.port
    except (ArgumentError, ValueError):
        raise ValueError(
            f"{setting} is not a valid URL (expected postgresql://user:pass@host:port/db)"
        ) from None
    backend = url.get_backend_name()
    if backend not in _URL_SCHEMES:
        raise ValueError(f"{setting} must be a PostgreSQL URL, got scheme {backend!r}")
    parts: dict[str, Any] = {
        # libpq accepts a percent-encoded socket directory as host: postgresql://u@%2Fvar%2Frun/db
        "host": unquote(url.host) if url.host else None,
        "port": port,
        "database": url.database,
        "user": url.username,
        "password": SecretStr(url.password) if url.password is not None else None,
    }
    for key, value in url.query.items():
        field = _URL_QUERY_FIELDS.get(key)
        if field is None:
            raise ValueError(
                f"{setting} parameter {key!r} is not supported; supported: {', '.join(sorted(_URL_QUERY_FIELDS))}"
            )
        text = value if isinstance(value, str) else value[-1]
        parts[field] = unquote(text)
    return parts


class EmbeddedConfig(BaseSettings):
    """Where the embedded (per-user, local) PostgreSQL server lives.

    Environment: `PG_BINDIR` (PostgreSQL binaries), `PERSISTENCE_DATA_DIR`, `PERSISTENCE_PORT`,
    `PERSISTENCE_ROOT_METHOD` (how the server leaves root; see `embedded.root_runner`).
    """

    model_config = SettingsConfigDict(
        env_prefix="PERSISTENCE_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,
        hide_input_in_errors=True,
    )

    pg_bindir: Path | None = Field(default=None, validation_alias="PG_BINDIR")
    data_dir: Path | None = Field(default=None, description="Default: $XDG_DATA_HOME/persistence/postgres.")
    port: int = Field(default=5432, ge=1, le=65535, description="Port number of the unix socket (no TCP).")
    database: str = Field(default="persistence", min_length=1, max_length=63)
    xdg_data_home: Path | None = Field(default=None, validation_alias="XDG_DATA_HOME")
    root_method: RootMethod = Field(
        default="auto",
        description="As root: `unshare` (user namespace), `setpriv` (run as nobody), `auto` (the first that works).",
    )

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir.expanduser().resolve()
        base = self.xdg_data_home or Path.home() / ".local" / "share"
        return (base / "persistence" / "postgres").resolve()


class ReconciliationConfig(BaseSettings):
    """The metering vendor to reconcile against, the gate, and the read-only role's password.

    Environment: `METERING_API_URL`, `METERING_API_KEY` (seed 000's `REVENIUM_METERING_API_KEY` and
    `REVENIUM_API_KEY` are accepted too), `METERING_SOURCE_NAME`, `METERING_TIMEOUT`, `METERING_RETRIES`,
    `RECONCILIATION_THRESHOLD_PCT`, `RECONCILIATION_READER_PASSWORD`. Secrets are `SecretStr`.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,
        hide_input_in_errors=True,
    )

    metering_api_url: str | None = Field(
        default=None, validation_alias="METERING_API_URL", description="Base URL; /v1/usage is appended."
    )
    metering_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("METERING_API_KEY", "REVENIUM_METERING_API_KEY", "REVENIUM_API_KEY"),
    )
    metering_source_name: str | None = Field(
        default=None,
        validation_alias="METERING_SOURCE_NAME",
        max_length=200,
        description="Name the reports are filed under (default: the API's host name).",
    )
    metering_timeout: float = Field(default=30.0, gt=0, validation_alias="METERING_TIMEOUT")
    metering_retries: int = Field(default=3, ge=0, le=10, validation_alias="METERING_RETRIES")
    threshold_pct: Decimal = Field(
        default=Decimal(2), ge=0, le=1000, validation_alias="RECONCILIATION_THRESHOLD_PCT"
    )
    reader_password: SecretStr | None = Field(default=None, validation_alias="RECONCILIATION_READER_PASSWORD")


ApiKeyEnvironment = Literal["live", "test"]


class ApiKeyConfig(BaseSettings):
    """The server-side secret API keys are hashed with, and the environment keys are issued for.

    Environment: `PERSISTENCE_API_KEY_PEPPER` (at least 32 characters; keep it out of the database
    and its backups: with it, a stolen `api_keys` table is still useless) and
    `PERSISTENCE_API_KEY_ENVIRONMENT` (`live` or `test`, the `sk_<environment>_` prefix of the keys).
    """

    model_config = SettingsConfigDict(
        env_prefix="PERSISTENCE_API_KEY_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,
        hide_input_in_errors=True,
    )

    pepper: SecretStr | None = Field(
        default=None, min_length=32, description="HMAC-SHA256 key for the keys' secrets; None: no keys."
    )
    environment: ApiKeyEnvironment = Field(default="live", description="Issued keys start sk_<environment>_.")


class EventsConfig(BaseSettings):
    """The event recorder (seed 004): on or off, its durable spool and its batching.

    Environment: `PERSISTENCE_EVENTS_ENABLED` (false: the recorder says so once and records nothing),
    `PERSISTENCE_EVENTS_SPOOL_DIR` (where events wait while PostgreSQL is unreachable; one process per
    directory), `PERSISTENCE_EVENTS_BATCH_SIZE`, `PERSISTENCE_EVENTS_FLUSH_INTERVAL` (seconds),
    `PERSISTENCE_EVENTS_MAX_BUFFERED`, `PERSISTENCE_EVENTS_OVERFLOW` (`block`, `spill`, `drop`; unset:
    `spill` with a spool directory, else `block`).
    """

    model_config = SettingsConfigDict(
        env_prefix="PERSISTENCE_EVENTS_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,
    )

    enabled: bool = True
    spool_dir: Path | None = None
    batch_size: int = Field(default=100, ge=1, le=100_000)
    flush_interval: float = Field(default=5.0, gt=0, le=3600)
    max_buffered: int = Field(default=10_000, ge=1)
    overflow: Literal["block", "spill", "drop"] | None = None
    retry_interval: float = Field(default=1.0, gt=0, le=3600)
    max_retry_interval: float = Field(default=5.0, gt=0, le=3600)
