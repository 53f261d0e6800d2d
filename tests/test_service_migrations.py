"""A service's own Alembic revisions beside ours: one upgrade runs both, ours first, one database.

The service is a directory made in tmp_path, as a user would lay it out: alembic.ini, migrations/env.py
(one call into `persistence.migration_env`) and one revision whose table has a foreign key to our
`claims`, on its own branch that `depends_on` our head.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy.exc
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.engine import build_engine
from persistence.errors import ConfigurationError
from persistence.migrations import head_revision, script_location
from persistence.observe.health import health
from persistence.testing import ThrowawayPostgres
from tests.processes import ROOT, run_python

ALEMBIC = [sys.executable, "-m", "alembic"]
HEAD = head_revision() or "none"
VERSIONS = (script_location() / "versions").resolve()

ENV_PY = """
import uuid

from sqlalchemy import ForeignKey, MetaData, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from persistence.migration_env import run_migrations
from persistence.models import Claim


class ServiceBase(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Note(ServiceBase):
    __tablename__ = "service_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    claim_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Claim.id, ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(Text)


run_migrations(ServiceBase.metadata)
"""

REVISION = '''"""service notes

Revision ID: s001
"""

import sqlalchemy as sa
from alembic import op

revision = "s001"
down_revision = None
branch_labels = ("notes",)
depends_on = "{ours}"


def upgrade() -> None:
    op.create_table(
        "service_notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("claim_id", sa.Uuid(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["claim_id"], ["claims.id"], ondelete="CASCADE", name="fk_service_notes_claim_id_claims"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_service_notes"),
    )


def downgrade() -> None:
    op.drop_table("service_notes")
'''


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """A service directory: alembic.ini, migrations/env.py, one revision that references our claims."""
    migrations = tmp_path / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text(textwrap.dedent(ENV_PY))
    (migrations / "script.py.mako").write_text((script_location() / "script.py.mako").read_text())
    (migrations / "versions" / "s001_service_notes.py").write_text(REVISION.format(ours=head_revision()))
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = os\n"
        f"version_locations = %(here)s/migrations/versions{os.pathsep}{script_location() / 'versions'}\n"
    )
    return ini


@dataclass
class Database:
    url: str
    engine: AsyncEngine

    async def value(self, sql: str) -> object:
        async with self.engine.connect() as conn:
            return await conn.scalar(text(sql))

    async def tables(self) -> set[str]:
        names = await self.value(
            "SELECT coalesce(array_agg(tablename::text), '{}') FROM pg_tables WHERE schemaname = 'public'"
        )
        assert isinstance(names, list)
        return set(names)


@pytest.fixture
async def empty(pg: ThrowawayPostgres) -> AsyncIterator[Database]:
    name = pg.empty_database("service_migrations_probe")
    engine = build_engine(pg.config(name), pooled=False)
    try:
        yield Database(pg.server.url(name), engine)
    finally:
        await engine.dispose()
        pg.drop(name)


def alembic(url: str, ini: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python(
        ["-m", "alembic", "-c", str(ini), *args],
        database_url=url,
        extra={"PYTHONPATH": str(ROOT)},
        timeout=300,
    )


async def test_one_upgrade_runs_ours_then_the_services_and_rollback_steps_back_its_branch(
    empty: Database, service: Path
) -> None:
    before, after = await migrations.upgrade(empty.engine, service=service)
    assert (before, after) == (None, "s001")  # our head stands behind the branch that depends on it
    assert {"claims", "service_notes", "alembic_version"} <= await empty.tables()
    assert await migrations.current_revision(empty.engine, service=service) == HEAD
    status = await migrations.migration_status(empty.engine, service=service)
    assert status.up_to_date and status.pending == ()
    assert set(status.heads) == {HEAD, "s001"} and status.stamped == ("s001",)
    report = await health(empty.engine, service=service)
    assert report.healthy and report.schema.current == HEAD, report
    # The service's foreign key reaches our table.
    with pytest.raises(sqlalchemy.exc.IntegrityError, match="fk_service_notes_claim_id_claims"):
        async with empty.engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO service_notes (claim_id, body) VALUES (gen_random_uuid(), 'x')")
            )

    assert await migrations.rollback_candidate(empty.engine, service=service) == "s001"
    plan = migrations.rollback_plan("s001", service=service)
    assert plan.drops == ("table service_notes",)
    assert await migrations.rollback_one(empty.engine, "s001", service=service) == ("s001", HEAD)
    tables = await empty.tables()
    assert "service_notes" not in tables and "claims" in tables
    status = await migrations.migration_status(empty.engine, service=service)
    assert [revision.id for revision in status.pending] == ["s001"] and not status.up_to_date
    assert status.current == HEAD

    # Our own status and schema check are unaffected by the service's branch.
    assert await migrations.upgrade(empty.engine, service=service) == (HEAD, "s001")
    assert await migrations.current_revision(empty.engine, service=service) == HEAD


async def test_an_empty_database_pends_every_revision_ours_first(empty: Database, service: Path) -> None:
    status = await migrations.migration_status(empty.engine, service=service)
    pending = [revision.id for revision in status.pending]
    assert pending[-1] == "s001" and pending[:-1] == [
        revision.id for revision in migrations.pending_revisions(None)
    ]


def test_the_alembic_command_upgrades_both_shows_both_and_downgrades_one_branch(
    empty: Database, service: Path
) -> None:
    up = alembic(empty.url, service, "upgrade", "head")  # one head per branch: "head" means all of them
    assert up.returncode == 0, up.stderr
    again = alembic(empty.url, service, "upgrade", "heads")
    assert again.returncode == 0, again.stderr
    current = alembic(empty.url, service, "current")
    assert "s001 (head)" in current.stdout and f"{HEAD} (effective head)" in current.stdout
    heads = alembic(empty.url, service, "heads")
    assert "s001 (notes) (head)" in heads.stdout, heads.stdout
    # Autogenerate in the service compares only its own tables: nothing to do, none of ours dropped.
    check = alembic(empty.url, service, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    down = alembic(empty.url, service, "downgrade", "notes@base")
    assert down.returncode == 0, down.stderr
    current = alembic(empty.url, service, "current")
    assert "s001" not in current.stdout and HEAD in current.stdout


def test_run_migration_script_takes_the_service_config(empty: Database, service: Path) -> None:
    script = str(ROOT / "scripts" / "run_migration.py")
    run = run_python([script, "run", "--alembic-config", str(service)], database_url=empty.url, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "-> s001" in run.stdout
    status = run_python([script, "status", "--alembic-config", str(service)], database_url=empty.url)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"current: {HEAD}" in status.stdout and "stamped: s001" in status.stdout
    rollback = run_python(
        [script, "rollback", "--yes", "--alembic-config", str(service)], database_url=empty.url, stdin=""
    )
    assert rollback.returncode == 0, rollback.stderr
    assert "rollback s001" in rollback.stdout and "table service_notes" in rollback.stdout
    status = run_python([script, "status", "--alembic-config", str(service)], database_url=empty.url)
    assert "pending: 1" in status.stdout and "s001" in status.stdout


def test_the_pytest_plugin_migrates_its_template_with_the_service_config(service: Path) -> None:
    """A service's own suite: `persistence_alembic_config` in its pytest.ini, nothing else."""
    project = service.parent
    (project / "pytest.ini").write_text(
        "[pytest]\npersistence_alembic_config = alembic.ini\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = session\nasyncio_default_test_loop_scope = session\n"
    )
    (project / "conftest.py").write_text('pytest_plugins = ["persistence.testing.pytest_plugin"]\n')
    (project / "test_notes.py").write_text(
        textwrap.dedent(
            """
            from sqlalchemy import text


            async def test_the_services_table_is_there(connection):
                assert await connection.scalar(text("SELECT to_regclass('service_notes')::text")) == (
                    "service_notes"
                )
            """
        )
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DB_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_notes.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


@pytest.mark.parametrize(
    "locations",
    [
        "",  # none given: the service's script_location/versions
        "path_separator = space\nversion_locations = %(here)s/migrations/versions persistence:_alembic/versions\n",
        f"path_separator = os\nversion_locations = %(here)s/migrations/versions{os.pathsep}{VERSIONS}\n",
    ],
)
def test_the_service_config_holds_its_revisions_and_ours_once(service: Path, locations: str) -> None:
    ini = service.parent / "other.ini"
    ini.write_text(f"[alembic]\nscript_location = %(here)s/migrations\n{locations}")
    config = migrations.alembic_config(service=ini)
    scripts = ScriptDirectory.from_config(config)
    assert set(scripts.get_heads()) == {HEAD, "s001"}
    assert [Path(p) for p in scripts.version_locations] == [
        service.parent / "migrations" / "versions",
        VERSIONS,
    ]


def test_a_missing_service_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no Alembic config file"):
        migrations.alembic_config(service=tmp_path / "nope.ini")
