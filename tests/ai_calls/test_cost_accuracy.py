"""Cost accuracy over a seeded month (must-show 4): the `cost_calculations` view, verdicts per day,
worst calls, tolerance rules, and a re-run replacing its rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.advisory import advisory_key
from persistence.ai_calls import (
    CostAccuracyReport,
    CostTolerance,
    cost_accuracy,
    load_cost_accuracy,
    validate_cost_accuracy,
)
from persistence.errors import InvalidRequestError
from tests.ai_calls.cost_month import (
    MONTH_END,
    MONTH_START,
    NEAR_DAY,
    OFF_BY,
    OFF_DAY,
    PROVIDER,
    ours,
    seed_month,
)


async def rows_for_period(engine: AsyncEngine) -> list[tuple[str, date, str]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT model, day, verdict FROM cost_accuracy_validations "
                "WHERE period_start = :s AND period_end = :e ORDER BY day, model"
            ),
            {"s": MONTH_START, "e": MONTH_END},
        )
        return [(str(m), d, str(v)) for m, d, v in result.all()]


async def test_cost_calculations_view_shows_provided_and_computed_cost_per_call(engine: AsyncEngine) -> None:
    month = await seed_month(engine)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT v.provided_cost_usd, v.computed_cost_usd, v.variance_usd, v.abs_variance_usd, "
                    "v.variance_pct, v.price_source, v.day, v.cost_source "
                    "FROM cost_calculations v JOIN ai_calls c ON c.id = v.call_id AND c.created_at = v.created_at "
                    "WHERE c.request_id = :r"
                ),
                {"r": month.off_request_id},
            )
        ).one()
        computed = ours("acme-large", 100_000 + 1_000 * 9 + 1, 20_007)
        assert row == (
            computed + OFF_BY,
            computed,
            OFF_BY,
            OFF_BY,
            (OFF_BY * 100 / computed).quantize(Decimal("0.0001")),
            "manual",
            OFF_DAY,
            "provided",
        )
        # A call the ledger priced itself has no provided cost, so no variance.
        small = (
            await conn.execute(
                text(
                    "SELECT provided_cost_usd, computed_cost_usd, variance_usd, recorded_cost_usd "
                    "FROM cost_calculations WHERE model = 'acme-small' AND day = :d"
                ),
                {"d": date(2026, 11, 3)},
            )
        ).one()
        assert small[0] is None and small[2] is None
        assert small[1] == ours("acme-small", 40_002, 8_000) == small[3]


async def test_a_seeded_month_gets_the_expected_verdicts(engine: AsyncEngine) -> None:
    await seed_month(engine)
    report = await validate_cost_accuracy(engine, start=MONTH_START, end=MONTH_END)

    assert isinstance(report, CostAccuracyReport)
    assert report.verdict == "over_tolerance" and not report.passed
    assert report.calls == 30 * 2 + 30 + 1  # the calls on 31 Oct and 1 Dec are outside
    assert report.validated_at is not None and report.validated_at.tzinfo is not None
    assert len(report.lines) == 30 + 30 + 1

    off = report.line(PROVIDER, "acme-large", OFF_DAY)
    assert off is not None and off.verdict == "over_tolerance"
    assert (off.calls, off.compared_calls, off.calls_over_tolerance) == (2, 2, 1)
    assert off.variance_usd == off.abs_variance_usd == OFF_BY
    assert off.provided_cost_usd - off.computed_cost_usd == OFF_BY
    [worst] = off.worst_calls  # the other call of the day matches exactly: not an offender
    assert worst.abs_variance_usd == OFF_BY and worst.provided_cost_usd == worst.computed_cost_usd + OFF_BY
    assert worst.created_at == datetime(2026, 11, 10, 11, tzinfo=UTC)

    near = report.line(PROVIDER, "acme-large", NEAR_DAY)
    assert near is not None and near.verdict == "ok"  # one micro-dollar: within the default rule
    assert near.abs_variance_usd == Decimal("0.000001") and len(near.worst_calls) == 1

    large = [x for x in report.lines if x.model == "acme-large"]
    assert sorted(x.verdict for x in large) == ["ok"] * 29 + ["over_tolerance"]
    small = [x for x in report.lines if x.model == "acme-small"]
    assert {x.verdict for x in small} == {"no_provided_cost"} and all(
        x.computed_only_calls == 1 for x in small
    )
    [mystery] = [x for x in report.lines if x.model == "mystery-1"]
    assert (mystery.verdict, mystery.unpriced_calls, mystery.variance_pct) == ("unpriced", 1, None)
    assert report.over_tolerance() == [off]
    assert report.calls_over_tolerance == 1
    assert report.abs_variance_usd == OFF_BY + Decimal("0.000001")

    # Filed: one row per provider/model/day, readable back as the same report.
    assert len(await rows_for_period(engine)) == 61
    assert await load_cost_accuracy(engine, start=MONTH_START, end=MONTH_END) == report


async def test_a_rerun_replaces_the_period_and_applies_its_tolerance(engine: AsyncEngine) -> None:
    await seed_month(engine)
    await validate_cost_accuracy(engine, start=MONTH_START, end=MONTH_END)
    other = await validate_cost_accuracy(engine, start=MONTH_START, end=MONTH_START + timedelta(days=7))

    strict = CostTolerance(absolute_usd=Decimal(0), relative_pct=Decimal(0))
    rerun = await validate_cost_accuracy(engine, start=MONTH_START, end=MONTH_END, tolerance=strict)
    near = rerun.line(PROVIDER, "acme-large", NEAR_DAY)
    assert near is not None and near.verdict == "over_tolerance"  # exact equality demanded now
    assert rerun.calls_over_tolerance == 2
    assert rerun.tolerance == strict

    # 0.25 on a ~$0.66 call is ~38%: a 50% relative rule lets it pass.
    lenient = CostTolerance(absolute_usd=Decimal(0), relative_pct=Decimal(50))
    third = await validate_cost_accuracy(engine, start=MONTH_START, end=MONTH_END, tolerance=lenient)
    assert third.passed and third.verdict == "ok"

    rows = await rows_for_period(engine)
    assert len(rows) == 61 and len(set(rows)) == 61  # replaced, not added to
    async with engine.connect() as conn:
        tolerances = (
            await conn.execute(
                text(
                    "SELECT DISTINCT absolute_tolerance_usd, relative_tolerance_pct FROM cost_accuracy_validations "
                    "WHERE period_end = :e"
                ),
                {"e": MONTH_END},
            )
        ).all()
    assert tolerances == [(Decimal(0), Decimal(50))]
    # Another period's run is its own and stays.
    assert await load_cost_accuracy(engine, start=MONTH_START, end=MONTH_START + timedelta(days=7)) == other


async def test_an_empty_period_files_nothing_and_bad_arguments_are_refused(engine: AsyncEngine) -> None:
    empty = await validate_cost_accuracy(engine, start=MONTH_START, end=MONTH_END)
    assert (empty.lines, empty.verdict, empty.passed) == ((), "no_calls", True)
    assert await load_cost_accuracy(engine, start=MONTH_START, end=MONTH_END) is None
    with pytest.raises(InvalidRequestError):
        await validate_cost_accuracy(engine, start=MONTH_END, end=MONTH_START)
    with pytest.raises(InvalidRequestError):
        await validate_cost_accuracy(engine, start=datetime(2026, 11, 1), end=MONTH_END)  # noqa: DTZ001 (naive on purpose)
    with pytest.raises(InvalidRequestError):
        CostTolerance(absolute_usd=Decimal(-1))
    with pytest.raises(InvalidRequestError):
        CostTolerance(relative_pct=Decimal("NaN"))


def test_tolerance_rule() -> None:
    rule = CostTolerance(absolute_usd=Decimal("0.01"), relative_pct=Decimal(1))
    assert rule.allowed(Decimal(100)) == Decimal("1.01")
    assert rule.allows(Decimal("101.01"), Decimal(100)) and not rule.allows(Decimal("101.02"), Decimal(100))
    assert CostTolerance().allows(Decimal("0.000001"), Decimal(0))
    assert not CostTolerance().allows(Decimal("0.0000011"), Decimal(0))


@pytest.mark.commits
async def test_a_run_waits_for_a_concurrent_run_of_the_same_period_and_replaces_it(
    engine: AsyncEngine,
) -> None:
    await seed_month(engine)
    async with engine.connect() as other:  # another process's run of the same period, not yet committed
        await other.execute(
            cost_accuracy._LOCK,
            {"key": advisory_key(f"cost_accuracy:{MONTH_START.isoformat()}:{MONTH_END.isoformat()}")},
        )
        await other.execute(cost_accuracy._DELETE, {"start": MONTH_START, "end": MONTH_END})
        await other.execute(
            cost_accuracy._RUN,
            {"start": MONTH_START, "end": MONTH_END, "atol": 0, "rtol": 0, "max_pct": 10**8, "top": 1},
        )
        ours = asyncio.create_task(validate_cost_accuracy(engine, start=MONTH_START, end=MONTH_END))
        async with engine.connect() as watcher:
            for _ in range(1000):
                waiting = await watcher.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'"
                    )
                )
                await watcher.rollback()
                if waiting:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the second run never waited")
        await other.commit()
    report = await ours  # not a unique violation: it ran after the other and replaced its rows
    assert report.calls_over_tolerance == 1 and report.tolerance == CostTolerance()
    assert len(await rows_for_period(engine)) == 61
