"""Seed 000's monitoring queries: rows today, ledger size, quiet hours (zero-call hours included), reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    HourlyCount,
    InvalidRequestError,
    ledger_health,
    quiet_hours,
    recent_reports,
    rows_today,
    table_size_bytes,
)
from tests.ai_calls.ledger_rows import insert_rows, scalar

NOW = datetime(2026, 11, 5, 9, 30, tzinfo=UTC)


def call(at: datetime, n: int = 0) -> dict[str, Any]:
    return {
        "created_at": at,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": Decimal("0.000150"),
        "request_id": f"m-{at.isoformat()}-{n}",
    }


async def test_rows_today_and_size(engine: AsyncEngine) -> None:
    midnight = NOW.replace(hour=0, minute=0)
    rows = [call(midnight - timedelta(seconds=1))]  # yesterday
    rows += [call(midnight + timedelta(minutes=i)) for i in range(7)]
    rows += [call(NOW + timedelta(minutes=5))]  # after `now`: not yet
    await insert_rows(engine, rows)
    assert await rows_today(engine, now=NOW) == 7
    # The same instant seen from another zone is the same UTC day.
    assert await rows_today(engine, now=NOW.astimezone(ZoneInfo("Asia/Tokyo"))) == 7
    size = await table_size_bytes(engine)
    relkind = await scalar(engine, "SELECT relkind::text FROM pg_class WHERE oid = 'ai_calls'::regclass")
    if relkind == "p":  # partitioned: the seed's pg_total_relation_size('ai_calls') says 0
        raw = "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('ai_calls')"
    else:
        raw = "SELECT pg_total_relation_size('ai_calls')"
    assert size == await scalar(engine, raw) > 0
    health = await ledger_health(engine, now=NOW)
    assert health.rows_today == 7 and health.table_size_bytes == size
    assert health.table_size.endswith(("kB", "bytes", "MB"))


async def test_quiet_hours_include_hours_without_calls(engine: AsyncEngine) -> None:
    hour = NOW.replace(minute=0)
    rows = []
    for back in range(1, 7):  # the six whole hours before NOW's hour
        start = hour - timedelta(hours=back)
        count = {1: 12, 2: 3, 3: 0, 4: 10, 5: 9, 6: 11}[back]
        rows += [call(start + timedelta(minutes=m), m) for m in range(count)]
    rows += [call(hour + timedelta(minutes=1))]  # the unfinished hour is not judged
    await insert_rows(engine, rows)
    quiet = await quiet_hours(engine, hours=6, now=NOW)
    assert quiet == [
        HourlyCount(hour - timedelta(hours=5), 9),
        HourlyCount(hour - timedelta(hours=3), 0),
        HourlyCount(hour - timedelta(hours=2), 3),
    ]
    assert await quiet_hours(engine, hours=6, min_calls=1, now=NOW) == [
        HourlyCount(hour - timedelta(hours=3), 0)
    ]
    assert len(await quiet_hours(engine, hours=24, now=NOW)) == 24 - 3  # 18 empty hours + 3 quiet


async def test_bad_arguments(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError):
        await rows_today(engine, now=datetime(2026, 11, 5))  # noqa: DTZ001
    with pytest.raises(InvalidRequestError):
        await quiet_hours(engine, min_calls=0)
    with pytest.raises(InvalidRequestError):
        await recent_reports(engine, limit=0)


async def test_recent_reports_newest_first(engine: AsyncEngine) -> None:
    from sqlalchemy import insert

    from persistence.models import ReconciliationReport
    from persistence.testing.factories import ReconciliationReportFactory

    reports = [ReconciliationReportFactory.build() for _ in range(9)]
    columns = ReconciliationReport.__table__.columns.keys()
    async with engine.begin() as conn:
        await conn.execute(
            insert(ReconciliationReport),
            [{c: getattr(r, c) for c in columns if getattr(r, c) is not None} for r in reports],
        )
    recent = await recent_reports(engine)
    assert len(recent) == 7
    assert [r.report_date for r in recent] == sorted((r.report_date for r in reports), reverse=True)[:7]
    assert {r.source for r in recent} == {"revenium"}
