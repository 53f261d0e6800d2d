"""`python scripts/run_migration.py [run|status|rollback]` end to end, on real databases."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.engine import build_engine
from persistence.migrations import MIGRATION_LOCK, head_revision
from persistence.testing import ThrowawayPostgres
from tests.processes import ROOT, run_python

SCRIPT = str(ROOT / "scripts" / "run_migration.py")
HEAD = head_revision()


def _revision_id(path: Path) -> str:
    found = re.search(r'^revision: str = "([^"]+)"', path.read_text(), re.MULTILINE)
    assert found is not None, path
    return found[1]


# Every revision id in order, from the files (a new revision must not need this test edited).
REVISIONS = sorted(_revision_id(path) for path in (ROOT / "alembic" / "versions").glob("[0-9]*.py"))


def run_script(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    # stdin is a pipe, never the developer's terminal: rollback must not prompt here.
    return run_python([SCRIPT, *args], database_url=url, timeout=300, stdin="")


@dataclass
class Empty:
    url: str
    engine: AsyncEngine

    async def revisions(self) -> list[str]:
        async with self.engine.connect() as conn:
            if await conn.scalar(text("SELECT to_regclass('alembic_version')")) is None:
                return []
            rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
            return [str(v) for (v,) in rows]


@pytest.fixture
async def empty(pg: ThrowawayPostgres) -> AsyncIterator[Empty]:
    name = pg.empty_database("run_migration_probe")
    engine = build_engine(pg.config(name), pooled=False)
    try:
        yield Empty(pg.server.url(name), engine)
    finally:
        await engine.dispose()
        pg.drop(name)


async def waiting_for_advisory_locks(conn: AsyncConnection, count: int) -> None:
    """Until `count` backends queue for an advisory lock (bounded by the caller's timeout)."""
    while True:
        waiting = await conn.scalar(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        )
        if waiting == count:
            return
        await asyncio.sleep(0.05)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_help_tells_the_actions_flags_and_exit_codes() -> None:
    out = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, check=True)
    for word in ("run", "status", "rollback", "--lock-timeout", "--wait", "--yes", "advisory lock"):
        assert word in out.stdout
    assert "exit 0 when up to date, 3 when migrations are pending" in " ".join(out.stdout.split())
    assert out.stderr == ""


@pytest.mark.commits
async def test_two_migrators_at_once_one_migrates_the_other_waits_then_finds_nothing(empty: Empty) -> None:
    async with empty.engine.connect() as holder:
        # Hold the migrators' lock until both are queued on it, so they really run at the same time.
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        runs = [asyncio.create_task(asyncio.to_thread(run_script, empty.url)) for _ in range(2)]
        await asyncio.wait_for(waiting_for_advisory_locks(holder, 2), timeout=120)
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
        await holder.commit()
        outs = await asyncio.gather(*runs)
    for out in outs:
        assert out.returncode == 0, out.stderr
        assert "waiting for another migration (server pid " in out.stderr
        assert "Traceback" not in out.stderr
    stdouts = sorted(out.stdout for out in outs)
    assert stdouts == sorted(
        [f"schema migrated base (empty) -> {HEAD}\n", f"schema already at {HEAD}: nothing to do\n"]
    )
    assert await empty.revisions() == [HEAD]


@pytest.mark.commits
async def test_a_migrator_that_waits_too_long_gives_up_with_one_clear_line(empty: Empty) -> None:
    async with empty.engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        out = await asyncio.to_thread(run_script, empty.url, "run", "--wait", "0.2")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    waiting, error = out.stderr.splitlines()
    assert waiting.startswith("waiting for another migration (server pid ")
    assert error == (
        "error: another migration still held the migration lock after 0.2s; nothing was applied "
        "(wait for it to finish, or raise --wait)"
    )
    assert out.stdout == ""
    assert await empty.revisions() == []


@pytest.mark.commits
async def test_status_before_and_after_a_run(empty: Empty) -> None:
    before = run_script(empty.url, "status")
    assert before.returncode == 3, before.stderr
    lines = before.stdout.splitlines()
    assert lines[:3] == ["current: base (empty)", f"head:    {HEAD}", f"pending: {len(REVISIONS)}"]
    assert [line.split()[0] for line in lines[3:]] == REVISIONS
    assert REVISIONS[-1] == HEAD
    assert "0003  default vendor prices" in before.stdout
    assert before.stderr == ""

    unknown = run_script(empty.url, "run", "--revision", "nope")
    assert unknown.returncode == 1
    assert one_line_error(unknown).startswith("error: alembic: ")
    assert await empty.revisions() == []

    assert run_script(empty.url, "run", "--revision", "0004").returncode == 0
    partly = run_script(empty.url, "status")
    assert partly.returncode == 3
    assert partly.stdout.splitlines()[:3] == [
        "current: 0004",
        f"head:    {HEAD}",
        f"pending: {len(REVISIONS) - 4}",
    ]

    assert run_script(empty.url).returncode == 0  # `run` is the default
    after = run_script(empty.url, "status")
    assert after.returncode == 0
    assert after.stdout == f"current: {HEAD}\nhead:    {HEAD}\nup to date\n"


@pytest.mark.commits
async def test_rollback_says_what_it_drops_goes_one_back_and_run_returns_to_head(empty: Empty) -> None:
    assert run_script(empty.url, "run", "--revision", "0005").returncode == 0

    refused = run_script(empty.url, "rollback")  # stdin is not a terminal and no --yes
    assert refused.returncode == 2
    assert one_line_error(refused) == (
        "error: rollback asks for confirmation and stdin is not a terminal; pass --yes"
    )
    assert await empty.revisions() == ["0005"]

    back = run_script(empty.url, "rollback", "--yes")
    assert back.returncode == 0, back.stderr
    assert back.stdout.startswith("rollback 0005 -> 0004: undoes 'ai_call_pending_batches: ")
    assert "its downgrade removes:\n  - table ai_call_pending_batches\n" in back.stdout
    assert back.stdout.endswith("schema rolled back 0005 -> 0004\n")
    assert await empty.revisions() == ["0004"]

    status = run_script(empty.url, "status")
    assert status.returncode == 3
    assert f"pending: {len(REVISIONS) - 4}\n  0005  ai_call_pending_batches" in status.stdout

    again = run_script(empty.url, "run")
    assert again.returncode == 0
    assert again.stdout == f"schema migrated 0004 -> {HEAD}\n"
    assert again.stderr == back.stderr == ""  # nothing but the command's own output
    assert await empty.revisions() == [HEAD]


@pytest.mark.commits
async def test_a_table_locked_by_a_long_transaction_fails_the_run_with_nothing_applied(empty: Empty) -> None:
    assert run_script(empty.url, "run", "--revision", "0003").returncode == 0
    async with empty.engine.connect() as reader:
        # A long read of the table 0004 alters: its ALTER COLUMN ... TYPE needs ACCESS EXCLUSIVE.
        await reader.execute(text("SELECT count(*) FROM reconciliation_reports"))
        out = await asyncio.to_thread(run_script, empty.url, "run", "--lock-timeout", "0.2")
        await reader.rollback()
    assert out.returncode == 1
    assert one_line_error(out) == (
        "error: a migration could not lock a table within lock_timeout=0.2s (another transaction is "
        "using it); nothing was applied, the schema stays at 0003 (retry when it is quiet, or raise "
        "--lock-timeout)"
    )
    assert out.stdout == ""
    assert await empty.revisions() == ["0003"]
    assert run_script(empty.url, "run").returncode == 0
    assert await empty.revisions() == [HEAD]


def test_unreachable_database_is_one_line_without_the_password() -> None:
    for action in ("run", "status", "rollback"):
        out = run_script("postgresql://someone:topsecret-pw@127.0.0.1:1/none", action, "--yes")
        assert out.returncode == 1
        assert one_line_error(out).startswith("error: cannot connect to PostgreSQL at 127.0.0.1:1/none")
        assert "topsecret-pw" not in out.stdout + out.stderr


def rollback_at_a_terminal(url: str, answer: str) -> subprocess.CompletedProcess[str]:
    """`rollback` with a pseudo-terminal as stdin (stdout/stderr captured), typing `answer`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DB_")}
    env["DATABASE_URL"] = url
    main, child = pty.openpty()
    try:
        os.write(main, answer.encode() + b"\n")  # buffered by the terminal until input() reads it
        return subprocess.run(
            [sys.executable, SCRIPT, "rollback"],
            cwd=ROOT,
            env=env,
            stdin=child,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(child)
        os.close(main)


@pytest.mark.commits
async def test_rollback_at_a_terminal_asks_and_only_yes_rolls_back(empty: Empty) -> None:
    assert run_script(empty.url, "run", "--revision", "0002").returncode == 0

    declined = await asyncio.to_thread(rollback_at_a_terminal, empty.url, "n")
    assert declined.returncode == 1, declined.stderr
    assert "its downgrade removes:\n" in declined.stdout and "  - table vendor_prices\n" in declined.stdout
    assert declined.stdout.endswith("roll back 0002? [y/N] ")
    assert declined.stderr == "rollback cancelled; nothing changed\n"
    assert await empty.revisions() == ["0002"]

    accepted = await asyncio.to_thread(rollback_at_a_terminal, empty.url, "y")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.endswith("schema rolled back 0002 -> 0001\n")
    assert await empty.revisions() == ["0001"]
