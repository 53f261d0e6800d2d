"""Companies (tenants) and their users: create and read them by their string ids.

Each function is one statement; inside a `transaction()` block it runs on the block's session,
outside one it is its own short transaction. A duplicate id (or a user's email already used in the
same company) is a `ConflictError`, a user of an unknown company an `IntegrityViolation`, a missing
row a `NotFoundError`. `users` has a composite key (company_id, user_id), which the generic
`Repository` does not take, hence plain functions; `CompanyRepository` gives companies the generic
reads and writes (pages, updates) as well.
"""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.errors import NotFoundError, ValidationError
from persistence.models import Company, User
from persistence.repository import Repository
from persistence.transaction import session_scope

__all__ = ["CompanyRepository", "create_company", "create_user", "get_company", "get_user", "list_users"]


class CompanyRepository(Repository[Company]):
    model = Company


def _id(value: object, name: str, max_length: int = 100) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ValidationError(f"{name} must be a non-empty string of at most {max_length} characters")
    return value


async def create_company(
    engine: AsyncEngine, company_id: str, name: str, *, tier: str = "basic", active: bool = True
) -> Company:
    """Insert a company (a tenant); `tier` is the `tier` scope its rate limits resolve through."""
    stmt = (
        insert(Company)
        .values(company_id=_id(company_id, "company_id"), name=name, tier=tier, active=active)
        .returning(Company)
    )
    async with session_scope(engine) as session:
        return (await session.scalars(stmt)).one()


async def get_company(engine: AsyncEngine, company_id: str) -> Company:
    async with session_scope(engine) as session:
        found = await session.get(Company, _id(company_id, "company_id"))
    if found is None:
        raise NotFoundError("Company", company_id)
    return found


async def create_user(
    engine: AsyncEngine,
    company_id: str,
    user_id: str,
    *,
    name: str | None = None,
    email: str | None = None,
    active: bool = True,
) -> User:
    """Insert one of a company's users (seed 001's columns; no API key: see `persistence.api_keys`)."""
    stmt = (
        insert(User)
        .values(
            company_id=_id(company_id, "company_id"),
            user_id=_id(user_id, "user_id"),
            name=name,
            email=email,
            active=active,
        )
        .returning(User)
    )
    async with session_scope(engine) as session:
        return (await session.scalars(stmt)).one()


async def get_user(engine: AsyncEngine, company_id: str, user_id: str) -> User:
    key = (_id(company_id, "company_id"), _id(user_id, "user_id"))
    async with session_scope(engine) as session:
        found = await session.get(User, key)
    if found is None:
        raise NotFoundError("User", f"{company_id}/{user_id}")
    return found


async def list_users(
    engine: AsyncEngine, company_id: str, *, active: bool | None = None, limit: int = 1000
) -> list[User]:
    """A company's users by user_id (an index range on the primary key), optionally only (in)active ones."""
    stmt = select(User).where(User.company_id == _id(company_id, "company_id"))
    if active is not None:
        stmt = stmt.where(User.active.is_(active))
    stmt = stmt.order_by(User.user_id).limit(limit)
    async with session_scope(engine) as session:
        return list((await session.scalars(stmt)).all())
