"""Seed 004's three usage examples, run as written (only `from vital_shared` -> `from persistence`).

They run in order in one namespace, as in a notebook (the second and third use the first's
`timescale`), against the session's embedded server; the process-wide recorder is first made on
the test's engine, so `get_timescale_integration()` in the example returns it.
"""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import get_timescale_integration
from tests.events.conftest import scalar

BASIC_USAGE = """
from persistence import (
    get_timescale_integration,
    PlatformEvent,
    EventCategory
)

# Get singleton instance
timescale = get_timescale_integration()

# Log user query
await timescale.log_platform_event(
    PlatformEvent(
        tenant_id="tenant-123",
        user_id="user-456",
        event_type="user_query",
        event_category=EventCategory.USER_BEHAVIOR,
        event_data={
            "query": "What is diabetes?",
            "mode": "1",
            "query_length": 18
        }
    )
)
"""

COST_TRACKING = """
from persistence import CostEvent, CostType, ServiceProvider

# Track LLM cost
await timescale.log_cost_event(
    CostEvent(
        tenant_id="tenant-123",
        user_id="user-456",
        cost_type=CostType.LLM,
        cost_usd=0.012,
        service=ServiceProvider.OPENAI,
        quantity=300,  # tokens
        service_tier="gpt-4",
        metadata={
            "model": "gpt-4",
            "prompt_tokens": 100,
            "completion_tokens": 200
        }
    )
)

# Get tenant daily cost
daily_cost = await timescale.get_tenant_daily_cost("tenant-123")
print(f"Today's cost: ${daily_cost:.2f}")
"""

AGENT_EXECUTION = """
from persistence import AgentExecution

# Record successful execution
await timescale.log_agent_execution(
    AgentExecution(
        tenant_id="tenant-123",
        user_id="user-456",
        agent_id="ask-expert-v1",
        agent_type="ask_expert",
        execution_time_ms=2100,
        success=True,
        quality_score=0.92,
        citation_accuracy=0.96,
        hallucination_detected=False,
        cost_usd=0.012,
        total_tokens=300
    )
)

# Get agent success rate (last 24h)
success_rate = await timescale.get_agent_success_rate(
    "ask-expert-v1",
    "tenant-123",
    hours=24
)
print(f"Success rate: {success_rate:.1f}%")
"""


async def run_example(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute an example with top-level `await` (as `python -m asyncio` would) in `namespace`."""
    body = textwrap.indent(source, "    ") + "\n    globals().update(locals())\n"
    exec(compile(f"async def __example():\n{body}", "<seed 004 example>", "exec"), namespace)  # noqa: S102
    await namespace["__example"]()
    return namespace


async def test_seed_004_examples_run_as_written(
    engine: AsyncEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = get_timescale_integration(engine, spool_dir=tmp_path / "spool")
    namespace: dict[str, Any] = {}
    await run_example(BASIC_USAGE, namespace)
    assert namespace["timescale"] is recorder
    await run_example(COST_TRACKING, namespace)
    assert namespace["daily_cost"] == Decimal("0.012")
    await run_example(AGENT_EXECUTION, namespace)
    assert namespace["success_rate"] == 100.0
    assert capsys.readouterr().out.splitlines() == ["Today's cost: $0.01", "Success rate: 100.0%"]

    await recorder.flush_all()
    event = "SELECT event_data->>'query' FROM analytics.platform_events WHERE tenant_id = 'tenant-123'"
    assert await scalar(engine, event) == "What is diabetes?"
    cost = "SELECT cost_usd FROM analytics.tenant_cost_events WHERE tenant_id = 'tenant-123'"
    assert await scalar(engine, cost) == Decimal("0.012")
    run = "SELECT quality_score FROM analytics.agent_executions WHERE agent_id = 'ask-expert-v1'"
    assert await scalar(engine, run) == Decimal("0.92")
    stats = await recorder.close()
    assert (stats.queued, stats.written, stats.spooled, stats.rejected, stats.dropped) == (3, 3, 0, 0, 0)
