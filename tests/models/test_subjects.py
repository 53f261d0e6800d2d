"""`companies`, `users` and `api_keys`: tenant-first keys, seed 001's columns without a plaintext key."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.errors import ConflictError, IntegrityViolation, NotFoundError, ValidationError
from persistence.models import ApiKey, User
from persistence.subjects import (
    CompanyRepository,
    create_company,
    create_user,
    get_company,
    get_user,
    list_users,
)
from persistence.testing import ApiKeyFactory, CompanyFactory, UserFactory, create
from tests.models.test_constraints import expect_violation


async def test_companies_and_users_are_created_and_read(engine: AsyncEngine) -> None:
    company = await create_company(engine, "acme", "Acme Corp", tier="premium")
    assert (company.company_id, company.name, company.tier, company.active) == (
        "acme",
        "Acme Corp",
        "premium",
        True,
    )
    assert company.created_at.utcoffset() is not None
    assert (await get_company(engine, "acme")).name == "Acme Corp"
    assert (await CompanyRepository(engine).get("acme")).tier == "premium"
    user = await create_user(engine, "acme", "alice", name="Alice", email="alice@acme.test")
    assert (user.company_id, user.user_id, user.email, user.active) == (
        "acme",
        "alice",
        "alice@acme.test",
        True,
    )
    await create_user(engine, "acme", "bob", active=False)
    assert (await get_user(engine, "acme", "alice")).name == "Alice"
    assert [u.user_id for u in await list_users(engine, "acme")] == ["alice", "bob"]
    assert [u.user_id for u in await list_users(engine, "acme", active=True)] == ["alice"]


async def test_missing_and_duplicate_subjects_are_typed_errors(engine: AsyncEngine) -> None:
    await create_company(engine, "acme", "Acme Corp")
    await create_company(engine, "globex", "Globex")
    with pytest.raises(NotFoundError):
        await get_company(engine, "initech")
    with pytest.raises(NotFoundError):
        await get_user(engine, "acme", "nobody")
    with pytest.raises(ConflictError):
        await create_company(engine, "acme", "Acme again")
    await create_user(engine, "acme", "alice", email="alice@example.com")
    with pytest.raises(ConflictError):
        await create_user(engine, "acme", "alice")
    with pytest.raises(ConflictError) as caught:
        await create_user(engine, "acme", "alice2", email="alice@example.com")  # email unique per company
    assert caught.value.constraint == "uq_users_company_id_email"
    await create_user(engine, "globex", "alice", email="alice@example.com")  # same ids in another tenant
    with pytest.raises(IntegrityViolation):
        await create_user(engine, "initech", "carol")  # no such company
    with pytest.raises(ValidationError):
        await create_company(engine, "", "Nameless")
    with pytest.raises(ValidationError):
        await get_user(engine, "acme", "x" * 101)


def test_users_have_seed_001s_columns_but_no_plaintext_api_key() -> None:
    columns = set(inspect(User).columns.keys())
    assert {"user_id", "name", "email", "created_at", "active"} <= columns
    assert "api_key" not in columns
    assert "api_key" not in set(inspect(ApiKey).columns.keys())
    assert {"key_id", "secret_hash", "display_prefix"} <= set(inspect(ApiKey).columns.keys())


async def test_every_key_and_index_leads_with_company_id(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT i.indexrelid::regclass::text AS name, a.attname AS first_column "
                    "FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                    "WHERE i.indrelid IN ('users'::regclass, 'api_keys'::regclass, 'companies'::regclass)"
                )
            )
        ).all()
    firsts = {row.name: row.first_column for row in rows}
    assert (
        firsts.pop("ix_api_keys_key_id") == "key_id"
    )  # authentication's lookup: the tenant is not known yet (not unique: revision 0025)
    assert firsts == {
        "pk_companies": "company_id",
        "pk_users": "company_id",
        "uq_users_company_id_email": "company_id",
        "pk_api_keys": "company_id",
        "ix_api_keys_company_id_user_id": "company_id",
    }


async def test_api_key_rows_reject_what_cannot_be_a_key(session: AsyncSession) -> None:
    company = CompanyFactory.build()
    session.add(company)
    await session.flush()
    base = {"company_id": company.company_id, "environment": "live", "display_prefix": "sk_live_x_"}
    await expect_violation(
        session,
        ApiKey(key_id="k1", secret_hash=b"short", **base),
        "23514",
        "ck_api_keys_secret_hash_sha256",
    )
    session.add(company := CompanyFactory.build())
    await session.flush()
    base["company_id"] = company.company_id
    await expect_violation(
        session,
        ApiKey(key_id="k2", secret_hash=bytes(32), **{**base, "environment": "staging"}),
        "23514",
        "ck_api_keys_environment_known",
    )


async def test_deleting_a_company_deletes_its_users_and_keys(session: AsyncSession) -> None:
    user = await create(session, UserFactory)
    key = await create(session, ApiKeyFactory, company=user.company, user_id=user.user_id)
    await session.execute(text("DELETE FROM companies WHERE company_id = :c"), {"c": user.company_id})
    assert (
        await session.execute(
            text("SELECT count(*) FROM users WHERE company_id = :c"), {"c": user.company_id}
        )
    ).scalar() == 0
    assert (
        await session.execute(text("SELECT count(*) FROM api_keys WHERE key_id = :k"), {"k": key.key_id})
    ).scalar() == 0
    assert (
        await session.execute(
            text("SELECT count(*) FROM companies WHERE company_id = :c"), {"c": user.company_id}
        )
    ).scalar() == 0
