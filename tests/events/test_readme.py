"""README's "Events" block, as written (its top-level awaits inside a coroutine)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.events.conftest import scalar

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_readme_events_section_runs(
    engine: AsyncEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    section = README.read_text().split("## Events\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    source = "async def snippet(engine, spool_dir):\n" + "".join(
        f"    {line}\n" for line in code.splitlines()
    )
    exec(source, namespace)  # noqa: S102 (our README)
    await namespace["snippet"](engine, tmp_path / "spool")
    cost, rate, stats = capsys.readouterr().out.splitlines()
    assert (Decimal(cost), float(rate)) == (Decimal("0.012"), 100.0)
    assert stats.startswith("BatchStats(") and "written=2" in stats
    assert (
        await scalar(engine, "SELECT count(*) FROM analytics.tenant_cost_events WHERE tenant_id = 'acme'")
        == 1
    )
