"""Tenant isolation by row-level security (revision 0026, `persistence.tenancy`), as a service logs in.

Every test connects as a fresh LOGIN role that is a member of `persistence_service` (or of
`persistence_operator`), on a private database where the superuser has put rows of two tenants.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls.logger import AICallLogger
from persistence.errors import NotFoundError, TenantIsolationError, ValidationError
from persistence.models import Company
from persistence.repository import Repository
from persistence.tenancy import across_tenants, current_tenant, tenant
from persistence.testing.pytest_plugin import LoginAs
from persistence.transaction import current_session, transaction

pytestmark = pytest.mark.commits


class Companies(Repository[Company]):
    model = Company


@pytest.fixture
async def login_as(engine: AsyncEngine, login_as: LoginAs) -> LoginAs:
    """The plugin's `login_as`, on a database where the superuser has put companies a and b with
    two users each."""
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO companies (company_id, name) VALUES ('a', 'A'), ('b', 'B')"))
        await conn.execute(
            text(
                "INSERT INTO users (company_id, user_id, name) VALUES "
                "('a', 'u1', 'a1'), ('a', 'u2', 'a2'), ('b', 'u1', 'b1'), ('b', 'u2', 'b2')"
            )
        )
    return login_as


async def _names(engine: AsyncEngine) -> list[str]:
    """Every company's and user's name, as the superuser sees them (companies first)."""
    async with engine.connect() as conn:
        companies = await conn.execute(text("SELECT name FROM companies ORDER BY company_id"))
        users = await conn.execute(text("SELECT name FROM users ORDER BY company_id, user_id"))
        return [*companies.scalars(), *users.scalars()]


async def test_a_tenant_reads_only_its_own_rows_through_repositories_and_raw_sql(login_as: LoginAs) -> None:
    async with login_as("persistence_service") as svc:
        companies = Companies(svc)
        async with tenant("a"):
            assert current_tenant() == "a"
            assert [c.name for c in await companies.list()] == ["A"]
            assert await companies.count() == 1
            assert await companies.get_or_none("b") is None
            with pytest.raises(NotFoundError):
                await companies.get("b")
            assert await companies.list(company_id="b") == []
            async with transaction():
                session = await current_session(svc)
                rows = (await session.execute(text("SELECT company_id, name FROM users ORDER BY name"))).all()
                assert [tuple(r) for r in rows] == [("a", "a1"), ("a", "a2")]
                # The same transaction's repository calls see the same tenant.
                assert [c.company_id for c in await companies.list()] == ["a"]
        async with tenant("b"):
            assert [c.name for c in await companies.list()] == ["B"]


async def test_a_tenant_cannot_update_or_delete_another_tenants_rows(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    before = await _names(engine)
    async with login_as("persistence_service") as svc, tenant("a"):
        companies = Companies(svc)
        with pytest.raises(NotFoundError):
            await companies.update("b", name="taken")
        with pytest.raises(NotFoundError):
            await companies.delete("b")
        assert await companies.update_many(company_id="b", values={"name": "taken"}) == 0
        assert await companies.delete_many(company_id__in=["b"]) == 0
        async with transaction():
            session = await current_session(svc)
            updated = await session.execute(text("UPDATE users SET name = 'taken' WHERE company_id = 'b'"))
            deleted = await session.execute(text("DELETE FROM users WHERE company_id <> 'a'"))
            assert (updated.rowcount, deleted.rowcount) == (0, 0)  # type: ignore[attr-defined]
        # Its own rows it may change.
        await companies.update("a", name="A renamed")
    assert await _names(engine) == ["A renamed", *before[1:]]


async def test_writing_a_row_for_another_tenant_raises_tenant_isolation_error(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    async with login_as("persistence_service") as svc, tenant("a"):
        companies = Companies(svc)
        with pytest.raises(TenantIsolationError) as refused:
            await companies.add(company_id="c", name="C")
        assert refused.value.sqlstate == "42501"
        with pytest.raises(TenantIsolationError):
            async with transaction():
                session = await current_session(svc)
                await session.execute(text("INSERT INTO users (company_id, user_id) VALUES ('b', 'raw')"))
    assert len(await _names(engine)) == 6


async def test_without_a_context_nothing_is_visible_and_nothing_can_be_written(login_as: LoginAs) -> None:
    async with login_as("persistence_service") as svc:
        companies = Companies(svc)
        assert current_tenant() is None
        assert await companies.list() == [] and await companies.count() == 0
        async with svc.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar_one() == 0
            assert (await conn.execute(text("SELECT count(*) FROM companies"))).scalar_one() == 0
        with pytest.raises(TenantIsolationError):
            await companies.add(company_id="a2", name="A2")
        # A transaction-local setting leaves '' behind on its connection: still no tenant.
        async with tenant("a"):
            assert await companies.count() == 1
        async with svc.connect() as conn:
            assert (
                await conn.execute(text("SELECT current_setting('persistence.tenant_id', true)"))
            ).scalar_one() in (
                None,
                "",
            )
            assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar_one() == 0


async def test_the_operator_path_crosses_tenants_and_leaves_an_audit_row(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    async with login_as("persistence_operator") as ops:
        companies = Companies(ops)
        assert await companies.count() == 0  # a member of the operator role is bound by RLS too
        async with across_tenants(actor="alice", reason="ticket 42"):
            assert sorted(c.name for c in await companies.list()) == ["A", "B"]
            async with transaction():
                await companies.update("b", name="fixed")
                session = await current_session(ops)
                assert (
                    await session.execute(text("SELECT current_user"))
                ).scalar_one() == "persistence_operator"
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT user_id, metadata ->> 'reason' FROM audit_log "
                    "WHERE entity_type = 'tenancy' AND action = 'across_tenants'"
                )
            )
        ).all()
    assert [tuple(r) for r in rows] == [("alice", "ticket 42")] * 2  # one per transaction
    assert "fixed" in await _names(engine)


async def test_a_service_role_cannot_become_the_operator(engine: AsyncEngine, login_as: LoginAs) -> None:
    async with login_as("persistence_service") as svc:
        with pytest.raises(TenantIsolationError):
            async with across_tenants(actor="mallory", reason="curious"):
                await Companies(svc).list()
        with pytest.raises(TenantIsolationError):
            async with transaction():
                session = await current_session(svc)
                await session.execute(text("SET ROLE persistence_operator"))
    async with engine.connect() as conn:
        audited = (
            await conn.execute(text("SELECT count(*) FROM audit_log WHERE user_id = 'mallory'"))
        ).scalar_one()
    assert audited == 0


async def test_contexts_check_their_arguments() -> None:
    with pytest.raises(ValidationError):
        tenant("")
    with pytest.raises(TypeError):
        tenant(7)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        across_tenants(actor="alice", reason=" ")
    with tenant("a"):
        with tenant("b"):
            assert current_tenant() == "b"
        assert current_tenant() == "a"
    assert current_tenant() is None


async def test_a_partition_read_directly_is_refused(engine: AsyncEngine, login_as: LoginAs) -> None:
    """Policies guard the partitioned parent; its partitions are not granted to the service role."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT ai_calls_ensure_partition(date '2026-01-01')"))
        partition = (
            await conn.execute(
                text(
                    "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'ai_calls'::regclass LIMIT 1"
                )
            )
        ).scalar_one()
    async with login_as("persistence_service") as svc, tenant("a"):
        with pytest.raises(TenantIsolationError):
            async with transaction():
                session = await current_session(svc)
                await session.execute(text(f"SELECT count(*) FROM {partition}"))


async def _log(logger: AICallLogger, organization_id: str, request_id: str) -> int:
    return await logger.log_call(
        "openai", "gpt-4o", 10, 5, Decimal("0.01"), organization_id=organization_id, request_id=request_id
    )


async def test_the_ledger_logs_a_call_as_its_tenant(engine: AsyncEngine, login_as: LoginAs) -> None:
    async with login_as("persistence_service") as svc:
        async with AICallLogger(svc, fold_every=None) as plain, tenant("a"):
            await _log(plain, "a", "r1")
            with pytest.raises(TenantIsolationError):
                await _log(plain, "b", "r2")
        # Outside a context too, each call acts as its organization (the logger sees RLS bind it).
        async with AICallLogger(svc, fold_every=None) as scoped:
            await _log(scoped, "b", "r3")
            first = await _log(scoped, "a", "r4")
            assert await _log(scoped, "a", "r4") == first  # idempotent
        async with tenant("a"), transaction():
            session = await current_session(svc)
            seen = (await session.execute(text("SELECT count(*) FROM cost_calculations"))).scalar_one()
        assert seen == 2  # the view runs with the caller's policies (security_invoker)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT organization_id, request_id FROM ai_calls ORDER BY request_id"))
        ).all()
    assert [tuple(r) for r in rows] == [("a", "r1"), ("b", "r3"), ("a", "r4")]


COPY_CONFIG = (  # a company's copy of a global rate limit (or, with '', a second global one)
    "INSERT INTO rate_limit_configs (company_id, scope, scope_id, metric, period, limit_value, burst, enabled) "
    "SELECT CAST(:company AS varchar), CASE WHEN :company = '' THEN scope ELSE 'company' END, scope_id, metric, "
    "period, limit_value, burst, enabled FROM rate_limit_configs WHERE scope = 'global' ORDER BY id LIMIT 1"
)
COUNT_CONFIGS = "SELECT count(*) FILTER (WHERE company_id = ''), count(*) FILTER (WHERE company_id <> '') FROM rate_limit_configs"


async def test_reference_tables_show_global_rows_and_write_only_the_tenants_own(
    engine: AsyncEngine, login_as: LoginAs
) -> None:
    async with engine.begin() as conn:
        for company in ("a", "b"):
            await conn.execute(text(COPY_CONFIG), {"company": company})
        globals_, _ = (await conn.execute(text(COUNT_CONFIGS))).one()
    assert globals_ > 0
    async with login_as("persistence_service") as svc:
        async with svc.connect() as conn:
            assert tuple((await conn.execute(text(COUNT_CONFIGS))).one()) == (globals_, 0)  # no context
        async with tenant("a"):
            async with transaction():
                session = await current_session(svc)
                assert tuple((await session.execute(text(COUNT_CONFIGS))).one()) == (globals_, 1)
                changed = await session.execute(text("UPDATE rate_limit_configs SET enabled = enabled"))
                assert changed.rowcount == 1  # type: ignore[attr-defined]
            with pytest.raises(TenantIsolationError):  # a global row is not the tenant's to write
                async with transaction():
                    session = await current_session(svc)
                    await session.execute(text(COPY_CONFIG), {"company": ""})
