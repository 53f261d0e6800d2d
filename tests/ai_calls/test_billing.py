"""Billing validation over a seeded month (must-show 4): vendor bills against the ledger per model and
day, periods open -> grace -> closed, re-runs until closed, late rows kept as adjustments."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import (
    BillingFileError,
    BillingImport,
    BillingPolicy,
    BillingRow,
    BillingRowError,
    close_due_periods,
    get_billing_period,
    import_billing_file,
    import_usage_source,
    load_billing_file,
    record_billing_rows,
    validate_billing,
)
from persistence.ai_calls.sources import FileUsageSource
from persistence.errors import InvalidRequestError, NotFoundError
from tests.ai_calls.cost_month import MONTH_END, MONTH_START, PROVIDER, Month, seed_month

POLICY = BillingPolicy(late_windows={PROVIDER: timedelta(days=3)})
MISBILLED_DAY = date(2026, 11, 15)
FIELDS = ["provider", "model", "day", "period", "amount_usd", "external_id"]


def write_invoice(path: Path, month: Month) -> Path:
    """The vendor's export: acme-large and acme-small per day (acme-small $1 too much on the 15th),
    mystery-1 once for the whole month."""
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=FIELDS)
        out.writeheader()
        for (model, day), cost in sorted(month.ledger.items()):
            if model == "mystery-1":
                continue
            extra = Decimal(1) if (model, day) == ("acme-small", MISBILLED_DAY) else Decimal(0)
            out.writerow(
                {"provider": "ACME-AI", "model": model, "day": day.isoformat(), "amount_usd": cost + extra,
                 "external_id": f"inv-2026-11/{model}/{day}"}
            )  # fmt: skip
        mystery = sum((c for (m, _), c in month.ledger.items() if m == "mystery-1"), Decimal(0))
        out.writerow(
            {"provider": PROVIDER, "model": "mystery-1", "period": "2026-11", "amount_usd": mystery,
             "external_id": "inv-2026-11/mystery-1"}
        )  # fmt: skip
    return path


async def billing_rows(engine: AsyncEngine) -> list[tuple[str, str, Decimal]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT kind, external_id, amount_usd FROM billing_data ORDER BY id")
        )
        return [(str(k), str(e), Decimal(a)) for k, e, a in result.all()]


async def test_a_seeded_month_billed_validated_closed_and_adjusted(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    month = await seed_month(engine)
    invoice = write_invoice(tmp_path / "acme-2026-11.csv", month)

    imported = await import_billing_file(engine, invoice, policy=POLICY)
    assert imported == BillingImport(recorded=61, adjustments=0, duplicates=0)
    again = await import_billing_file(engine, invoice, policy=POLICY)  # the same file twice adds nothing
    assert again == BillingImport(recorded=0, adjustments=0, duplicates=61)

    period = await get_billing_period(engine, PROVIDER, date(2026, 11, 20))
    assert (period.state, period.period_start, period.period_end) == ("open", MONTH_START, MONTH_END)
    assert period.grace_ends_at == MONTH_END + timedelta(days=3)

    # While open: a first validation finds the one misbilled day.
    first = await validate_billing(engine, period)
    assert first.verdict == "mismatch" and first.validated_in_state == "open" and not first.final
    [problem] = first.problems()
    assert (problem.model, problem.day, problem.status) == ("acme-small", MISBILLED_DAY, "amount_mismatch")
    assert problem.variance_usd == Decimal(1)
    assert first.ledger_calls == 91  # 30 x 2 + 30 + 1; the calls of 31 Oct and 1 Dec are not this period's
    assert first.ledger_usd == sum(month.ledger.values(), Decimal(0))
    assert first.billed_usd - first.ledger_usd == first.variance_usd == Decimal(1)
    [whole] = [line for line in first.lines if line.model == "mystery-1"]
    assert (whole.day, whole.status) == (None, "matched")  # billed for the period: compared for the period

    # The month ends: grace. The vendor's credit note arrives and counts; the re-run replaces the result.
    [moved] = await close_due_periods(engine, now=MONTH_END)
    assert (moved.previous, moved.period.state, moved.period.grace_at) == ("open", "grace", MONTH_END)
    assert await close_due_periods(engine, now=MONTH_END + timedelta(days=2)) == []  # grace lasts 3 days
    credit = BillingRow(
        PROVIDER, "acme-small", Decimal(-1), "acme-invoices", "credit-2026-11-1", day=MISBILLED_DAY
    )
    assert await record_billing_rows(engine, [credit], policy=POLICY) == BillingImport(1, 0, 0)
    second = await validate_billing(engine, period.id)
    assert second.verdict == "ok" and second.validated_in_state == "grace" and not second.final
    assert second.validated_at > first.validated_at
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM billing_validations"))).scalar_one() == 1

    # The late-data window ends: closed. A row arriving now is an adjustment of the closed period.
    closing = MONTH_END + timedelta(days=3)
    [closed] = await close_due_periods(engine, now=closing)
    assert (closed.previous, closed.period.state, closed.period.closed_at) == ("grace", "closed", closing)
    late = BillingRow(
        PROVIDER, "acme-large", Decimal("0.50"), "acme-invoices", "late-2026-11-20", day=date(2026, 11, 20)
    )
    assert await record_billing_rows(engine, [late], policy=POLICY) == BillingImport(0, 1, 0)
    assert (await billing_rows(engine))[-1] == ("adjustment", "late-2026-11-20", Decimal("0.50"))

    third = await validate_billing(engine, period.id)
    assert third.final and third.period.state == "closed"
    # The closed period's result is the one filed during grace, unchanged by the late row.
    assert (third.verdict, third.validated_at, third.lines, third.billed_usd, third.validated_in_state) == (
        second.verdict,
        second.validated_at,
        second.lines,
        second.billed_usd,
        "grace",
    )
    assert (third.adjustment_rows, third.adjustments_usd) == (1, Decimal("0.50"))
    assert await close_due_periods(engine, now=closing + timedelta(days=30)) == []  # closed stays closed


async def test_a_period_closed_before_any_validation_is_validated_once(engine: AsyncEngine) -> None:
    await seed_month(engine)
    row = BillingRow(PROVIDER, "acme-small", Decimal("0.05"), "s", "x-1", day=date(2026, 11, 2))
    await record_billing_rows(engine, [row], policy=POLICY)
    moved = await close_due_periods(
        engine, now=MONTH_END + timedelta(days=10)
    )  # open -> grace -> closed at once
    assert [(t.previous, t.period.state) for t in moved] == [("open", "closed")]
    assert moved[0].period.grace_at == moved[0].period.closed_at
    first = await validate_billing(engine, moved[0].period)
    assert first.final and first.validated_in_state == "closed" and first.verdict == "mismatch"
    await record_billing_rows(
        engine, [BillingRow(PROVIDER, "acme-small", Decimal(5), "s", "x-2", day=date(2026, 11, 2))]
    )
    later = await validate_billing(engine, moved[0].period)
    assert later == dataclasses.replace(first, adjustments_usd=Decimal(5), adjustment_rows=1)


async def test_usage_source_import_records_only_what_changed(engine: AsyncEngine, tmp_path: Path) -> None:
    export = tmp_path / "usage.csv"

    def write(cost_on_3rd: str) -> None:
        export.write_text(
            "provider,model,date,calls,cost\n"
            f"acme-ai,acme-large,2026-11-02,2,1.250000\nacme-ai,acme-large,2026-11-03,2,{cost_on_3rd}\n"
        )

    source = FileUsageSource(export, name="metering")
    write("2.000000")
    assert await import_usage_source(engine, source, start=MONTH_START, end=MONTH_END) == BillingImport(
        2, 0, 0
    )
    assert await import_usage_source(engine, source, start=MONTH_START, end=MONTH_END) == BillingImport(
        0, 0, 0
    )
    write("2.300000")  # late usage restated the 3rd: only the difference is recorded
    assert await import_usage_source(engine, source, start=MONTH_START, end=MONTH_END) == BillingImport(
        1, 0, 0
    )
    assert await billing_rows(engine) == [
        ("usage", "acme-ai/acme-large/2026-11-02#0", Decimal("1.25")),
        ("usage", "acme-ai/acme-large/2026-11-03#0", Decimal("2")),
        ("usage", "acme-ai/acme-large/2026-11-03#1", Decimal("0.3")),
    ]
    await close_due_periods(engine, now=MONTH_END + timedelta(days=40))  # default window: 35 days
    write("2.000000")  # restated back after the close: an adjustment of -0.3
    assert await import_usage_source(engine, source, start=MONTH_START, end=MONTH_END) == BillingImport(
        0, 1, 0
    )
    assert (await billing_rows(engine))[-1] == (
        "adjustment",
        "acme-ai/acme-large/2026-11-03#2",
        Decimal("-0.3"),
    )


def test_billing_files_name_the_line_and_field_of_a_bad_row(tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(
        "provider,model,day,amount_usd,external_id\n"
        "openai,gpt-4o,2026-11-01,1.5,a\n"
        "openai,gpt-4o,2026-11-02,one dollar,b\n"
    )
    with pytest.raises(BillingFileError) as caught:
        load_billing_file(bad_csv)
    assert (caught.value.line, caught.value.field) == (3, "amount_usd")
    assert "bad.csv line 3, field amount_usd" in str(caught.value)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text(
        json.dumps({"rows": [{"provider": "openai", "model": "gpt-4o", "amount": "2", "id": "a"}]})
    )
    with pytest.raises(BillingFileError) as caught:
        load_billing_file(bad_json)
    assert (caught.value.line, caught.value.field) == (1, "day")  # neither a day nor a period

    good = tmp_path / "good.json"
    good.write_text(
        '[{"provider": "OpenAI", "model": "gpt-4o", "date": "2026-11-03", "cost": 0.1234567, "id": "l1",'
        ' "tokens": 1200, "calls": "3"}]'
    )
    [row] = load_billing_file(good, source="openai-invoice")
    assert row == BillingRow(
        "openai",
        "gpt-4o",
        Decimal("0.1234567"),
        "openai-invoice",
        "l1",
        day=date(2026, 11, 3),
        calls=3,
        tokens=1200,
    )
    with pytest.raises(BillingFileError):
        load_billing_file(tmp_path / "missing.csv")
    with pytest.raises(BillingFileError):
        load_billing_file(tmp_path / "bill.txt")


async def test_typed_rows_are_checked(engine: AsyncEngine) -> None:
    with pytest.raises(BillingRowError) as caught:
        BillingRow("openai", "gpt-4o", Decimal(1), "s", "e-1")  # no day, no period
    assert isinstance(caught.value, InvalidRequestError)
    assert (caught.value.field, str(caught.value)) == (
        "day",
        "billing row 'e-1': day: a row needs a day or a period",
    )
    with pytest.raises(InvalidRequestError, match="period"):
        BillingRow("openai", "gpt-4o", Decimal(1), "s", "e", day=date(2026, 11, 3), period=date(2026, 12, 1))
    with pytest.raises(InvalidRequestError, match="amount_usd"):
        BillingRow("openai", "gpt-4o", 1.5, "s", "e", day=date(2026, 11, 3))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        await close_due_periods(engine, now=datetime(2026, 12, 1))  # noqa: DTZ001 (naive on purpose)
    with pytest.raises(NotFoundError):
        await validate_billing(engine, 123_456)
    with pytest.raises(NotFoundError):
        await get_billing_period(engine, "openai", date(2026, 11, 1))


async def wait_for_a_lock_waiter(engine: AsyncEngine) -> None:
    """Until some backend of this database waits for a lock (a deterministic interleaving)."""
    async with engine.connect() as watcher:
        for _ in range(1000):
            waiting = await watcher.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
            await watcher.rollback()  # a fresh snapshot of pg_stat_activity next time
            if waiting:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("no backend ever waited for a lock")


@pytest.mark.commits
async def test_a_row_racing_the_close_is_filed_as_an_adjustment(engine: AsyncEngine) -> None:
    first = BillingRow(PROVIDER, "acme-large", Decimal(1), "s", "r-1", day=date(2026, 11, 2))
    await record_billing_rows(engine, [first], policy=POLICY)
    await close_due_periods(engine, now=MONTH_END)
    period = await get_billing_period(engine, PROVIDER, date(2026, 11, 1))
    assert period.state == "grace"

    late = BillingRow(PROVIDER, "acme-large", Decimal(2), "s", "r-2", day=date(2026, 11, 3))
    async with engine.connect() as closer:  # a close in flight: the period row updated, not yet committed
        await closer.execute(
            text(
                "UPDATE billing_periods SET state = 'closed', closed_at = :now WHERE id = :id AND state = 'grace'"
            ),
            {"now": MONTH_END + timedelta(days=3), "id": period.id},
        )
        racing = asyncio.create_task(record_billing_rows(engine, [late], policy=POLICY))
        await wait_for_a_lock_waiter(engine)
        await closer.commit()
    # The insert waited for the close and saw it: the row is an adjustment, not part of the period.
    assert await racing == BillingImport(0, 1, 0)
    assert await billing_rows(engine) == [("usage", "r-1", Decimal(1)), ("adjustment", "r-2", Decimal(2))]
