"""DatabaseConfig: seed keywords, environment, .env, URLs, and a password that never leaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from persistence import ConfigurationError, DatabaseConfig

ROOT = Path(__file__).resolve().parents[1]

ENV_VARS = (
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "DB_PASSWORD",
    "DB_POOL_SIZE",
    "DB_SSL_MODE",
    "DB_SSL_ROOT_CERT",
    "DB_SSL_CERT",
    "DB_SSL_KEY",
    "DB_STATEMENT_TIMEOUT_MS",
    "DATABASE_REPLICA_URLS",
    "DB_REPLICA_WAIT_MS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_seed_keywords_and_defaults() -> None:
    config = DatabaseConfig(
        host="localhost",
        port=5432,
        database="brahminykite",
        user="brahminykite",
        password="your_password",
        pool_size=20,
        max_overflow=10,
    )
    assert (config.host, config.port, config.database, config.user) == (
        "localhost",
        5432,
        "brahminykite",
        "brahminykite",
    )
    assert isinstance(config.password, SecretStr)
    assert config.password.get_secret_value() == "your_password"
    defaults = DatabaseConfig(host="h")
    assert (defaults.pool_size, defaults.max_overflow, defaults.pool_pre_ping) == (20, 10, True)
    assert config.is_configured


def test_nothing_configured_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "should-not-be-read")
    monkeypatch.setenv("USER", "nor-this")
    config = DatabaseConfig()
    assert not config.is_configured
    assert config.host is None and config.user is None


def test_db_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "DB_HOST": "db.internal",
        "DB_PORT": "6543",
        "DB_NAME": "claims",
        "DB_USER": "svc",
        "DB_PASSWORD": "s3cret-pw",
        "DB_POOL_SIZE": "7",
        "DB_STATEMENT_TIMEOUT_MS": "1500",
    }.items():
        monkeypatch.setenv(key, value)
    config = DatabaseConfig()
    assert (config.host, config.port, config.database, config.user) == ("db.internal", 6543, "claims", "svc")
    assert config.password is not None and config.password.get_secret_value() == "s3cret-pw"
    assert (config.pool_size, config.statement_timeout_ms) == (7, 1500)


def test_keyword_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_NAME", "from-env")
    assert DatabaseConfig(host="h", database="from-kwarg").database == "from-kwarg"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DB_HOST=envfile-host\nDB_NAME=envfile-db\nDB_PASSWORD=pw-from-file\n")
    config = DatabaseConfig()
    assert (config.host, config.database) == ("envfile-host", "envfile-db")


def test_database_url_fills_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc:p%40ss-word@db.example:6000/ledger?sslmode=require")
    config = DatabaseConfig()
    assert (config.host, config.port, config.database, config.user, config.ssl_mode) == (
        "db.example",
        6000,
        "ledger",
        "svc",
        "require",
    )
    assert config.password is not None and config.password.get_secret_value() == "p@ss-word"
    assert config.sqlalchemy_url().drivername == "postgresql+asyncpg"


def test_explicit_fields_override_url_parts() -> None:
    config = DatabaseConfig(url="postgresql://a:b@h1:1111/d1", database="d2")
    assert (config.host, config.port, config.database) == ("h1", 1111, "d2")


def test_unix_socket_url() -> None:
    config = DatabaseConfig(url="postgresql://postgres@/app?host=/var/run/postgresql&port=5433")
    assert (config.host, config.port, config.database) == ("/var/run/postgresql", 5433, "app")
    url = config.sqlalchemy_url()
    assert url.query["host"] == "/var/run/postgresql" and url.host is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:p@h/db", "must be a PostgreSQL URL"),
        ("postgresql://u:p@h/db?options=-csearch_path%3Devil", "'options' is not supported"),
        ("not a url", "not a valid URL"),
    ],
)
def test_bad_urls_rejected(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DatabaseConfig(url=url)


@pytest.mark.parametrize(
    "field", [{"port": 0}, {"pool_size": 0}, {"max_overflow": -1}, {"ssl_mode": "sometimes"}]
)
def test_bad_values_rejected(field: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DatabaseConfig(host="h", **field)  # type: ignore[arg-type]


def test_password_never_shown() -> None:
    secret = "hunter2-very-secret"
    config = DatabaseConfig(host="h", user="u", database="d", password=secret)
    from_url = DatabaseConfig(url=f"postgresql://u:{secret}@h/d")
    for shown in (
        repr(config),
        str(config),
        config.describe(),
        str(config.sqlalchemy_url()),
        repr(from_url),
        str(from_url),
        from_url.describe(),
        config.model_dump_json(),
    ):
        assert secret not in shown


def test_code_that_names_a_server_takes_no_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://produser:prod-password@prod.example/proddb")
    monkeypatch.setenv("DB_PASSWORD", "also-prod")
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    config = DatabaseConfig(host="localhost", database="x", user="me")
    assert (config.host, config.database, config.user, config.password) == ("localhost", "x", "me", None)
    assert config.pool_size == 4  # non-connection settings still come from the environment


def test_url_in_code_beats_db_name_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_NAME", "envdb")
    assert DatabaseConfig(url="postgresql://u:p@h/db1").database == "db1"


def test_within_the_environment_explicit_fields_beat_url_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@h/urldb")
    monkeypatch.setenv("DB_NAME", "envdb")
    config = DatabaseConfig()
    assert (config.host, config.database) == ("h", "envdb")


def test_empty_host_variable_means_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "")
    assert not DatabaseConfig().is_configured


def test_percent_encoded_socket_directory_as_host() -> None:
    config = DatabaseConfig(url="postgresql://u@%2Fvar%2Frun%2Fpostgresql/db")
    assert config.host == "/var/run/postgresql"


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "mysql://u:pw-in-url-123@h/db"},
        {"DATABASE_URL": "postgresql://u:pw-in-url-123@h:54x/db"},
        {"DATABASE_URL": "mysql://h/db", "DB_PASSWORD": "pw-in-url-123"},
        {"DB_HOST": "h", "DB_PORT": "99999", "DB_PASSWORD": "pw-in-url-123"},
    ],
)
def test_invalid_settings_never_echo_the_password(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as info:
        DatabaseConfig()
    assert "pw-in-url-123" not in str(info.value)
    with pytest.raises(ConfigurationError) as wrapped:
        DatabaseConfig.from_environment()
    assert "pw-in-url-123" not in str(wrapped.value)
    assert "invalid database settings" in str(wrapped.value)


def test_cli_reports_bad_settings_without_traceback_or_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    env["DATABASE_URL"] = "postgresql://u:pw-in-url-123@h:54x/db"
    for args in (
        ["-m", "persistence", "migrate"],
        [str(ROOT / "scripts" / "seed_database.py")],
        ["-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
    ):
        out = subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode != 0
        assert "pw-in-url-123" not in out.stdout + out.stderr
        assert "invalid database settings" in out.stderr


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "postgresql://u:pw-in-url-123@h:54x/db"},
        {"url": "mysql://u:pw-in-url-123@h/db"},
        {"url": "postgresql://u:pw-in-url-123@h/db?options=-cfoo%3Dbar"},
        {"host": "h", "password": 12345678},  # a password of the wrong type is hidden too
    ],
)
def test_validation_errors_carry_no_password_anywhere(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as info:
        DatabaseConfig(**fields)  # type: ignore[arg-type]
    err = info.value
    for shown in (str(err), repr(err), repr(err.errors()), err.json()):
        assert "pw-in-url-123" not in shown and "12345678" not in shown, shown
    for detail in err.errors():
        assert "pw-in-url-123" not in repr(detail.get("input")) and "pw-in-url-123" not in repr(
            detail.get("ctx")
        )


def test_bad_url_in_the_environment_keeps_its_password_out_of_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw-in-url-123@h:54x/db")
    with pytest.raises(ValidationError) as info:
        DatabaseConfig()
    assert "pw-in-url-123" not in repr(info.value.errors())
    assert [e["loc"] for e in info.value.errors()] == [("url",)]  # names the setting that is wrong
    with pytest.raises(ConfigurationError, match=r"url: .*not a valid URL") as wrapped:
        DatabaseConfig.from_environment()
    assert "pw-in-url-123" not in str(wrapped.value) and "pw-in-url-123" not in repr(wrapped.value)


def test_tls_files_from_fields_url_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = DatabaseConfig(
        host="h", ssl_mode="verify-full", ssl_root_cert="/ca.crt", ssl_cert="/c.crt", ssl_key="/c.key"
    )
    assert (config.ssl_root_cert, config.ssl_cert, config.ssl_key) == (
        Path("/ca.crt"),
        Path("/c.crt"),
        Path("/c.key"),
    )
    from_url = DatabaseConfig(url="postgresql://u@h/db?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem")
    assert (from_url.ssl_mode, from_url.ssl_root_cert) == ("verify-ca", Path("/etc/ca.pem"))
    monkeypatch.setenv("DB_SSL_ROOT_CERT", "/env/ca.pem")
    monkeypatch.setenv("DB_SSL_MODE", "verify-full")
    assert DatabaseConfig(host="h").ssl_root_cert == Path("/env/ca.pem")


def test_replica_urls_from_the_environment_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:primary-pw@db1/app")
    monkeypatch.setenv(
        "DATABASE_REPLICA_URLS",
        "postgresql://app:replica-pw@db2:5433/app , postgresql://ro@db3/app?sslmode=require",
    )
    monkeypatch.setenv("DB_REPLICA_WAIT_MS", "20")
    config = DatabaseConfig(pool_size=3, ssl_mode="prefer")
    assert len(config.replicas) == 2 and config.replica_wait_ms == 20
    assert "replica-pw" not in repr(config) and "replica-pw" not in str(config.model_dump())
    first, second = config.replica_config(0), config.replica_config(1)
    assert (first.host, first.port, first.user, first.pool_size, first.ssl_mode) == (
        "db2",
        5433,
        "app",
        3,
        "prefer",
    )
    assert first.password is not None and first.password.get_secret_value() == "replica-pw"
    assert (second.host, second.user, second.password, second.ssl_mode) == ("db3", "ro", None, "require")
    assert first.replicas == () and second.replicas == ()


def test_code_naming_the_server_ignores_replicas_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://prod:prod-pw@prod-replica/prod")
    assert DatabaseConfig(host="localhost").replicas == ()
    assert len(DatabaseConfig(host="localhost", replicas=["postgresql://me@localhost:5433/x"]).replicas) == 1


@pytest.mark.parametrize(
    "replicas",
    ["mysql://u:replica-secret@h/d", "postgresql://u:replica-secret@/d", "not a url replica-secret"],
)
def test_bad_replica_urls_are_refused_without_their_password(replicas: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DatabaseConfig(host="h", replicas=replicas)
    assert "replica-secret" not in str(caught.value)
    assert "replicas" in str(caught.value)


def test_replica_limits_are_validated() -> None:
    with pytest.raises(ValidationError):
        DatabaseConfig(host="h", replica_max_lag_s=0)
    with pytest.raises(ValidationError):
        DatabaseConfig(host="h", replica_wait_ms=-1)
