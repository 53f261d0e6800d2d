"""Tenant isolation by row-level security: which tenant (or which operator) a transaction acts for.

Revision 0026 gives every tenant-owned table (`models/tenancy.TENANT_TABLES`) a policy that shows
and accepts only the rows whose tenant column equals the transaction-local setting
`persistence.tenant_id`; services log in as members of the role `persistence_service`, which RLS
binds. This module says which tenant that is:

    async with tenant("acme"):          # or `with tenant("acme"):`
        await calls.list(...)            # each transaction opened inside starts with
                                         # SELECT set_config('persistence.tenant_id', 'acme', true)

Every outermost `transaction()` block and every repository call outside one opened inside the
context applies it once, at the start of its transaction (one statement, a bound parameter); so
does the ledger's `log_call`. Without a context nothing is set, and the service role sees nothing.

Operators act across tenants only explicitly, and audited:

    async with across_tenants(actor="alice", reason="support ticket 42"):
        ...

Each transaction opened inside runs `SET LOCAL ROLE persistence_operator` (BYPASSRLS; the login
role must be a member, otherwise `TenantIsolationError`) and appends an `audit_log` row (entity
type `tenancy`, action `across_tenants`, the actor, the reason in metadata) in that same
transaction; audited writes inside record the same actor and reason. Such a transaction must be
read-write (it writes the audit row).

The owner of the tables (migrations, maintenance, the test suite's superuser) is not subject to RLS:
the contexts change nothing for it but the setting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import Context, ContextVar, Token, copy_context
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar
from weakref import WeakKeyDictionary

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.audit import audit_context
from persistence.errors import ArgumentTypeError, TenantIsolationError, ValidationError

__all__ = [
    "OPERATOR_ROLE",
    "SERVICE_ROLE",
    "TENANT_SETTING",
    "across_tenants",
    "apply_scope",
    "as_tenant",
    "check_tenant",
    "current_tenant",
    "in_scope",
    "in_tenant_transaction",
    "outside_scope",
    "row_security_binds",
    "tenant",
]

T = TypeVar("T")

TENANT_SETTING = "persistence.tenant_id"
SERVICE_ROLE = "persistence_service"
OPERATOR_ROLE = "persistence_operator"
_TENANT_ID_LENGTH = 100  # the tenant columns are VARCHAR(100)

SET_TENANT_SQL = "SELECT set_config('persistence.tenant_id', $1, true)"  # raw asyncpg (the ledger)
_SET_TENANT = text("SELECT set_config('persistence.tenant_id', :tenant_id, true)")
_SET_OPERATOR = text("SET LOCAL ROLE persistence_operator")
_AUDIT_CROSSING = text(
    "INSERT INTO audit_log (id, entity_type, entity_id, action, user_id, metadata) "
    "VALUES (gen_random_uuid(), 'tenancy', '*', 'across_tenants', :actor, "
    "jsonb_build_object('reason', CAST(:reason AS text)))"
)


@dataclass(frozen=True, slots=True)
class _Tenant:
    tenant_id: str


@dataclass(frozen=True, slots=True)
class _Operator:
    actor: str
    reason: str


_scope: ContextVar[_Tenant | _Operator | None] = ContextVar("persistence_tenant_scope", default=None)


def _text(what: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValidationError(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise ValidationError(f"{what} is longer than {limit} characters")
    return value


def current_tenant() -> str | None:
    """The tenant of the innermost `tenant()` context of this task (None outside one, or across tenants)."""
    scope = _scope.get()
    return scope.tenant_id if isinstance(scope, _Tenant) else None


def in_scope() -> bool:
    """True inside a `tenant()` or `across_tenants()` context: transactions opened now need `apply_scope`."""
    return _scope.get() is not None


def outside_scope() -> Context:
    """A copy of the current context with no `tenant()` / `across_tenants()` scope: for a
    background task that serves every tenant (a batch writer) started from inside a context."""
    context = copy_context()
    context.run(_scope.set, None)
    return context


async def apply_scope(connection: AsyncConnection) -> None:
    """Run at the start of each transaction opened inside a context (by `blocks.py`): the tenant
    setting, or the operator role and its audit row. Nothing outside a context."""
    scope = _scope.get()
    if isinstance(scope, _Tenant):
        await connection.execute(_SET_TENANT, {"tenant_id": scope.tenant_id})
    elif isinstance(scope, _Operator):
        await connection.execute(_SET_OPERATOR)  # 42501 unless a member: TenantIsolationError
        await connection.execute(_AUDIT_CROSSING, {"actor": scope.actor, "reason": scope.reason})


class _Scope:
    """A context (sync `with` or `async with`) that sets the scope for the code inside; nestable."""

    __slots__ = ("_audit", "_scope_value", "_tokens")

    def __init__(self, value: _Tenant | _Operator, audit: audit_context | None = None) -> None:
        self._scope_value = value
        self._audit = audit
        self._tokens: list[Token[_Tenant | _Operator | None]] = []

    def __enter__(self) -> None:
        if self._audit is not None:
            self._audit.__enter__()
        self._tokens.append(_scope.set(self._scope_value))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _scope.reset(self._tokens.pop())
        if self._audit is not None:
            self._audit.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class tenant(_Scope):
    """`async with tenant("acme"):` (or `with`): transactions opened inside see and write only acme's rows.

    The id must be a non-empty str (at most 100 characters, the tenant columns' width). A transaction
    already open when the context is entered keeps the scope it started with.
    """

    __slots__ = ()

    def __init__(self, tenant_id: str) -> None:
        super().__init__(_Tenant(_text("tenant_id", tenant_id, _TENANT_ID_LENGTH)))


class across_tenants(_Scope):
    """`async with across_tenants(actor=..., reason=...):` transactions opened inside run as
    `persistence_operator` (every tenant's rows) and each appends an audit row naming the actor and
    the reason; writes of audited models inside record them too."""

    __slots__ = ()

    def __init__(self, *, actor: str, reason: str) -> None:
        actor = _text("actor", actor, 255)
        reason = _text("reason", reason, 1000)
        super().__init__(_Operator(actor, reason), audit_context(user_id=actor, reason=reason))


# Whether the policies bind the connection's role: false for superusers, BYPASSRLS roles and the
# tables' owner (RLS is not forced), and before revision 0026. NULL (no such table) reads as false.
_BINDS_SQL = "SELECT coalesce(row_security_active(to_regclass('public.companies')), false)"
_binds: WeakKeyDictionary[asyncpg.Connection, bool] = WeakKeyDictionary()


async def row_security_binds(raw: asyncpg.Connection) -> bool:
    """Whether row-level security applies to `raw`'s login (asked once per connection, then cached)."""
    known = _binds.get(raw)
    if known is None:
        known = _binds[raw] = bool(await raw.fetchval(_BINDS_SQL))
    return known


def check_tenant(tenant_id: str) -> None:
    """Refuse, before any statement, a call for another tenant than the `tenant()` context's."""
    scoped = current_tenant()
    if scoped is not None and scoped != tenant_id:
        raise TenantIsolationError(f"a call for tenant {tenant_id!r} inside tenant({scoped!r})")


async def as_tenant(
    raw: asyncpg.Connection, tenant_id: str, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """`work(raw)` acting for `tenant_id`, for the domain modules' raw asyncpg statements (whose
    every call names its tenant). Where row-level security binds the login (a service role), it
    runs in a transaction (a savepoint inside one already open) that first sets the tenant: two
    more round trips than the bare statement, three with BEGIN/COMMIT. For the owner it is `work(raw)`
    as it is, after one cached check per connection."""
    check_tenant(tenant_id)
    if not await row_security_binds(raw):
        return await work(raw)
    return await in_tenant_transaction(raw, tenant_id, work)


async def in_tenant_transaction(
    raw: asyncpg.Connection, tenant_id: str, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """`work(raw)` in a transaction (a savepoint inside one already open) that first sets the
    tenant, for callers that already know row-level security binds `raw` (`as_tenant`, the ledger)."""
    async with raw.transaction():
        await raw.execute(SET_TENANT_SQL, tenant_id)
        return await work(raw)
