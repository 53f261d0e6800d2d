"""`ThrowawayPostgres`: the test server starts for root too, the way `PERSISTENCE_ROOT_METHOD` says."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from persistence.embedded import root_runner
from persistence.errors import EmbeddedServerError
from persistence.testing import ThrowawayPostgres


def _real_uid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("\nUid:", 1)[1].split()[0])


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="checks how the test server leaves root (setpriv), so it must run as root, as CI does",
)
@pytest.mark.parametrize("method", ["setpriv", "unshare"])
async def test_as_root_the_throwaway_server_leaves_root_as_configured(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        runner = root_runner("setpriv" if method == "setpriv" else "unshare")
    except EmbeddedServerError as exc:
        pytest.skip(f"{method} does not work on this machine: {exc}")
    monkeypatch.setenv("PERSISTENCE_ROOT_METHOD", method)
    pg = ThrowawayPostgres()
    pg.start()
    try:
        pid = pg.server.status().pid
        assert pid is not None
        real_uid = _real_uid(pid)
        assert real_uid == runner.uid
        assert (real_uid == pwd.getpwnam("nobody").pw_uid) is (method == "setpriv")
        await pg.create_migrated_template()  # the migrated-template machinery works the same way
        name = pg.clone()
        assert pg.server.psql("SELECT current_database();", database=name).strip() == name
    finally:
        pg.stop()
