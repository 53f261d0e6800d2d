"""The read-only `reconciliation_reader` role (seed 000 setup): SELECT on the ledger and the reports, nothing else.

The password comes from the caller (the CLI takes `RECONCILIATION_READER_PASSWORD`), never from the
repository. It is sent as a SCRAM-SHA-256 verifier computed here, so the plain text never reaches
the server or its statement log. Role and table names are identifiers quoted by the server
(`format('%I')`) from bound parameters; no value is spliced into SQL text by Python.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.errors import ConfigurationError, InvalidRequestError, raise_translated

READER_ROLE = "reconciliation_reader"
READER_TABLES = ("ai_calls", "reconciliation_reports")
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
MIN_PASSWORD_LENGTH = 12


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS
) -> str:
    """The `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey` string PostgreSQL stores (RFC 5802/7677).

    Only for ASCII passwords: PostgreSQL SASLprep-normalises others, which this does not reproduce.
    """
    if not password.isascii():
        raise ConfigurationError("the reader password must be ASCII (PostgreSQL normalises other text)")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


async def _run_formatted(conn: AsyncConnection, template: str, **params: str) -> None:
    """Build a utility statement server-side with format() from bound parameters, then run it."""
    statement = (await conn.execute(text(f"SELECT format({template})"), params)).scalar_one()
    await conn.exec_driver_sql(statement)


async def grant_reader(
    engine: AsyncEngine,
    password: SecretStr | str,
    *,
    role: str = READER_ROLE,
    tables: Sequence[str] = READER_TABLES,
) -> None:
    """Create or update `role`: LOGIN with `password`, SELECT on `tables`, no other privilege on them.

    Idempotent: re-running resets the password and the grants to exactly this. The role is also
    marked `default_transaction_read_only`, so even a later mistaken grant does not let it write
    without an explicit `SET`. Under row-level security it is made a member of `persistence_reader`
    (every tenant's rows, for SELECT). Needs a user that may create roles and grant on the tables.
    """
    if not _ROLE_NAME.match(role):
        raise InvalidRequestError(f"role name must match {_ROLE_NAME.pattern}, got {role!r}")
    secret = password.get_secret_value() if isinstance(password, SecretStr) else password
    if len(secret) < MIN_PASSWORD_LENGTH:
        raise ConfigurationError(f"the reader password must have at least {MIN_PASSWORD_LENGTH} characters")
    verifier = scram_sha256_verifier(secret)
    try:
        async with engine.begin() as conn:
            known = set(
                (
                    await conn.execute(
                        text(
                            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace"
                        )
                    )
                ).scalars()
            )
            missing = [t for t in tables if t not in known]
            if missing:
                raise InvalidRequestError(f"no such table(s) in the current schema: {', '.join(missing)}")
            # Serialise concurrent runs: CREATE ROLE has no IF NOT EXISTS.
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('persistence.grant_reader'))"))
            exists = (
                await conn.execute(
                    text("SELECT count(*) FROM pg_roles WHERE rolname = :role"), {"role": role}
                )
            ).scalar_one()
            verb = "ALTER" if exists else "CREATE"
            await _run_formatted(
                conn,
                f"'{verb} ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                "PASSWORD %L', CAST(:role AS text), CAST(:verifier AS text)",
                role=role,
                verifier=verifier,
            )
            await _run_formatted(
                conn, "'ALTER ROLE %I SET default_transaction_read_only = on', CAST(:role AS text)", role=role
            )
            await _run_formatted(
                conn,
                "'GRANT CONNECT ON DATABASE %I TO %I', current_database(), CAST(:role AS text)",
                role=role,
            )
            await _run_formatted(
                conn, "'GRANT USAGE ON SCHEMA %I TO %I', current_schema(), CAST(:role AS text)", role=role
            )
            for table in tables:
                await _run_formatted(
                    conn,
                    "'REVOKE ALL ON TABLE %I FROM %I', CAST(:t AS text), CAST(:role AS text)",
                    t=table,
                    role=role,
                )
                await _run_formatted(
                    conn,
                    "'GRANT SELECT ON TABLE %I TO %I', CAST(:t AS text), CAST(:role AS text)",
                    t=table,
                    role=role,
                )
            # Row-level security (revision 0026): reconciliation reads every tenant's calls.
            if await conn.scalar(text("SELECT to_regrole('persistence_reader') IS NOT NULL")):
                await _run_formatted(conn, "'GRANT persistence_reader TO %I', CAST(:role AS text)", role=role)
    except Exception as exc:
        raise_translated(exc)
