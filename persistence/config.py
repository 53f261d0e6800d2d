"""Settings: the only module in the package that reads the environment.

`DatabaseConfig` takes the seed's keyword arguments (`host`, `port`, `database`, `user`, `password`,
`pool_size`, `max_overflow`), a full `DATABASE_URL`, or the `DB_*` variables, also from a `.env` file.
Explicit fields win over the components of a URL. With neither a host nor a URL, the database is
"not configured" and the engine falls back to the embedded server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

_URL_SCHEMES = ("postgresql", "postgres")
_ALIASES = {"database": "DB_NAME", "url": "DATABASE_URL"}
_URL_QUERY_FIELDS = {
    "sslmode": "ssl_mode",
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
    )

    url: SecretStr | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="postgresql://user:password@host:port/database?sslmode=...; its parts fill unset fields.",
    )
    host: str | None = Field(default=None, description="Host name, IP address, or a unix-socket directory.")
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
    pool_pre_ping: bool = Field(default=True, description="Test each connection on checkout.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds allowed to open a connection.")
    statement_timeout_ms: int | None = Field(
        default=None,
        ge=0,
        description="Server-side statement_timeout for every session; None keeps the server's.",
    )
    application_name: str = Field(default="persistence", max_length=63)
    ssl_mode: SSLMode | None = Field(default=None, description="libpq sslmode; None uses asyncpg's default.")
    echo: bool = Field(default=False, description="Log every SQL statement (SQLAlchemy echo).")

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
            connect_timeout: float = 10.0,
            statement_timeout_ms: int | None = None,
            application_name: str = "persistence",
            ssl_mode: SSLMode | None = None,
            echo: bool = False,
        ) -> None: ...

    @model_validator(mode="before")
    @classmethod
    def _fill_from_url(cls, data: Any) -> Any:
        """Fill fields that were not given explicitly from the URL's parts (validated like any input)."""
        if not isinstance(data, dict):
            return data
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
        return f"{self.user or '<default user>'}@{self.host or '<embedded>'}:{self.port}/{self.database or '<default>'}"


def _parse_url(raw: str) -> dict[str, Any]:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError(
            "DATABASE_URL is not a valid URL (expected postgresql://user:pass@host:port/db)"
        ) from None
    backend = url.get_backend_name()
    if backend not in _URL_SCHEMES:
        raise ValueError(f"DATABASE_URL must be a PostgreSQL URL, got scheme {backend!r}")
    parts: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "database": url.database,
        "user": url.username,
        "password": SecretStr(url.password) if url.password is not None else None,
    }
    for key, value in url.query.items():
        field = _URL_QUERY_FIELDS.get(key)
        if field is None:
            raise ValueError(
                f"DATABASE_URL parameter {key!r} is not supported; supported: {', '.join(sorted(_URL_QUERY_FIELDS))}"
            )
        text = value if isinstance(value, str) else value[-1]
        parts[field] = unquote(text)
    return parts


class EmbeddedConfig(BaseSettings):
    """Where the embedded (per-user, local) PostgreSQL server lives.

    Environment: `PG_BINDIR` (PostgreSQL binaries), `PERSISTENCE_DATA_DIR`, `PERSISTENCE_PORT`.
    """

    model_config = SettingsConfigDict(
        env_prefix="PERSISTENCE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    pg_bindir: Path | None = Field(default=None, validation_alias="PG_BINDIR")
    data_dir: Path | None = Field(default=None, description="Default: $XDG_DATA_HOME/persistence/postgres.")
    port: int = Field(default=5432, ge=1, le=65535, description="Port number of the unix socket (no TCP).")
    database: str = Field(default="persistence", min_length=1, max_length=63)
    xdg_data_home: Path | None = Field(default=None, validation_alias="XDG_DATA_HOME")

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir.expanduser().resolve()
        base = self.xdg_data_home or Path.home() / ".local" / "share"
        return (base / "persistence" / "postgres").resolve()
