"""Run the Alembic migrations from code: plain upgrade/downgrade (the seeding script, the test template)
and the safe runs of `scripts/run_migration.py` / `persistence migrate` (advisory lock, lock_timeout).

Service migrations beside ours
------------------------------
A service keeps its own revisions in its own directory, as a separate branch of the same revision
graph and the same `alembic_version` table (Alembic's "multiple bases"). Its first revision has
`down_revision = None`, a branch label, and `depends_on` naming our revision it needs (our head when
it was written), so our revisions always run first; its env.py is `persistence.migration_env`'s
`run_migrations(ServiceBase.metadata)`. Every function here takes `service=` (the path of the
service's alembic.ini): its `version_locations` get ours added, "head" means every branch's head, and
a rollback steps back the service's branch first. With the `alembic` command, list both locations in
the ini and run `alembic upgrade heads` (plural: one command, every branch, in dependency order).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError as AlembicError
from alembic.util.pyfiles import coerce_resource_to_filename
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
from persistence.migration_drops import drops_of

_PACKAGE_DIR = Path(__file__).resolve().parent


def script_location() -> Path:
    """The migrations directory: shipped in the wheel, or the checkout's top-level `alembic/`."""
    for candidate in (_PACKAGE_DIR / "_alembic", _PACKAGE_DIR.parent / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise ConfigurationError("cannot find the Alembic migrations (alembic/env.py) next to the package")


ServiceConfig = str | os.PathLike[str]
"""The path of a service's alembic.ini (see the module docstring)."""


def alembic_config(connection: Connection | None = None, *, service: ServiceConfig | None = None) -> Config:
    """Our migrations; with `service`, the service's alembic.ini with our revisions added to its
    `version_locations` (after its own), so both branches form one graph."""
    if service is None:
        config = Config()
        config.set_main_option("script_location", str(script_location()))
    else:
        config = _service_config(Path(service))
    config.attributes["configure_logging"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _service_config(path: Path) -> Config:
    if not path.is_file():
        raise ConfigurationError(f"no Alembic config file at {path}")
    config = Config(str(path))
    given = config.get_version_locations_list()
    if not given:
        script_dir = config.get_alembic_option("script_location")
        if not script_dir:
            raise ConfigurationError(f"{path}: the [alembic] section sets no script_location")
        given = [str(Path(script_dir) / "versions")]
    ours = (script_location() / "versions").resolve()
    # `persistence:_alembic/versions` (where the wheel ships ours) names ours even in a checkout.
    also_ours = {ours, (_PACKAGE_DIR / "_alembic" / "versions").resolve()}
    # Resolved ("package:dir" resources too), so they can be joined with the os separator; ours once, last.
    locations = [str(_resolved(loc)) for loc in given if _resolved(loc) not in also_ours]
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join([*locations, str(ours)]).replace("%", "%%"))
    return config


def _resolved(location: str) -> Path:
    try:
        return Path(coerce_resource_to_filename(location)).resolve()
    except (ModuleNotFoundError, ValueError, OSError):
        return Path(location)


def head_revision() -> str | None:
    """The head of the package's own migrations."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@functools.cache
def _package_revisions() -> tuple[str, ...]:
    """The package's revision ids, newest first (it has one linear branch)."""
    return tuple(script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def _stamped(connection: Connection) -> tuple[str, ...]:
    """The rows of `alembic_version`: one head per applied branch (none: never migrated)."""
    return tuple(MigrationContext.configure(connection).get_current_heads())


def _package_current(stamped: tuple[str, ...], scripts: ScriptDirectory | None) -> str | None:
    """Our revision in a database whose version rows may also hold a service's branch. A service
    revision that `depends_on` our newest stands in for it there, so that one is found through the
    service's graph (`scripts`)."""
    ours = _package_revisions()
    for revision in ours:
        if revision in stamped:
            return revision
    if not stamped:
        return None
    if scripts is None:
        return stamped[0]  # a revision this package does not know: reported as such by the callers
    applied = {script.revision for script in scripts.iterate_revisions(stamped, "base")}
    return next((revision for revision in ours if revision in applied), None)


def _current(connection: Connection, service: ServiceConfig | None = None) -> str | None:
    return _package_current(_stamped(connection), _scripts(service) if service is not None else None)


def _state(connection: Connection, service: ServiceConfig | None) -> str | None:
    """What a run reports as before/after: our revision; with a service, every branch's row."""
    if service is None:
        return _current(connection)
    return ", ".join(sorted(_stamped(connection))) or None


def current_of(connection: Connection, service: ServiceConfig | None = None) -> str | None:
    """The package's revision stamped in the connection's database (None: never migrated); pass the
    `service` config when a service's branch shares the database (its newest revision may stand for ours)."""
    return _current(connection, service)


async def current_revision(engine: AsyncEngine, *, service: ServiceConfig | None = None) -> str | None:
    """The package's revision in the engine's database (`service`: resolved through its branch too)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current, service)


async def current_heads(engine: AsyncEngine) -> tuple[str, ...]:
    """Every branch's revision stamped in the engine's database (ours, and a service's if any)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_stamped)


def _destination(config: Config, revision: str) -> str:
    """ "head" means every branch's head when a service's branch is there ("heads" to Alembic)."""
    if revision == "head" and len(ScriptDirectory.from_config(config).get_heads()) > 1:
        return "heads"
    return revision


def _upgrade(connection: Connection, revision: str, service: ServiceConfig | None) -> None:
    config = alembic_config(connection, service=service)
    command.upgrade(config, _destination(config, revision))


async def upgrade(
    engine: AsyncEngine, revision: str = "head", *, service: ServiceConfig | None = None
) -> tuple[str | None, str | None]:
    """Migrate the engine's database to `revision` in one transaction; returns (before, after):
    our revision, or with `service` (whose branch is migrated too; "head": both, ours first) the
    `alembic_version` rows, comma separated."""

    def run(connection: Connection) -> tuple[str | None, str | None]:
        before = _state(connection, service)
        _upgrade(connection, revision, service)
        return before, _state(connection, service)

    async with engine.begin() as conn:
        return await conn.run_sync(run)


async def downgrade(engine: AsyncEngine, revision: str, *, service: ServiceConfig | None = None) -> None:
    """`revision` as Alembic takes it: "-1", "base", "<branch label>@base", "<revision>@-1", ..."""

    def run(connection: Connection) -> None:
        command.downgrade(alembic_config(connection, service=service), revision)

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
    """`current`/`head`: the package's revisions. With a service's branch, `stamped` holds the rows
    of `alembic_version` and `heads` every branch's head; `pending` covers every branch."""

    current: str | None
    head: str | None
    pending: tuple[RevisionInfo, ...]  # oldest first
    heads: tuple[str, ...] = ()
    stamped: tuple[str, ...] = ()

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head and not self.pending


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """What `rollback` would undo: the current revision and what its downgrade() removes."""

    revision: RevisionInfo
    drops: tuple[str, ...]  # e.g. "op.drop_table('x')" / "DROP TABLE x", read from the downgrade's source


def _scripts(service: ServiceConfig | None = None) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(service=service))


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


async def migration_status(engine: AsyncEngine, *, service: ServiceConfig | None = None) -> MigrationStatus:
    if service is None:
        current = await current_revision(engine)
        return MigrationStatus(current=current, head=head_revision(), pending=pending_revisions(current))
    scripts = _scripts(service)
    stamped = await current_heads(engine)
    for revision in stamped:
        _script(scripts, revision)  # an unknown revision is a ConfigurationError naming it
    applied = {script.revision for script in scripts.iterate_revisions(stamped, "base")} if stamped else set()
    in_order = reversed(list(scripts.iterate_revisions("heads", "base")))
    return MigrationStatus(
        current=_package_current(stamped, scripts),
        head=head_revision(),
        pending=tuple(_info(script) for script in in_order if script.revision not in applied),
        heads=tuple(scripts.get_heads()),
        stamped=stamped,
    )


async def rollback_candidate(engine: AsyncEngine, *, service: ServiceConfig | None = None) -> str | None:
    """The revision `rollback` undoes: the service's branch head when it has one applied, else ours."""
    if service is None:
        return await current_revision(engine)
    stamped = await current_heads(engine)
    theirs = [revision for revision in stamped if revision not in _package_revisions()]
    return theirs[0] if theirs else await current_revision(engine, service=service)


def rollback_plan(current: str | None, *, service: ServiceConfig | None = None) -> RollbackPlan:
    """What one step back from `current` undoes; `InvalidRequestError` on an empty database."""
    if current is None:
        raise InvalidRequestError("nothing to roll back: the database has no migrations applied")
    script = _script(_scripts(service), current)
    return RollbackPlan(revision=_info(script), drops=drops_of(script))


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
    service: ServiceConfig | None = None,
) -> tuple[str | None, str | None]:
    """Run `step` in one transaction holding the migration lock, DDL under `lock_timeout`."""
    if lock_timeout <= 0 or wait <= 0:
        raise InvalidRequestError("lock_timeout and wait must be positive (seconds)")

    def run(connection: Connection) -> tuple[str | None, str | None]:
        _take_migration_lock(connection, wait, on_wait)
        _set_lock_timeout(connection, lock_timeout)
        before = _state(connection, service)
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
        return before, _state(connection, service)

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
    service: ServiceConfig | None = None,
) -> tuple[str | None, str | None]:
    """Upgrade to `revision` holding the migration lock; returns (before, after) as read under it.

    A second caller waits up to `wait` seconds (`on_wait` is told the holder's pid first), then finds
    nothing to do. Raises `MigrationLockTimeout` when either lock is not had in time."""
    return await _locked(
        engine,
        lambda c: _upgrade(c, revision, service),
        lock_timeout=lock_timeout,
        wait=wait,
        on_wait=on_wait,
        service=service,
    )


async def rollback_one(
    engine: AsyncEngine,
    expected: str,
    *,
    lock_timeout: float = 5.0,
    wait: float = 600.0,
    on_wait: WaitCallback | None = None,
    service: ServiceConfig | None = None,
) -> tuple[str | None, str | None]:
    """Downgrade one revision from `expected` (the revision the caller showed and had confirmed;
    with `service`, a service revision from `rollback_candidate` steps back that branch only).

    Refuses (`InvalidRequestError`, nothing done) if the database moved on in the meantime."""

    def step(connection: Connection) -> None:
        if service is None:
            current = _current(connection)
            target = "-1"
        else:
            stamped = _stamped(connection)
            current = expected if expected in stamped else _current(connection, service)
            target = f"{expected}@-1"  # this branch only ("-1" is ambiguous with two heads)
        if current != expected:
            raise InvalidRequestError(
                f"the database is now at {current or 'base'}, not {expected}; nothing was rolled back"
            )
        command.downgrade(alembic_config(connection, service=service), target)

    return await _locked(engine, step, lock_timeout=lock_timeout, wait=wait, on_wait=on_wait, service=service)
