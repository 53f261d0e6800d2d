"""health(): connectivity, latency, version, pool, schema at head / behind head; the `health` command."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import ServiceHealthRepository, cli, migrations
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.observe.health import health
from persistence.testing import ThrowawayPostgres
from persistence.testing.database import free_port
from tests.processes import run_python


@pytest.mark.commits
async def test_health_at_head_then_behind_head_after_downgrade(engine: AsyncEngine) -> None:
    report = await health(engine)
    assert report.healthy and report.connected and report.error is None
    assert report.schema.state == "at head"
    assert report.schema.current == report.schema.head == migrations.head_revision()
    assert report.latency_ms is not None and report.latency_ms > 0
    assert report.server_version is not None and report.server_version[0].isdigit()
    assert report.database == engine.url.database
    assert report.pool is not None and report.pool.size == 5 and report.pool.in_use == 0

    await migrations.downgrade(engine, "-1")

    behind = await health(engine)
    assert behind.connected and not behind.healthy
    assert behind.schema.state == "behind head"
    assert behind.schema.behind == 1
    assert behind.schema.head == report.schema.head and behind.schema.current != behind.schema.head
    assert behind.error == "schema behind head"


async def test_unreachable_database_is_reported_not_raised() -> None:
    config = DatabaseConfig(host="127.0.0.1", port=free_port(), database="x", user="u", connect_timeout=2)
    engine = build_engine(config)
    try:
        report = await health(engine, timeout=10)
    finally:
        await engine.dispose()
    assert not report.healthy and not report.connected
    assert report.schema.state == "unknown"
    assert report.error is not None and "refused" in report.error.lower()


def run_health(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python(["-m", "persistence", "health", *args], database_url=url)


@pytest.mark.commits
async def test_health_command_lists_stale_instances_and_fails_when_behind_head(
    pg: ThrowawayPostgres, fresh_database: DatabaseConfig, engine: AsyncEngine
) -> None:
    services = ServiceHealthRepository(engine)
    await services.heartbeat("verifier", "alive-1")
    stale = await services.heartbeat("consensus", "gone-7")
    await services.update(stale.id, last_heartbeat=datetime.now(UTC) - timedelta(hours=2))
    url = pg.server.url(fresh_database.database or "")

    ok = run_health(url, "--stale-after", "600")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "status   : healthy" in ok.stdout
    assert "schema   : at head" in ok.stdout
    assert "consensus/gone-7" in ok.stdout and "alive-1" not in ok.stdout

    as_json = json.loads(run_health(url, "--json").stdout)
    assert as_json["healthy"] is True
    assert [s["instance_id"] for s in as_json["stale"]] == ["gone-7"]
    assert as_json["pool"]["size"] == 20  # DatabaseConfig default

    await migrations.downgrade(engine, "-1")
    behind = run_health(url)
    assert behind.returncode == 1
    assert "UNHEALTHY (schema behind head)" in behind.stdout
    assert "behind head" in behind.stdout


def test_health_command_exits_non_zero_when_the_database_is_unreachable() -> None:
    out = run_health(f"postgresql://u:pw-secret-9@127.0.0.1:{free_port()}/x", "--timeout", "10")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "UNHEALTHY" in out.stdout and "refused" in out.stdout.lower()
    assert "pw-secret-9" not in out.stdout + out.stderr


def embedded_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: Path, port: int = 5432) -> None:
    """The environment of a developer with no DATABASE_URL: `persistence` means the embedded server."""
    monkeypatch.chdir(tmp_path)  # no .env
    for name in [n for n in os.environ if n.startswith(("DB_", "DATABASE_URL", "PERSISTENCE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PERSISTENCE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PERSISTENCE_PORT", str(port))


def test_health_reports_a_stopped_embedded_server_instead_of_starting_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "postgres"
    embedded_only(monkeypatch, tmp_path, data_dir)
    assert cli.main(["health"]) == 1
    out = capsys.readouterr().out
    assert "database : the embedded local PostgreSQL" in out
    assert "UNHEALTHY (embedded PostgreSQL is stopped" in out
    assert "schema   : unknown (code head " in out and "None" not in out
    assert not data_dir.exists() or not any(data_dir.iterdir())  # nothing was initialised or started

    assert cli.main(["health", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["healthy"], report["connected"]) == (False, False)
    assert report["error"].startswith("embedded PostgreSQL is stopped")


@pytest.mark.commits
def test_health_checks_a_running_embedded_server(
    pg: ThrowawayPostgres,
    db_config: DatabaseConfig,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    embedded_only(monkeypatch, tmp_path, pg.server.data_dir, pg.port)
    monkeypatch.setenv("PERSISTENCE_DATABASE", db_config.database or "")
    assert cli.main(["health"]) == 0
    out = capsys.readouterr().out
    assert "status   : healthy" in out and "schema   : at head" in out
