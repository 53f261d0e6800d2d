"""Reconciliation against a fake metering vendor on 127.0.0.1 (must-show 1) and the report it files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import (
    HttpUsageSource,
    InvalidRequestError,
    Reconciler,
    ReconciliationResult,
    UsageSourceError,
    reconcile,
)
from tests.ai_calls.fake_vendor import API_KEY, FakeVendor, fake_vendor
from tests.ai_calls.ledger_rows import END, START, scalar, seed_ledger, vendor_payload


@pytest.fixture
def vendor() -> Iterator[FakeVendor]:
    with fake_vendor() as v:
        yield v


def http_source(vendor: FakeVendor, **kw: object) -> HttpUsageSource:
    return HttpUsageSource(vendor.url, API_KEY, backoff=0, **kw)  # type: ignore[arg-type]


async def test_pass_at_1pct_fail_at_3pct_report_saved_and_replaced(
    engine: AsyncEngine, vendor: FakeVendor
) -> None:
    seeded = await seed_ledger(engine)
    alerts: list[ReconciliationResult] = []
    reconciler = Reconciler(engine, http_source(vendor), alert=alerts.append)

    vendor.usage = vendor_payload(seeded, short_pct=1)
    passed = await reconciler.reconcile(START, END)
    assert passed.status == "PASS" and passed.passed
    assert passed.ours_calls == seeded.calls == 1000
    assert passed.vendor_calls == 990
    assert passed.variance_pct == Decimal("1.0000")
    assert passed.cost_variance_pct == Decimal("1.0000")
    assert passed.ours_cost_usd == seeded.cost  # exact Decimal, to the micro-dollar
    assert passed.missing_calls == 10
    assert [line.status for line in passed.lines] == ["matched"] * 3  # total, anthropic, openai
    assert alerts == []
    request = vendor.requests[-1]
    assert request["authorization"] == f"Bearer {API_KEY}"
    assert request["query"] == {"start_date": START.isoformat(), "end_date": END.isoformat()}

    sql = "SELECT count(*) FROM reconciliation_reports"
    row = (
        "SELECT id, status, variance_pct, total_cost_usd, revenium_calls, source FROM reconciliation_reports"
    )
    assert await scalar(engine, sql) == 1
    raw_sum = await scalar(
        engine,
        "SELECT sum(cost_usd) FROM ai_calls WHERE created_at >= :s AND created_at < :e",
        s=START,
        e=END,
    )
    async with engine.connect() as conn:
        from sqlalchemy import text

        saved = (await conn.execute(text(row))).one()
    assert saved == (passed.id, "PASS", Decimal("1.0000"), raw_sum, 990, "127.0.0.1")

    vendor.usage = vendor_payload(seeded, short_pct=3)
    failed = await reconciler.reconcile(START, END)
    assert failed.status == "FAIL"
    assert failed.variance_pct == Decimal("3.0000")
    assert {line.status for line in failed.lines} == {"amount_mismatch"}
    assert alerts == [failed]  # called once, on FAIL only
    assert failed.id == passed.id  # the same report, replaced
    assert await scalar(engine, sql) == 1
    assert await scalar(engine, "SELECT status FROM reconciliation_reports") == "FAIL"
    assert await scalar(engine, "SELECT variance_pct FROM reconciliation_reports") == Decimal("3.0000")
    lines = await scalar(engine, "SELECT lines FROM reconciliation_reports")
    assert [(line["level"], line["provider"], line["status"]) for line in lines] == [
        ("total", None, "amount_mismatch"),
        ("provider", "anthropic", "amount_mismatch"),
        ("provider", "openai", "amount_mismatch"),
    ]


async def test_async_alert_hook_and_one_report_per_source(engine: AsyncEngine, vendor: FakeVendor) -> None:
    seeded = await seed_ledger(engine)
    vendor.usage = vendor_payload(seeded, short_pct=3)
    called: list[str] = []

    async def alert(result: ReconciliationResult) -> None:
        called.append(result.source)

    first = await reconcile(engine, http_source(vendor, name="vendor-a"), START, END, alert=alert)
    second = await reconcile(engine, http_source(vendor, name="vendor-b"), START, END, alert=alert)
    assert called == ["vendor-a", "vendor-b"]
    assert first.id != second.id
    assert await scalar(engine, "SELECT count(*) FROM reconciliation_reports") == 2
    # A looser gate passes the same numbers, and replaces vendor-a's report.
    third = await reconcile(
        engine,
        http_source(vendor, name="vendor-a"),
        START,
        END,
        threshold_pct=Decimal("3.5"),
        alert=alert,
    )
    assert third.status == "PASS" and third.id == first.id
    assert called == ["vendor-a", "vendor-b"]
    assert await scalar(
        engine, "SELECT threshold_pct FROM reconciliation_reports WHERE id = :i", i=first.id
    ) == (Decimal("3.500"))


async def test_model_day_lines_are_classified(engine: AsyncEngine, vendor: FakeVendor) -> None:
    seeded = await seed_ledger(engine)
    body = vendor_payload(seeded, short_pct=0, lines=True)
    lines = body["lines"]
    dropped = lines.pop(0)  # a line we have and the vendor does not: ours_only
    lines[0] = {**lines[0], "calls": lines[0]["calls"] + 20}  # amount_mismatch
    lines.append(
        {"provider": "openai", "model": "o3", "date": "2026-11-02", "calls": 5, "cost": Decimal("0.5")}
    )
    del body["by_provider"]  # derived from the lines
    body["total_transactions"] = sum(line["calls"] for line in lines)
    body["total_cost"] = sum((line["cost"] for line in lines), Decimal(0))
    vendor.usage = body

    result = await reconcile(engine, http_source(vendor), START, END)
    day_lines = {
        (line.provider, line.model, line.day): line for line in result.lines if line.level == "model_day"
    }
    assert len(day_lines) == len(seeded.by_model_day) + 1
    key = (dropped["provider"], dropped["model"], date.fromisoformat(dropped["date"]))
    assert day_lines[key].status == "ours_only"
    assert day_lines[key].vendor_calls == 0
    assert day_lines[("openai", "o3", date(2026, 11, 2))].status == "vendor_only"
    mismatched = (lines[0]["provider"], lines[0]["model"], date.fromisoformat(lines[0]["date"]))
    assert day_lines[mismatched].status == "amount_mismatch"
    others = {
        k: v.status
        for k, v in day_lines.items()
        if k not in (key, mismatched, ("openai", "o3", date(2026, 11, 2)))
    }
    assert set(others.values()) == {"matched"}
    # Coverage: the vendor's calls we also have, line by line.
    covered = sum(min(v.ours_calls, v.vendor_calls) for v in day_lines.values())
    expected = (Decimal(covered) * 100 / Decimal(result.vendor_calls)).quantize(Decimal("0.001"))
    assert result.coverage_pct == expected < 100
    assert result.status == "FAIL"  # a provider line is off by more than 2%


async def test_retries_5xx_then_succeeds(vendor: FakeVendor) -> None:
    vendor.usage = {"total_transactions": 3, "total_cost": Decimal("0.000003")}
    vendor.fail_next = 2
    source = http_source(vendor, retries=3)
    usage = await source.fetch(START, END)
    assert source.attempts == 3 and len(vendor.requests) == 3
    assert usage.total_calls == 3 and usage.total_cost_usd == Decimal("0.000003")
    assert usage.by_provider is None and usage.lines is None


async def test_gives_up_after_the_retries(vendor: FakeVendor) -> None:
    vendor.fail_next = 10
    vendor.fail_status = 502
    source = http_source(vendor, retries=2)
    with pytest.raises(UsageSourceError) as info:
        await source.fetch(START, END)
    assert info.value.retryable and info.value.status == 502
    assert source.attempts == 3 and len(vendor.requests) == 3


async def test_client_errors_are_not_retried_and_never_show_the_key(vendor: FakeVendor) -> None:
    source = HttpUsageSource(vendor.url, "wrong-key-9d2e", backoff=0, retries=3)
    with pytest.raises(UsageSourceError) as info:
        await source.fetch(START, END)
    assert info.value.status == 401 and not info.value.retryable
    assert len(vendor.requests) == 1
    assert "wrong-key-9d2e" not in str(info.value) and "wrong-key-9d2e" not in repr(source)


async def test_network_errors_are_retried() -> None:
    from persistence.testing.database import free_port

    source = HttpUsageSource(f"http://127.0.0.1:{free_port()}", API_KEY, backoff=0, retries=2, timeout=5)
    with pytest.raises(UsageSourceError, match="network error") as info:
        await source.fetch(START, END)
    assert info.value.retryable and source.attempts == 3


async def test_vendor_amounts_stay_exact_and_malformed_reports_are_rejected(vendor: FakeVendor) -> None:
    vendor.usage = {
        "total_transactions": 2,
        "total_cost": Decimal("0.30000000000000004441"),
        "by_provider": {"openai": {"transactions": 2, "cost_usd": Decimal("0.30000000000000004441")}},
    }
    usage = await http_source(vendor).fetch(START, END)
    assert usage.total_cost_usd == Decimal("0.30000000000000004441")
    assert usage.by_provider is not None and usage.by_provider["openai"].calls == 2
    for bad in (
        {"total_transactions": 1, "total_cost": "NaN"},
        {"total_transactions": 1, "total_cost": Decimal(-1)},
        {"total_transactions": 1.5, "total_cost": 1},
        {"total_transactions": True, "total_cost": 1},
        {"total_cost": 1},
        {"total_transactions": 1, "total_cost": 1, "by_provider": {"x" * 300: {"calls": 1, "cost": 1}}},
    ):
        vendor.usage = bad
        with pytest.raises(UsageSourceError):
            await http_source(vendor).fetch(START, END)


async def test_bad_input_writes_nothing(engine: AsyncEngine, vendor: FakeVendor) -> None:
    vendor.usage = {"total_transactions": 0, "total_cost": 0}
    naive = datetime(2026, 11, 1)  # noqa: DTZ001
    with pytest.raises(InvalidRequestError, match="timezone-aware"):
        await reconcile(engine, http_source(vendor), naive, END)
    with pytest.raises(InvalidRequestError, match="empty"):
        await reconcile(engine, http_source(vendor), END, START)
    for threshold in ("-1", "NaN", "abc"):
        with pytest.raises(InvalidRequestError):
            Reconciler(engine, http_source(vendor), threshold_pct=threshold)
    assert vendor.requests == []
    assert await scalar(engine, "SELECT count(*) FROM reconciliation_reports") == 0


async def test_empty_period_on_both_sides_passes(engine: AsyncEngine, vendor: FakeVendor) -> None:
    vendor.usage = {"total_transactions": 0, "total_cost": 0, "by_provider": {}}
    start = datetime(2030, 1, 1, tzinfo=UTC)
    result = await reconcile(engine, http_source(vendor), start, start + timedelta(days=7))
    assert result.status == "PASS" and result.coverage_pct == 100 and result.variance_pct == 0
