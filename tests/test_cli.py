"""The `persistence` command's maintenance subcommands, run as a user would: they say what they did."""

from __future__ import annotations

import subprocess

import pytest

from persistence.config import DatabaseConfig
from persistence.testing import ThrowawayPostgres
from tests.processes import run_python


def persistence(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python(["-m", "persistence", *args], database_url=url)


@pytest.mark.commits
async def test_partitions_and_rollups_fold_print_what_they_did(
    pg: ThrowawayPostgres, fresh_database: DatabaseConfig
) -> None:
    url = pg.server.url(fresh_database.database or "")

    dry = persistence(url, "partitions", "--ahead", "3", "--dry-run")
    assert (dry.returncode, dry.stderr) == (0, ""), dry.stderr
    ledger = dry.stdout.split("analytics.", 1)[0]  # the event tables' lines follow the ledger's
    assert "  would create: " in ledger and "would create: nothing" not in ledger

    done = persistence(url, "partitions", "--ahead", "3")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    created = [line for line in done.stdout.splitlines() if line.startswith("  create: ")]
    assert created and created[0] != "  create: nothing" and "would" not in done.stdout

    assert "analytics.platform_events partitions: " in done.stdout

    again = persistence(url, "partitions", "--ahead", "3")
    assert "  create: nothing" in again.stdout.splitlines()  # the second run had nothing left to do
    assert again.stdout.count("  create: nothing") == 4  # ai_calls and the three event tables

    fold = persistence(url, "rollups", "fold")
    assert (fold.returncode, fold.stderr) == (0, ""), fold.stderr
    assert fold.stdout == "folded the usage of 0 calls into the hourly rollups\n"
