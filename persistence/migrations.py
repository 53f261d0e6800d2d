"""Run the Alembic migrations from code: plain upgrade/downgrade (the seeding script, the test template)
and the safe runs of `scripts/run_migration.py` / `persistence migrate` (advisory lock, lock_timeout)."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError as AlembicError
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command
from persistence.advisory import advisory_key
from persistence.errors import (
    ConfigurationError,
    DatabaseError,
    InvalidRequestError,
    MigrationLockTimeout,
    PersistenceError,
    raise_translated,
    translate,
)

_PACKAGE_DIR = Path(__file__).resolve().parent


def script_location() -> Path:
    """The migrations directory: shipped in the wheel, or the checkout's top-level `alembic/`."""
    for candidate in (_PACKAGE_DIR / "_alembic", _PACKAGE_DIR.parent / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise ConfigurationError("cannot find the Alembic migrations (alembic/env.py) next to the package")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["configure_logging"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def current_of(connection: Connection) -> str | None:
    """The revision stamped in the connection's database (None: never migrated)."""
    return _current(connection)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the engine's database to `revision` in one transaction; returns (before, after)."""

    def run(connection: Connection) -> tuple[str | None, str | None]:
        before = _current(connection)
        command.upgrade(alembic_config(connection), revision)
        return before, _current(connection)

    async with engine.begin() as conn:
        return await conn.run_sync(run)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    def run(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


# --- Safe runs (`scripts/run_migration.py`, `persistence migrate`) ---------------------------------
#
# Every run or rollback holds MIGRATION_LOCK, a transaction-level advisory lock taken on the
# migrating connection itself, so it is released exactly when that transaction commits or rolls
# back (also when the process dies). A second migrator waits for it (bounded by `wait`) and then
# reads the revision afresh, so it finds nothing left to do. The DDL runs with `lock_timeout`: a
# migration that cannot lock a table in time fails (and rolls back whole) instead of queueing behind
# a long transaction while every later query on that table queues behind it.

MIGRATION_LOCK = advisory_key("persistence.migrations")
LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    """One revision: its id, the first line of its docstring, and its whole docstring."""

    id: str
    message: str
    doc: str
    down_revision: str | None


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    current: str | None
    head: str | None
    pending: tuple[RevisionInfo, ...]  # oldest first

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """What `rollback` would undo: the current revision and what its downgrade() removes."""

    revision: RevisionInfo
    drops: tuple[str, ...]  # e.g. "op.drop_table('x')" / "DROP TABLE x", read from the downgrade's source


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def _info(script: Script) -> RevisionInfo:
    down = script.down_revision
    if down is not None and not isinstance(down, str):  # a merge point: name the first parent
        down = down[0]
    doc = (script.module.__doc__ or "").strip()
    return RevisionInfo(id=script.revision, message=script.doc, doc=doc, down_revision=down)


def _script(scripts: ScriptDirectory, revision: str) -> Script:
    try:
        found = scripts.get_revision(revision)
    except AlembicError as exc:
        raise ConfigurationError(
            f"the database is at revision {revision}, which these migrations do not know"
        ) from exc
    if found is None:
        raise ConfigurationError(
            f"the database is at revision {revision}, which these migrations do not know"
        )
    return found


def pending_revisions(current: str | None) -> tuple[RevisionInfo, ...]:
    """Revisions between `current` (None: empty database) and head, oldest first."""
    scripts = _scripts()
    if current is not None:
        _script(scripts, current)
    head = scripts.get_current_head()
    if head is None or head == current:
        return ()
    return tuple(_info(s) for s in reversed(list(scripts.iterate_revisions(head, current or "base"))))


async def migration_status(engine: AsyncEngine) -> MigrationStatus:
    current = await current_revision(engine)
    return MigrationStatus(current=current, head=head_revision(), pending=pending_revisions(current))


_DROP_SQL = re.compile(
    r"\b(?:DROP\s+(?:TABLE|COLUMN|INDEX|FUNCTION|TRIGGER|CONSTRAINT|TYPE)|DELETE\s+FROM)\s+(?:IF\s+EXISTS\s+)?\w+",
    re.I,
)
_Bindings = dict[str, tuple[str, ...]]


def _values(node: ast.expr, module: object, bound: _Bindings) -> tuple[str, ...]:
    """The string(s) an argument stands for: a literal, `op.f(literal)`, a module constant, or a
    loop variable over a literal tuple; ("?",) when the source does not say."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, ast.Call) and node.args and getattr(node.func, "attr", None) == "f":
        return _values(node.args[0], module, bound)
    if isinstance(node, ast.Name):
        if node.id in bound:
            return bound[node.id]
        value = getattr(module, node.id, None)
        if isinstance(value, str):
            return (value,)
    return ("?",)


def _loop_bindings(loop: ast.For) -> _Bindings:
    """`for name in ("a", "b")` / `for name, x in (("a", ...), ...)`: name -> the literal values."""
    target = loop.target.elts[0] if isinstance(loop.target, ast.Tuple) else loop.target
    if not isinstance(target, ast.Name) or not isinstance(loop.iter, ast.Tuple):
        return {}
    items = [
        e.elts[0] if isinstance(loop.target, ast.Tuple) and isinstance(e, ast.Tuple) else e
        for e in loop.iter.elts
    ]
    if not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in items):
        return {}
    return {target.id: tuple(str(e.value) for e in items if isinstance(e, ast.Constant))}


def _sql_drops(sql: str) -> list[str]:
    """ "DROP TABLE x" -> "table x", "DELETE FROM t" -> "rows of t"."""
    out = []
    for match in _DROP_SQL.finditer(sql):
        words = [w for w in match.group(0).split() if w.upper() not in {"IF", "EXISTS"}]
        kind = "rows of" if words[0].upper() == "DELETE" else words[1].lower()
        out.append(f"{kind} {words[-1]}")
    return out


def _drops_of(script: Script) -> tuple[str, ...]:
    """What the revision's downgrade() removes, as far as its source shows it (best effort): the
    `op.drop_*` calls with their literal arguments and the DROP/DELETE statements in its SQL."""
    module = script.module
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(module.downgrade)))
    except (AttributeError, OSError, TypeError, SyntaxError):
        return ()
    found: list[str] = []

    def visit(node: ast.AST, bound: _Bindings) -> None:
        if isinstance(node, ast.For):
            bound = {**bound, **_loop_bindings(node)}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if (
                name.startswith("drop_")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "op"
            ):
                what = name.removeprefix("drop_")
                args = [_values(a, module, bound) for a in node.args[:2]]
                if what == "column" and len(args) == 2:
                    found.extend(f"column {t}.{c}" for t in args[0] for c in args[1])
                elif args:
                    found.extend(f"{what} {v}" for v in args[0])
            elif name == "delete":
                found.append("rows it inserted (see its description)")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.extend(_sql_drops(node.value))
        if isinstance(node, ast.JoinedStr):
            literal = "".join(
                v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
            found.extend(_sql_drops(literal))
            return
        for child in ast.iter_child_nodes(node):
            visit(child, bound)

    visit(tree, {})
    return tuple(dict.fromkeys(found))


def rollback_plan(current: str | None) -> RollbackPlan:
    """What one step back from `current` undoes; `InvalidRequestError` on an empty database."""
    if current is None:
        raise InvalidRequestError("nothing to roll back: the database has no migrations applied")
    script = _script(_scripts(), current)
    return RollbackPlan(revision=_info(script), drops=_drops_of(script))


WaitCallback = Callable[[int | None], None]


def _holder_pid(connection: Connection) -> int | None:
    """The backend pid holding the migration lock (for the waiting message), if visible."""
    key = MIGRATION_LOCK & 0xFFFFFFFFFFFFFFFF
    pid = connection.execute(
        text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"hi": key >> 32, "lo": key & 0xFFFFFFFF},
    ).scalar()
    return int(pid) if pid is not None else None


def _set_lock_timeout(connection: Connection, seconds: float) -> None:
    connection.execute(
        text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{max(1, round(seconds * 1000))}ms"}
    )


def _take_migration_lock(connection: Connection, wait: float, on_wait: WaitCallback | None) -> None:
    if connection.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK}).scalar():
        return
    if on_wait is not None:
        on_wait(_holder_pid(connection))
    _set_lock_timeout(connection, wait)  # advisory lock waits obey lock_timeout too
    try:
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
    except DBAPIError as exc:
        if _sqlstate(exc) == LOCK_NOT_AVAILABLE:
            raise MigrationLockTimeout(
                f"another migration still held the migration lock after {wait:g}s; nothing was applied "
                "(wait for it to finish, or raise --wait)",
                sqlstate=LOCK_NOT_AVAILABLE,
            ) from exc
        raise


def _sqlstate(exc: BaseException) -> str | None:
    translated = translate(exc)
    return translated.sqlstate if isinstance(translated, DatabaseError) else None


async def _locked(
    engine: AsyncEngine,
    step: Callable[[Connection], None],
    *,
    lock_timeout: float,
    wait: float,
    on_wait: WaitCallback | None,
) -> tuple[str | None, str | None]:
    """Run `step` in one transaction holding the migration lock, DDL under `lock_timeout`."""
    if lock_timeout <= 0 or wait <= 0:
        raise InvalidRequestError("lock_timeout and wait must be positive (seconds)")

    def run(connection: Connection) -> tuple[str | None, str | None]:
        _take_migration_lock(connection, wait, on_wait)
        _set_lock_timeout(connection, lock_timeout)
        before = _current(connection)
        try:
            step(connection)
        except DBAPIError as exc:
            if _sqlstate(exc) == LOCK_NOT_AVAILABLE:
                raise MigrationLockTimeout(
                    f"a migration could not lock a table within lock_timeout={lock_timeout:g}s (another "
                    "transaction is using it); nothing was applied, the schema stays at "
                    f"{before or 'base'} (retry when it is quiet, or raise --lock-timeout)",
                    sqlstate=LOCK_NOT_AVAILABLE,
                ) from exc
            raise
        return before, _current(connection)

    try:
        async with engine.begin() as conn:
            return await conn.run_sync(run)
    except PersistenceError:
        raise
    except AlembicError as exc:  # an unknown --revision, a revision the database is at but we lack
        raise InvalidRequestError(f"alembic: {exc}") from exc
    except DBAPIError as exc:
        raise_translated(exc)


async def upgrade_locked(
    engine: AsyncEngine,
    revision: str = "head",
    *,
    lock_timeout: float = 5.0,
    wait: float = 600.0,
    on_wait: WaitCallback | None = None,
) -> tuple[str | None, str | None]:
    """Upgrade to `revision` holding the migration lock; returns (before, after) as read under it.

    A second caller waits up to `wait` seconds (`on_wait` is told the holder's pid first), then finds
    nothing to do. Raises `MigrationLockTimeout` when either lock is not had in time."""
    return await _locked(
        engine,
        lambda c: command.upgrade(alembic_config(c), revision),
        lock_timeout=lock_timeout,
        wait=wait,
        on_wait=on_wait,
    )


async def rollback_one(
    engine: AsyncEngine,
    expected: str,
    *,
    lock_timeout: float = 5.0,
    wait: float = 600.0,
    on_wait: WaitCallback | None = None,
) -> tuple[str | None, str | None]:
    """Downgrade one revision from `expected` (the revision the caller showed and had confirmed).

    Refuses (`InvalidRequestError`, nothing done) if the database moved on in the meantime."""

    def step(connection: Connection) -> None:
        current = _current(connection)
        if current != expected:
            raise InvalidRequestError(
                f"the database is now at {current or 'base'}, not {expected}; nothing was rolled back"
            )
        command.downgrade(alembic_config(connection), "-1")

    return await _locked(engine, step, lock_timeout=lock_timeout, wait=wait, on_wait=on_wait)
