"""`persistence prices add|list|sync`, run as a user would."""

from __future__ import annotations

import json

import pytest

from persistence.config import DatabaseConfig
from persistence.testing import ThrowawayPostgres
from tests.test_cli import persistence


@pytest.mark.commits
async def test_prices_add_list_and_sync_say_what_they_did(
    pg: ThrowawayPostgres, fresh_database: DatabaseConfig
) -> None:
    url = pg.server.url(fresh_database.database or "")

    sync = persistence(url, "prices", "sync", "--json")
    assert (sync.returncode, sync.stderr) == (0, ""), sync.stderr
    report = json.loads(sync.stdout)
    assert (report["added"], report["changed"], report["rows_inserted"]) == (
        0,
        0,
        0,
    )  # loaded by revision 0010
    assert report["unchanged"] > 100 and report["source"].startswith("genai-prices ")

    add = persistence(
        url,
        "prices",
        "add",
        "acme",
        "acme-1",
        "--input",
        "1.5",
        "--output",
        "6",
        "--tenant",
        "vip",
        "--from",
        "2026-01-01",
    )
    assert (add.returncode, add.stderr) == (0, ""), add.stderr
    assert "acme/acme-1 (tenant vip) from 2026-01-01T00:00:00+00:00" in add.stdout

    listed = persistence(url, "prices", "list", "--provider", "acme", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (
        row["model"],
        row["tenant_id"],
        row["input_per_mtok"],
        row["cache_read_per_mtok"],
        row["source"],
    ) == (
        "acme-1",
        "vip",
        "1.500000",
        "1.500000",
        "manual",
    )

    table = persistence(url, "prices", "list", "--provider", "openai", "--model", "gpt-5")
    assert table.returncode == 0 and "gpt-5" in table.stdout and table.stdout.endswith("1 row(s)\n")

    bad = persistence(url, "prices", "add", "acme", "acme-1", "--input", "x", "--output", "1")
    assert bad.returncode == 2 and "not a number" in bad.stderr

    dry = persistence(url, "prices", "sync", "--dry-run")
    assert (
        dry.returncode == 0 and "0 model(s) added, 0 changed" in dry.stdout and "would change" in dry.stdout
    )
