"""persistence.api_keys: keys issued once, stored as an HMAC, checked in one lookup, never leaked."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.api_keys import (
    KEY_LENGTH,
    ApiKeyConfigurationError,
    ApiKeyExpired,
    ApiKeyInactive,
    ApiKeyRevoked,
    ApiKeys,
    ApiKeyScopeError,
    AuthenticationError,
    AuthenticationFailure,
    InvalidApiKey,
    IssuedApiKey,
    checksum_ok,
)
from persistence.config import ApiKeyConfig, DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityViolation,
    NotFoundError,
    PersistenceError,
)
from persistence.subjects import create_company, create_user
from persistence.transaction import set_rollback, transaction
from tests.logs import capture_logs

README = Path(__file__).resolve().parents[1] / "README.md"
PEPPER = "test-pepper-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_SHAPE = re.compile(r"sk_live_[0-9A-Za-z]{16}_[0-9A-Za-z]{38}")


@contextlib.contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every statement sent on `engine` inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def queries(sent: list[str]) -> list[str]:
    """`sent` without the savepoints the test fixture's pinned connection wraps each call in."""
    return [
        s for s in sent if not s.startswith(("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT "))
    ]


@pytest.fixture
async def keys(engine: AsyncEngine) -> AsyncIterator[ApiKeys]:
    await create_company(engine, "acme", "Acme Corp", tier="standard")
    await create_user(engine, "acme", "alice", email="alice@acme.test", name="Alice")
    async with ApiKeys(engine, pepper=PEPPER, environment="live", flush_interval=3600) as service:
        yield service


def secret_of(issued: IssuedApiKey) -> str:
    """The secret part of a raw key (between the key id and the checksum)."""
    return issued.key.get_secret_value()[len(f"sk_live_{issued.key_id}_") : -6]


def tamper(raw: str, position: int) -> str:
    swapped = "A" if raw[position] != "A" else "B"
    return raw[:position] + swapped + raw[position + 1 :]


def with_checksum(body: str) -> str:
    from persistence.api_keys import _checksum

    return body + _checksum(body)


async def test_a_key_has_the_documented_format_and_is_shown_only_in_its_secret(keys: ApiKeys) -> None:
    issued = await keys.create("acme", user_id="alice", name="ci", scopes=["write", "read", "read"])
    raw = issued.key.get_secret_value()
    assert len(raw) == KEY_LENGTH == 63
    assert KEY_SHAPE.fullmatch(raw)
    assert raw.startswith(f"sk_live_{issued.key_id}_")
    assert raw.startswith(issued.display_prefix)
    assert len(issued.display_prefix) == len(f"sk_live_{issued.key_id}_") + 4
    assert checksum_ok(raw)
    assert issued.scopes == ("read", "write")
    assert (issued.company_id, issued.user_id, issued.name) == ("acme", "alice", "ci")
    for shown in (repr(issued), str(issued), repr(issued.key), str(issued.key)):
        assert raw not in shown and secret_of(issued) not in shown
    other = await keys.create("acme")
    assert other.key_id != issued.key_id and secret_of(other) != secret_of(issued)


async def test_only_the_hmac_of_the_key_is_stored(keys: ApiKeys, engine: AsyncEngine) -> None:
    issued = await keys.create("acme", user_id="alice")
    body = issued.key.get_secret_value()[:-6]
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT secret_hash, display_prefix FROM api_keys WHERE key_id = :k"),
                {"k": issued.key_id},
            )
        ).one()
    assert row.secret_hash == hmac.new(PEPPER.encode(), body.encode(), hashlib.sha256).digest()
    assert row.display_prefix == issued.display_prefix


async def test_authenticate_returns_the_principal_in_one_statement(
    keys: ApiKeys, engine: AsyncEngine
) -> None:
    issued = await keys.create("acme", user_id="alice", scopes=["read"])
    with statements(engine) as sent:
        principal = await keys.authenticate(issued.key.get_secret_value())
    assert len(queries(sent)) == 1
    assert "api_keys.key_id = " in queries(sent)[0]
    assert (principal.company_id, principal.user_id, principal.key_id) == ("acme", "alice", issued.key_id)
    assert principal.scopes == frozenset({"read"})
    assert principal.has_scopes("read") and not principal.has_scopes("read", "write")
    company_key = await keys.create("acme")
    assert (await keys.authenticate(company_key.key.get_secret_value())).user_id is None


async def test_keys_of_two_companies_sharing_a_key_id_each_authenticate_as_their_own(
    keys: ApiKeys, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only (company_id, key_id) is unique (revision 0025: every unique key leads with the tenant);
    the lookup by key id stays one statement and the HMAC picks the key's own row."""
    import persistence.api_keys as module

    await create_company(engine, "globex", "Globex")
    first = await keys.create("acme", user_id="alice")
    draw = module._random62
    monkeypatch.setattr(module, "_random62", lambda n: first.key_id if n == len(first.key_id) else draw(n))
    second = await keys.create("globex")
    assert second.key_id == first.key_id and secret_of(second) != secret_of(first)
    with statements(engine) as sent:
        assert (await keys.authenticate(first.key.get_secret_value())).company_id == "acme"
        assert (await keys.authenticate(second.key.get_secret_value())).company_id == "globex"
    assert len(queries(sent)) == 2
    with pytest.raises(InvalidApiKey):
        await keys.authenticate(with_checksum(first.key.get_secret_value()[:-6][:-32] + "w" * 32))
    with pytest.raises(ConflictError):  # within one company the id stays unique
        await keys.create("acme")


async def test_a_bad_checksum_is_refused_without_any_statement(keys: ApiKeys, engine: AsyncEngine) -> None:
    issued = await keys.create("acme", user_id="alice")
    raw = issued.key.get_secret_value()
    bad_checksum = tamper(raw, len(raw) - 1)
    bad_secret_char = tamper(raw, 30)  # the checksum no longer matches the body
    malformed = ["", "sk_live_", raw + "x", raw[:-1], raw.replace("_", "-"), "Bearer " + raw]
    other_environment = with_checksum(raw[:-6].replace("sk_live_", "sk_test_"))
    with statements(engine) as sent:
        for candidate in [bad_checksum, bad_secret_char, other_environment, *malformed]:
            with pytest.raises(InvalidApiKey) as caught:
                await keys.authenticate(candidate)
            assert caught.value.reason is AuthenticationFailure.INVALID
    assert sent == []
    # The counter does see the statement a well-formed key costs (so the zero above is a real zero).
    unknown = with_checksum(f"sk_live_{'Z' * 16}_{'q' * 32}")
    with statements(engine) as sent, pytest.raises(InvalidApiKey):
        await keys.authenticate(unknown)
    assert len(queries(sent)) == 1


async def test_an_unknown_key_and_a_wrong_secret_get_the_same_answer(keys: ApiKeys) -> None:
    issued = await keys.create("acme", user_id="alice")
    raw = issued.key.get_secret_value()
    wrong_secret = with_checksum(raw[:-6][:-32] + "w" * 32)
    unknown_id = with_checksum(f"sk_live_{'Y' * 16}_{secret_of(issued)}")
    answers = []
    for candidate in (wrong_secret, unknown_id):
        with pytest.raises(AuthenticationError) as caught:
            await keys.authenticate(candidate)
        answers.append((type(caught.value), caught.value.reason, str(caught.value)))
    assert (
        answers[0] == answers[1] == (InvalidApiKey, AuthenticationFailure.INVALID, "the API key is not valid")
    )


async def test_expired_keys_are_refused_after_their_secret_matched(keys: ApiKeys) -> None:
    past = await keys.create("acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    future = await keys.create("acme", expires_in=timedelta(hours=1))
    with pytest.raises(ApiKeyExpired) as caught:
        await keys.authenticate(past.key.get_secret_value())
    assert caught.value.reason is AuthenticationFailure.EXPIRED
    principal = await keys.authenticate(future.key.get_secret_value())
    assert future.expires_at is not None and principal.expires_at == future.expires_at
    assert future.expires_at > future.created_at
    with pytest.raises(PersistenceError):
        await keys.create("acme", expires_at=datetime.now(UTC), expires_in=timedelta(hours=1))


async def test_revoked_keys_are_refused_and_revoking_is_idempotent(keys: ApiKeys) -> None:
    issued = await keys.create("acme", user_id="alice")
    raw = issued.key.get_secret_value()
    await keys.authenticate(raw)
    first = await keys.revoke("acme", issued.key_id)
    assert await keys.revoke("acme", issued.key_id) == first
    with pytest.raises(ApiKeyRevoked) as caught:
        await keys.authenticate(raw)
    assert caught.value.reason is AuthenticationFailure.REVOKED
    with pytest.raises(NotFoundError):
        await keys.revoke("acme", "no-such-key")
    with pytest.raises(NotFoundError):
        await keys.revoke("other-company", issued.key_id)  # a tenant cannot revoke another's key
    info = await keys.get("acme", issued.key_id)
    assert info.revoked_at == first


async def test_a_deactivated_company_or_user_disables_its_keys(keys: ApiKeys, engine: AsyncEngine) -> None:
    user_key = await keys.create("acme", user_id="alice")
    company_key = await keys.create("acme")
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE users SET active = false WHERE user_id = 'alice'"))
    with pytest.raises(ApiKeyInactive):
        await keys.authenticate(user_key.key.get_secret_value())
    await keys.authenticate(company_key.key.get_secret_value())
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE companies SET active = false WHERE company_id = 'acme'"))
    with pytest.raises(ApiKeyInactive):
        await keys.authenticate(company_key.key.get_secret_value())


async def test_rotation_keeps_the_old_key_working_until_the_overlap_ends(keys: ApiKeys) -> None:
    old = await keys.create("acme", user_id="alice", name="deploy", scopes=["read", "write"])
    new = await keys.rotate("acme", old.key_id, overlap=timedelta(hours=1))
    assert (new.user_id, new.name, new.scopes, new.rotated_from) == (
        "alice",
        "deploy",
        ("read", "write"),
        old.key_id,
    )
    assert new.key_id != old.key_id
    assert (await keys.authenticate(new.key.get_secret_value())).key_id == new.key_id
    still = await keys.authenticate(old.key.get_secret_value())  # inside the overlap
    assert still.expires_at is not None and still.expires_at > datetime.now(UTC) + timedelta(minutes=50)
    # A rotation without overlap ends the old key at once; the new one works immediately.
    newest = await keys.rotate("acme", new.key_id, overlap=timedelta(0))
    with pytest.raises(ApiKeyExpired):
        await keys.authenticate(new.key.get_secret_value())
    await keys.authenticate(newest.key.get_secret_value())
    # Only a working key can be rotated.
    await keys.revoke("acme", newest.key_id)
    with pytest.raises(NotFoundError):
        await keys.rotate("acme", newest.key_id)
    with pytest.raises(NotFoundError):
        await keys.rotate("acme", new.key_id)  # expired


async def test_scopes_are_checked(keys: ApiKeys) -> None:
    issued = await keys.create("acme", scopes=["read"])
    raw = issued.key.get_secret_value()
    assert (await keys.authenticate(raw, scopes=["read"])).scopes == {"read"}
    with pytest.raises(ApiKeyScopeError) as caught:
        await keys.authenticate(raw, scopes=["read", "admin"])
    assert caught.value.missing == ("admin",)
    assert not isinstance(caught.value, AuthenticationError)  # authenticated, not authorised: a 403
    with pytest.raises(PersistenceError):
        await keys.create("acme", scopes="read")


async def test_keys_of_unknown_companies_or_users_are_refused(keys: ApiKeys) -> None:
    with pytest.raises(IntegrityViolation):
        await keys.create("nobody")
    with pytest.raises(IntegrityViolation):
        await keys.create("acme", user_id="mallory")


async def test_without_a_pepper_keys_are_neither_issued_nor_checked(engine: AsyncEngine) -> None:
    await create_company(engine, "acme", "Acme Corp")
    issuer = ApiKeys(engine, pepper=PEPPER, environment="live")
    issued = await issuer.create("acme")
    unpeppered = ApiKeys(engine, config=ApiKeyConfig(pepper=None, environment="live"))
    with pytest.raises(ApiKeyConfigurationError) as caught:
        await unpeppered.create("acme")
    assert isinstance(caught.value, ConfigurationError)
    assert "PERSISTENCE_API_KEY_PEPPER" in str(caught.value)
    with pytest.raises(ApiKeyConfigurationError):
        await unpeppered.authenticate(issued.key.get_secret_value())
    with pytest.raises(ApiKeyConfigurationError):
        ApiKeys(engine, pepper="too-short", environment="live")
    # Another pepper: every key issued under the first is invalid.
    repeppered = ApiKeys(engine, pepper=PEPPER[::-1], environment="live")
    with pytest.raises(InvalidApiKey):
        await repeppered.authenticate(issued.key.get_secret_value())


async def test_the_pepper_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, engine: AsyncEngine
) -> None:
    monkeypatch.setenv("PERSISTENCE_API_KEY_PEPPER", PEPPER)
    monkeypatch.setenv("PERSISTENCE_API_KEY_ENVIRONMENT", "test")
    await create_company(engine, "acme", "Acme Corp")
    from_env = ApiKeys(engine)
    issued = await from_env.create("acme")
    assert issued.key.get_secret_value().startswith("sk_test_")
    await ApiKeys(engine, pepper=PEPPER, environment="test").authenticate(issued.key.get_secret_value())
    with pytest.raises(InvalidApiKey):  # a test key is not a live key
        await ApiKeys(engine, pepper=PEPPER, environment="live").authenticate(issued.key.get_secret_value())
    monkeypatch.setenv("PERSISTENCE_API_KEY_PEPPER", "short")
    with pytest.raises(ApiKeyConfigurationError) as caught:
        ApiKeys(engine)
    assert "short" not in str(caught.value)


async def test_last_use_is_written_in_batches_not_per_request(keys: ApiKeys, engine: AsyncEngine) -> None:
    first = await keys.create("acme", user_id="alice")
    second = await keys.create("acme")
    with statements(engine) as sent:
        for _ in range(3):
            await keys.authenticate(first.key.get_secret_value())
        await keys.authenticate(second.key.get_secret_value())
    assert len(queries(sent)) == 4 and not any(s.lstrip().upper().startswith("UPDATE") for s in sent)
    assert (await keys.get("acme", first.key_id)).last_used_at is None
    with statements(engine) as sent:
        assert await keys.flush() == 2
    assert len(queries(sent)) == 1 and "unnest" in queries(sent)[0]
    used = {k.key_id: k.last_used_at for k in await keys.list_keys("acme")}
    assert used[first.key_id] is not None and used[second.key_id] is not None
    assert await keys.flush() == 0


async def test_a_full_buffer_is_flushed_in_the_background_and_close_flushes_the_rest(
    engine: AsyncEngine,
) -> None:
    await create_company(engine, "acme", "Acme Corp")
    keys = ApiKeys(engine, pepper=PEPPER, environment="live", flush_interval=3600, flush_keys=2)
    issued = [await keys.create("acme") for _ in range(3)]
    await keys.authenticate(issued[0].key.get_secret_value())
    await keys.authenticate(issued[1].key.get_secret_value())  # the buffer is full: a flush starts
    for _ in range(500):
        used = {k.key_id for k in await keys.list_keys("acme") if k.last_used_at is not None}
        if used == {issued[0].key_id, issued[1].key_id}:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the full buffer was not flushed in the background")
    await keys.authenticate(issued[2].key.get_secret_value())
    assert (await keys.get("acme", issued[2].key_id)).last_used_at is None
    await keys.close()
    assert (await keys.get("acme", issued[2].key_id)).last_used_at is not None


async def test_last_uses_are_flushed_by_the_timer(engine: AsyncEngine) -> None:
    await create_company(engine, "acme", "Acme Corp")
    keys = ApiKeys(engine, pepper=PEPPER, environment="live", flush_interval=0.05, flush_keys=1000)
    issued = await keys.create("acme")
    await keys.authenticate(issued.key.get_secret_value())
    for _ in range(500):  # polls until the timer's flush lands (no assertion on how long it took)
        if (await keys.get("acme", issued.key_id)).last_used_at is not None:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the timer never flushed the last use")
    assert await keys.flush() == 0  # nothing left: the timer took it
    await keys.close()


async def test_no_raw_key_reaches_the_database_the_logs_or_an_error(
    keys: ApiKeys, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Must-show 3: dump every table and every captured log line after a key's whole life."""
    raws: list[str] = []
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logged:
        user_key = await keys.create("acme", user_id="alice", name="laptop", scopes=["read"])
        company_key = await keys.create("acme", expires_in=timedelta(days=30))
        raws += [user_key.key.get_secret_value(), company_key.key.get_secret_value()]
        await keys.authenticate(raws[0])
        await keys.authenticate(raws[1], scopes=[])
        rotated = await keys.rotate("acme", user_key.key_id, overlap=timedelta(minutes=5))
        raws.append(rotated.key.get_secret_value())
        await keys.authenticate(raws[2])
        await keys.authenticate(raws[0])  # in the overlap
        await keys.revoke("acme", company_key.key_id)
        wrong_secret = with_checksum(raws[2][:-6][:-32] + "x" * 32)
        for refused in (raws[1], wrong_secret, tamper(raws[2], 40)):
            with pytest.raises(AuthenticationError) as caught:
                await keys.authenticate(refused)
            texts += [str(caught.value), repr(caught.value), repr(caught.value.args)]
        with pytest.raises(ApiKeyScopeError) as scope_error:
            await keys.authenticate(raws[2], scopes=["admin"])
        texts += [str(scope_error.value), repr(scope_error.value)]
        await keys.flush()
    texts += [repr(x) + str(x) for x in (user_key, company_key, rotated, keys)]
    texts += [repr(info) for info in await keys.list_keys("acme")]
    async with engine.connect() as conn:
        tables = (
            await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"))
        ).scalars()
        quote = engine.dialect.identifier_preparer.quote
        dump = [
            row
            for table in list(tables)
            for row in (await conn.execute(text(f"SELECT t::text FROM {quote(table)} t"))).scalars()
        ]
    database = "\n".join(dump)
    logs = "\n".join([repr(entry) for entry in logged] + [caplog.text])
    # The dump and the logs are not empty: they hold the keys' rows and lines, by key id.
    assert user_key.key_id in database and rotated.key_id in database and "acme" in database
    assert "api key issued" in logs and rotated.key_id in logs and "api key refused" in logs
    for raw in raws:
        secret = raw[len("sk_live_") + 16 + 1 : -6]
        for haystack in (database, logs, "\n".join(texts)):
            assert raw not in haystack
            assert secret not in haystack
            assert secret.encode().hex() not in haystack


@pytest.mark.commits
async def test_on_a_pooled_engine_the_lookup_runs_alone_in_autocommit_or_in_the_callers_block(
    fresh_database: DatabaseConfig,
) -> None:
    engine = build_engine(fresh_database)
    try:
        await create_company(engine, "acme", "Acme Corp")
        async with ApiKeys(engine, pepper=PEPPER, environment="live") as keys:
            issued = await keys.create("acme", scopes=["read"])
            with statements(engine) as sent:
                principal = await keys.authenticate(issued.key.get_secret_value())
                with pytest.raises(InvalidApiKey):
                    await keys.authenticate(tamper(issued.key.get_secret_value(), 62))
            assert principal.key_id == issued.key_id
            assert len(sent) == 1 and sent[0].startswith("SELECT")
            async with transaction():
                await keys.revoke("acme", issued.key_id)
                with pytest.raises(ApiKeyRevoked):  # the block's own uncommitted revocation is seen
                    await keys.authenticate(issued.key.get_secret_value())
                set_rollback(True)
            assert (await keys.authenticate(issued.key.get_secret_value())).key_id == issued.key_id
        async with engine.connect() as conn:
            used = await conn.scalar(
                text("SELECT last_used_at FROM api_keys WHERE key_id = :k"), {"k": issued.key_id}
            )
        assert used is not None  # written by close()
    finally:
        await engine.dispose()


async def test_the_readme_example_runs_as_written(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's "API keys" block, run as written (its top-level awaits inside a coroutine)."""
    readme = README.read_text()
    section = readme.split("## API keys\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("PERSISTENCE_API_KEY_PEPPER", PEPPER)
    namespace: dict[str, Any] = {}
    exec("async def snippet(engine):\n" + "".join(f"    {line}\n" for line in code.splitlines()), namespace)  # noqa: S102 (our README)
    await namespace["snippet"](engine)
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*), count(revoked_at) FROM api_keys"))).one()
    assert tuple(stored) == (2, 0)  # the key and its rotation, the old one still in its overlap
