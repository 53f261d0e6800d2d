"""`persistence billing ...` run as a user would, over the seeded month of tests/ai_calls/cost_month.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.config import DatabaseConfig
from persistence.testing import ThrowawayPostgres
from tests.ai_calls.cost_month import PROVIDER, seed_month
from tests.processes import run_python


def persistence(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python(["-m", "persistence", "billing", *args], database_url=url)


@pytest.mark.commits
async def test_import_close_validate_and_accuracy(
    engine: AsyncEngine, pg: ThrowawayPostgres, fresh_database: DatabaseConfig, tmp_path: Path
) -> None:
    url = pg.server.url(fresh_database.database or "")
    month = await seed_month(engine)
    bill = tmp_path / "bill.json"
    rows = [
        {
            "provider": PROVIDER,
            "model": model,
            "day": day.isoformat(),
            "amount_usd": str(cost),
            "id": f"{model}/{day}",
        }
        for (model, day), cost in month.ledger.items()
    ]
    bill.write_text(json.dumps(rows))

    imported = persistence(url, "import", str(bill), "--late-window", f"{PROVIDER}=3")
    assert (imported.returncode, imported.stderr) == (0, ""), imported.stderr
    assert imported.stdout == "recorded 61 rows, 0 adjustments, 0 already known\n"

    closed = persistence(url, "close", "--now", "2026-12-05T00:00:00+00:00")
    assert closed.stdout == f"{PROVIDER} 2026-11: open -> closed\n", closed.stderr

    valid = persistence(url, "validate", "--provider", PROVIDER, "--period", "2026-11", "--json")
    assert valid.returncode == 0, valid.stderr
    report = json.loads(valid.stdout)
    assert (report["verdict"], report["final"], report["ledger_calls"]) == ("ok", True, 91)

    accuracy = persistence(url, "accuracy", "--start", "2026-11-01", "--end", "2026-12-01")
    assert accuracy.returncode == 1, accuracy.stderr  # one call on the 10th is $0.25 off
    assert "91 calls, 1 over tolerance" in accuracy.stdout
    assert f"{PROVIDER}/acme-large 2026-11-10: 1 calls" in accuracy.stdout

    bad = persistence(url, "validate", "--provider", PROVIDER, "--period", "November")
    assert bad.returncode == 2 and "not a month" in bad.stderr
