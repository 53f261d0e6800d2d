"""Cost alerts: windows in a time zone, thresholds fired exactly once (threads and processes), the
outbox delivered to a webhook on 127.0.0.1 with retries, every attempt in `cost_alerts_log`."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger
from persistence.ai_calls.alert_delivery import AlertDispatcher, AlertNotification, WebhookSink
from persistence.ai_calls.alerts import _FIRE, AlertEvaluator, AlertWindow, CostAlertRule
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import ValidationError
from persistence.testing import ThrowawayPostgres
from tests.ai_calls.webhook_receiver import webhook_receiver
from tests.processes import run_python

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def rule(**overrides: Any) -> CostAlertRule:
    fields: dict[str, Any] = {
        "name": "acme-daily",
        "scope": "organization",
        "scope_value": "acme",
        "period": "daily",
        "thresholds": (Decimal(10),),
    }
    return CostAlertRule(**{**fields, **overrides})


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> Sequence[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).all()


async def log(
    logger: AICallLogger, cost: str, at: datetime, n: int = 1, org: str = "acme", **extra: Any
) -> None:
    for _ in range(n):
        await logger.log_call("openai", "gpt-4o", 100, 10, cost_usd=Decimal(cost), organization_id=org,
                              created_at=at, **extra)  # fmt: skip


async def wait_until_blocked(watcher: asyncpg.Connection, pid: int) -> None:
    """Until the server says backend `pid` waits for a lock (a deterministic interleaving)."""
    for _ in range(1000):
        if (
            await watcher.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
            == "Lock"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


# -- windows (no database) ---------------------------------------------------------------------------


def test_windows_start_at_local_midnight_and_follow_dst() -> None:
    daily_utc = rule()
    assert daily_utc.window_at(T0) == AlertWindow(utc(2026, 3, 10), utc(2026, 3, 11))
    weekly = rule(period="weekly")  # ISO week: 2026-03-10 is a Tuesday
    assert weekly.window_at(T0) == AlertWindow(utc(2026, 3, 9), utc(2026, 3, 16))
    monthly = rule(period="monthly", time_zone="Europe/Paris")
    assert monthly.window_at(T0) == AlertWindow(utc(2026, 2, 28, 23), utc(2026, 3, 31, 22))  # DST on 29 March

    new_york = rule(time_zone="America/New_York")
    spring = new_york.window_at(utc(2026, 3, 8, 12))  # clocks go forward: a 23-hour day
    assert spring == AlertWindow(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    autumn = new_york.window_at(utc(2026, 11, 1, 12))  # clocks go back: a 25-hour day
    assert autumn.end - autumn.start == timedelta(hours=25)
    assert new_york.window_at(utc(2026, 3, 10, 3, 59)).start == utc(2026, 3, 9, 4)  # still the 9th in NY

    kolkata = rule(time_zone="Asia/Kolkata")  # +05:30: days start at half past the UTC hour
    assert kolkata.window_at(utc(2026, 3, 10, 18, 30)) == AlertWindow(
        utc(2026, 3, 10, 18, 30), utc(2026, 3, 11, 18, 30)
    )
    # Santiago skips from 24:00 to 01:00 on 2026-09-06: that day starts at its first instant, 04:00Z.
    assert rule(time_zone="America/Santiago").window_at(utc(2026, 9, 6, 12)).start == utc(2026, 9, 6, 4)


def test_thresholds_are_exact_decimals_and_percentages_of_a_budget() -> None:
    percent = rule(threshold_kind="percent", budget_usd="200", thresholds=["80", 50, Decimal("100.5")])
    assert percent.thresholds == (Decimal(50), Decimal(80), Decimal("100.5"))  # sorted, deduplicated
    assert [percent.threshold_usd(t) for t in percent.thresholds] == [
        Decimal(100),
        Decimal(160),
        Decimal(201),
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"thresholds": (0.5,)}, "Decimal, int or str"),
        ({"thresholds": ("0",)}, "above 0"),
        ({"thresholds": ("1.0000001",)}, "6 decimal places"),
        ({"thresholds": ()}, "at least one threshold"),
        ({"threshold_kind": "percent"}, "need a budget_usd"),
        ({"time_zone": "Mars/Olympus"}, "IANA time zone"),
        ({"scope": "team"}, "scope must be one of"),
        ({"scope_value": None}, "scope_value"),
        ({"scope": "all"}, "takes no scope_value"),
        ({"period": "hourly"}, "period must be one of"),
        ({"channels": ()}, "at least one channel"),
    ],
)
def test_bad_rules_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rule(**overrides)


# -- firing --------------------------------------------------------------------------------------------


@pytest.mark.commits
async def test_a_threshold_fires_once_however_many_evaluations_race(fresh_engine: AsyncEngine) -> None:
    evaluator = AlertEvaluator(fresh_engine)
    saved = await evaluator.save_rule(rule())
    async with AICallLogger(fresh_engine) as logger:
        await log(logger, "4", T0, n=3)  # $12 >= $10

    results = await asyncio.gather(*(evaluator.evaluate(T0) for _ in range(20)))
    firings = [f for result in results for f in result]
    assert len(firings) == 1
    assert (firings[0].alert_id, firings[0].threshold, firings[0].spend_usd) == (
        saved.id,
        Decimal(10),
        Decimal(12),
    )
    assert firings[0].window == AlertWindow(utc(2026, 3, 10), utc(2026, 3, 11))
    assert await evaluator.evaluate(T0) == []  # the unique firing row, not a cache, says it fired
    assert await AlertEvaluator(fresh_engine).evaluate(T0) == []  # ... for a new evaluator too
    outbox = await rows(fresh_engine, "SELECT kind, channel, status, payload FROM cost_alerts_log")
    assert len(outbox) == 1 and outbox[0][:3] == ("outbox", "default", "pending")
    assert (
        outbox[0][3]["spend_usd"] == "12.000000"
        and outbox[0][3]["window_start"] == "2026-03-10T00:00:00.000000Z"
    )


@pytest.mark.commits
async def test_an_evaluation_that_loses_the_race_waits_for_the_winner_and_fires_nothing(
    fresh_engine: AsyncEngine,
) -> None:
    """The decisive interleaving, made deterministic: the second firing statement starts while the
    first one's insert is not committed yet, so a check-then-insert (NOT EXISTS alone) would see no
    firing and fire again. The unique key makes it wait for the first and then insert nothing."""
    saved = await AlertEvaluator(fresh_engine).save_rule(rule())
    window = saved.window_at(T0)
    version = (await rows(fresh_engine, "SELECT updated_at FROM cost_alerts"))[0][0]
    args = ([saved.id], [window.start], [window.end], [Decimal(10)], [Decimal(10)], [Decimal(12)], [version])
    async with fresh_engine.connect() as first, fresh_engine.connect() as second:
        a = (await first.get_raw_connection()).driver_connection
        b = (await second.get_raw_connection()).driver_connection
        assert isinstance(a, asyncpg.Connection) and isinstance(b, asyncpg.Connection)
        pid = b.get_server_pid()
        async with a.transaction():
            assert len(await a.fetch(_FIRE, *args)) == 1
            losing = asyncio.create_task(b.fetch(_FIRE, *args))
            await wait_until_blocked(a, pid)
        assert await losing == []
    assert await rows(fresh_engine, "SELECT count(*) FROM cost_alert_firings") == [(1,)]
    assert await rows(fresh_engine, "SELECT count(*) FROM cost_alerts_log") == [(1,)]


@pytest.mark.commits
async def test_each_crossed_threshold_fires_once_and_others_wait(fresh_engine: AsyncEngine) -> None:
    evaluator = AlertEvaluator(fresh_engine)
    await evaluator.save_rule(
        rule(
            threshold_kind="percent",
            budget_usd=Decimal(20),
            thresholds=(50, 80, 100),
            channels=("ops", "pager"),
        )
    )
    async with AICallLogger(fresh_engine) as logger:
        await log(logger, "17", T0)  # 85 % of the budget: crosses 50 and 80 at once
        assert [(f.threshold, f.threshold_usd) for f in await evaluator.evaluate(T0)] == [
            (Decimal(50), Decimal(10)),
            (Decimal(80), Decimal(16)),
        ]
        await log(logger, "3", T0)  # 100 %
        assert [f.threshold for f in await evaluator.evaluate(T0)] == [100]
    assert await evaluator.evaluate(T0) == []
    # One notification per firing and channel.
    assert await rows(fresh_engine, "SELECT count(*) FROM cost_alerts_log WHERE kind = 'outbox'") == [(6,)]


@pytest.mark.commits
async def test_a_new_window_fires_again(fresh_engine: AsyncEngine) -> None:
    evaluator = AlertEvaluator(fresh_engine)
    await evaluator.save_rule(rule())
    next_day = T0 + timedelta(days=1)
    async with AICallLogger(fresh_engine) as logger:
        await log(logger, "11", T0)
        assert len(await evaluator.evaluate(T0)) == 1
        await log(logger, "9", next_day)  # the new day starts from zero
        assert await evaluator.evaluate(next_day) == []
        await log(logger, "1", next_day)
        fired = await evaluator.evaluate(next_day)
    assert [f.window.start for f in fired] == [utc(2026, 3, 11)]
    assert await evaluator.evaluate(T0) == []  # the first day's firing stays the only one


@pytest.mark.commits
async def test_the_rules_time_zone_decides_which_day_a_call_counts_in(fresh_engine: AsyncEngine) -> None:
    evaluator = AlertEvaluator(fresh_engine)
    await evaluator.save_rule(rule(name="ny", time_zone="America/New_York"))
    await evaluator.save_rule(rule(name="kolkata", time_zone="Asia/Kolkata"))
    await evaluator.save_rule(rule(name="utc"))
    async with AICallLogger(fresh_engine) as logger:
        await log(logger, "6", utc(2026, 3, 10, 3, 30))  # 9 March 23:30 in New York, 10 March in Kolkata
        await log(logger, "6", utc(2026, 3, 10, 4, 15))  # 10 March 00:15 in New York
        await log(logger, "5", utc(2026, 3, 10, 18, 15))  # 10 March 23:45 in Kolkata
        await log(logger, "5", utc(2026, 3, 10, 18, 45))  # 11 March 00:15 in Kolkata
        fired = await evaluator.evaluate(utc(2026, 3, 10, 12))
    names = {r.id: r.name for r in await evaluator.rules()}
    by_rule = {names[f.alert_id]: f for f in fired}
    assert set(by_rule) == {"ny", "utc", "kolkata"}
    assert by_rule["utc"].spend_usd == 22  # all four calls fall on 10 March UTC
    # New York's 10 March (EDT since 8 March) is [04:00Z, 04:00Z): the 04:15 call and later ones.
    assert by_rule["ny"].window == AlertWindow(utc(2026, 3, 10, 4), utc(2026, 3, 11, 4))
    assert by_rule["ny"].spend_usd == 16
    # Kolkata's 10 March is [9 March 18:30Z, 10 March 18:30Z): partial hours at both edges.
    assert by_rule["kolkata"].window == AlertWindow(utc(2026, 3, 9, 18, 30), utc(2026, 3, 10, 18, 30))
    assert by_rule["kolkata"].spend_usd == 17


@pytest.mark.commits
async def test_spend_is_exact_whether_usage_is_pending_folded_or_in_deltas(fresh_engine: AsyncEngine) -> None:
    evaluator = AlertEvaluator(fresh_engine)
    await evaluator.save_rule(
        rule(scope="customer", scope_value="cust_1", thresholds=(Decimal("30.000003"),))
    )
    async with AICallLogger(fresh_engine, fold_every=None) as logger:
        batch = [
            {"provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1,
             "cost_usd": Decimal("10.000001"), "customer_id": customer, "created_at": T0, "event_id": f"b{i}"}
            for i, customer in enumerate(["cust_1", "cust_1", "cust_2"])
        ]  # fmt: skip
        await logger.log_batch(batch)  # pending batch: read from the ledger by id range
        await log(logger, "10.000001", T0, customer_id="cust_2")  # another customer: not counted
        assert await evaluator.evaluate(T0) == []  # $20.000002
        await logger.fold_rollups()  # now in the rollups
        await log(logger, "10.000001", T0, customer_id="cust_1")  # and a delta
        fired = await evaluator.evaluate(T0)
    assert [f.spend_usd for f in fired] == [Decimal("30.000003")]


# -- as calls are logged -----------------------------------------------------------------------------


@pytest.mark.commits
async def test_logging_calls_evaluates_the_windows_they_touch(fresh_engine: AsyncEngine) -> None:
    delivered: list[AlertNotification] = []
    dispatcher = AlertDispatcher(fresh_engine, {"default": delivered.append})
    evaluator = AlertEvaluator(fresh_engine, dispatcher=dispatcher, interval=0)
    await evaluator.save_rule(rule(thresholds=(5, 10)))
    await evaluator.save_rule(rule(name="other-org", scope_value="globex"))
    async with AICallLogger(fresh_engine, alerts=evaluator) as logger:
        await log(logger, "6", T0)
        await evaluator.flush()
        assert await rows(fresh_engine, "SELECT threshold FROM cost_alert_firings") == [(5,)]
        await logger.log_batch(
            [{"provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1, "cost_usd": 5,
              "organization_id": "acme", "created_at": T0 + timedelta(days=1, hours=i), "event_id": f"e{i}"}
             for i in range(2)]
        )  # fmt: skip
        await evaluator.close()
    await dispatcher.close()
    fired = await rows(fresh_engine, "SELECT threshold, window_start FROM cost_alert_firings ORDER BY id")
    assert fired == [(5, utc(2026, 3, 10)), (5, utc(2026, 3, 11)), (10, utc(2026, 3, 11))]
    assert sorted((n.payload["threshold"], n.payload["window_start"]) for n in delivered) == [
        ("10.000000", "2026-03-11T00:00:00.000000Z"),
        ("5.000000", "2026-03-10T00:00:00.000000Z"),
        ("5.000000", "2026-03-11T00:00:00.000000Z"),
    ]


@pytest.mark.commits
async def test_an_evaluator_that_cannot_reach_the_database_never_fails_logging(
    fresh_database: DatabaseConfig, fresh_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await AlertEvaluator(fresh_engine).save_rule(rule())
    unreachable = build_engine(fresh_database.model_copy(update={"database": "no_such_database"}))
    broken = AlertEvaluator(unreachable, interval=0)
    try:
        with caplog.at_level(logging.WARNING, logger="persistence.ai_calls.alerts"):
            async with AICallLogger(fresh_engine, alerts=broken) as logger:
                await log(logger, "11", T0)  # committed and returned: the alert path is off the hot path
            assert await broken.flush() is False  # returns, does not retry forever
            await broken.close()
    finally:
        await unreachable.dispose()
    assert "cost alert evaluation failed" in caplog.text
    # Nothing was lost: the crossing is still there for the next evaluation to fire.
    assert [f.spend_usd for f in await AlertEvaluator(fresh_engine).evaluate(T0)] == [Decimal(11)]


@pytest.mark.commits
async def test_fifty_writers_in_two_processes_fire_once_and_deliver_once(
    pg: ThrowawayPostgres, fresh_database: DatabaseConfig, fresh_engine: AsyncEngine, tmp_path: Path
) -> None:
    """Must-show 3: each process logs 25 calls of $1 at once, evaluates as it logs and runs its own
    dispatcher; the $25 threshold is crossed once, so one firing and one webhook request."""
    await AlertEvaluator(fresh_engine).save_rule(rule(thresholds=(25,)))
    url = pg.server.url(fresh_database.database or "")
    go = tmp_path / "go"
    with webhook_receiver() as receiver:
        argv = ["-m", "tests.ai_calls.alert_writer"]
        writers = [
            asyncio.to_thread(run_python, [*argv, tag, "25", receiver.url, str(go)], database_url=url)
            for tag in ("a", "b")
        ]
        started = asyncio.gather(*writers)
        ready = [Path(f"{go}.{tag}.ready") for tag in ("a", "b")]
        while not all(p.exists() for p in ready) and not started.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        go.touch()
        finished = await started
        for done in finished:
            assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
        requests = list(receiver.requests)
    assert await rows(fresh_engine, "SELECT count(*), sum(cost_usd) FROM ai_calls") == [(50, 50)]
    firings = await rows(fresh_engine, "SELECT id, threshold FROM cost_alert_firings")
    assert len(firings) == 1 and firings[0][1] == 25
    log_rows = await rows(
        fresh_engine, "SELECT kind, status, attempt, idempotency_key FROM cost_alerts_log ORDER BY id"
    )
    assert [(k, s, a) for k, s, a, _ in log_rows] == [
        ("outbox", "delivered", 1),
        ("attempt", "delivered", 1),
    ], [done.stderr for done in finished]
    assert len(requests) == 1
    assert requests[0]["idempotency_key"] == str(log_rows[0][3])
    assert requests[0]["body"]["threshold"] == "25.000000" and requests[0]["body"]["alert"] == "acme-daily"


# -- delivery ----------------------------------------------------------------------------------------


async def fire_one(engine: AsyncEngine, **overrides: Any) -> None:
    evaluator = AlertEvaluator(engine)
    await evaluator.save_rule(rule(**overrides))
    async with AICallLogger(engine) as logger:
        await log(logger, "10", T0)
    assert len(await evaluator.evaluate(T0)) == 1


@pytest.mark.commits
async def test_a_failing_webhook_is_retried_with_the_same_key_and_every_attempt_is_logged(
    fresh_engine: AsyncEngine,
) -> None:
    await fire_one(fresh_engine)
    with webhook_receiver() as receiver:
        receiver.answers = [503, 500]
        dispatcher = AlertDispatcher(fresh_engine, {"default": WebhookSink(receiver.url)}, backoff=0)
        assert await dispatcher.dispatch_pending() == 1  # 503: back to pending, due at once (no backoff)
        assert await dispatcher.dispatch_pending() == 1  # 500
        assert await dispatcher.dispatch_pending() == 1  # 200
        assert await dispatcher.dispatch_pending() == 0  # nothing left
    attempts = await rows(
        fresh_engine,
        "SELECT attempt, status, response_status, error FROM cost_alerts_log WHERE kind = 'attempt' ORDER BY attempt",
    )
    assert attempts == [
        (1, "failed", 503, "127.0.0.1 answered HTTP 503"),
        (2, "failed", 500, "127.0.0.1 answered HTTP 500"),
        (3, "delivered", 200, None),
    ]
    outbox = await rows(fresh_engine, "SELECT status, attempt, delivered_at IS NOT NULL FROM cost_alerts_log "
                                      "WHERE kind = 'outbox'")  # fmt: skip
    assert outbox == [("delivered", 3, True)]
    keys = {r["idempotency_key"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and len(keys) == 1 and None not in keys
    assert receiver.requests[0]["content_type"] == "application/json"


@pytest.mark.commits
async def test_retries_back_off_and_stop_after_max_attempts_or_a_permanent_refusal(
    fresh_engine: AsyncEngine,
) -> None:
    await fire_one(fresh_engine, channels=("flaky", "refusing"))
    with webhook_receiver() as flaky, webhook_receiver() as refusing:
        flaky.answers = [500] * 10
        refusing.answers = [404]
        sinks = {"flaky": WebhookSink(flaky.url), "refusing": WebhookSink(refusing.url)}
        slow = AlertDispatcher(fresh_engine, sinks, backoff=3600)
        assert await slow.dispatch_pending() == 2
        assert await slow.dispatch_pending() == 0  # the flaky one waits for its backoff
        due = await rows(
            fresh_engine, "SELECT next_attempt_at - now() FROM cost_alerts_log WHERE status = 'pending'"
        )
        assert timedelta(minutes=4) < due[0][0] <= timedelta(minutes=10)  # capped at max_backoff, jittered
        async with fresh_engine.begin() as conn:
            await conn.execute(
                text("UPDATE cost_alerts_log SET next_attempt_at = now() WHERE status = 'pending'")
            )
        fast = AlertDispatcher(fresh_engine, sinks, backoff=0, max_attempts=3)
        while await fast.dispatch_pending():
            pass
    assert len(flaky.requests) == 3 and len(refusing.requests) == 1
    outbox = await rows(fresh_engine, "SELECT channel, status, attempt FROM cost_alerts_log WHERE kind = 'outbox' "
                                      "ORDER BY channel")  # fmt: skip
    assert outbox == [("flaky", "failed", 3), ("refusing", "failed", 1)]
    assert await rows(fresh_engine, "SELECT count(*) FROM cost_alerts_log WHERE kind = 'attempt'") == [(4,)]


@pytest.mark.commits
async def test_a_callable_sink_that_raises_is_retried_and_its_error_recorded(
    fresh_engine: AsyncEngine,
) -> None:
    await fire_one(fresh_engine)
    seen: list[int] = []

    async def sink(notification: AlertNotification) -> None:
        seen.append(notification.attempt)
        if notification.attempt == 1:
            raise RuntimeError("pager service down")

    dispatcher = AlertDispatcher(fresh_engine, {"default": sink}, backoff=0)
    assert await dispatcher.dispatch_pending() + await dispatcher.dispatch_pending() == 2
    assert seen == [1, 2]
    assert await rows(
        fresh_engine, "SELECT status, error FROM cost_alerts_log WHERE kind = 'attempt' ORDER BY attempt"
    ) == [("failed", "RuntimeError: pager service down"), ("delivered", None)]


@pytest.mark.commits
async def test_two_dispatchers_never_deliver_the_same_notification(fresh_engine: AsyncEngine) -> None:
    await fire_one(fresh_engine, channels=tuple(f"c{i}" for i in range(10)))
    delivered: list[tuple[str, int]] = []

    async def sink(notification: AlertNotification) -> None:
        await asyncio.sleep(0.01)
        delivered.append((notification.channel, notification.attempt))

    sinks = {f"c{i}": sink for i in range(10)}
    dispatchers = [AlertDispatcher(fresh_engine, sinks, batch_size=3) for _ in range(4)]
    counts = await asyncio.gather(*(d.dispatch_pending() for d in dispatchers))
    assert sum(counts) == 10
    assert sorted(delivered) == [(f"c{i}", 1) for i in range(10)]


@pytest.mark.commits
async def test_rules_are_saved_by_name_and_deleted_with_their_firings(fresh_engine: AsyncEngine) -> None:
    evaluator = AlertEvaluator(fresh_engine)
    first = await evaluator.save_rule(rule())
    again = await evaluator.save_rule(rule(thresholds=(20, 40), time_zone="Europe/Paris"))
    assert (
        again.id == first.id
        and again.thresholds == (Decimal(20), Decimal(40))
        and again.time_zone == "Europe/Paris"
    )
    assert [r.name for r in await evaluator.rules()] == ["acme-daily"]
    await fire_one(fresh_engine, name="doomed")
    assert await evaluator.delete_rule("doomed") is True
    assert await evaluator.delete_rule("doomed") is False
    assert await rows(fresh_engine, "SELECT count(*) FROM cost_alert_firings") == [(0,)]


# -- leftovers: rules edited mid-window, channels without a sink, shutdown and lost leases ----------


@pytest.mark.commits
async def test_a_rule_edited_mid_window_keeps_its_fired_thresholds_and_fires_new_ones_once(
    fresh_engine: AsyncEngine,
) -> None:
    evaluator = AlertEvaluator(fresh_engine)
    budget = {"threshold_kind": "percent", "budget_usd": Decimal(20)}
    await evaluator.save_rule(rule(**budget, thresholds=(50, 80)))
    async with AICallLogger(fresh_engine) as logger:
        await log(logger, "11", T0)  # 55% of 20
    assert [f.threshold for f in await evaluator.evaluate(T0)] == [50]
    # A new threshold and a smaller budget: 11 is 68.75% of 16. 50 stays fired; 60 fires once.
    await evaluator.save_rule(rule(threshold_kind="percent", budget_usd=16, thresholds=(50, 60, 80)))
    fired = await evaluator.evaluate(T0)
    assert [(f.threshold, f.threshold_usd) for f in fired] == [(Decimal(60), Decimal("9.6"))]
    assert await evaluator.evaluate(T0) == []
    # A budget raised above the spend fires nothing; lowered below it, the rest fire, once.
    await evaluator.save_rule(rule(threshold_kind="percent", budget_usd=100, thresholds=(50, 60, 80)))
    assert await evaluator.evaluate(T0) == []
    await evaluator.save_rule(rule(threshold_kind="percent", budget_usd=10, thresholds=(50, 60, 80, 100)))
    assert [f.threshold for f in await evaluator.evaluate(T0)] == [80, 100]
    assert await evaluator.evaluate(T0) == []
    assert await rows(fresh_engine, "SELECT threshold, count(*) FROM cost_alert_firings GROUP BY 1 ORDER BY 1") == [
        (50, 1), (60, 1), (80, 1), (100, 1),
    ]  # fmt: skip
    assert await rows(fresh_engine, "SELECT count(*) FROM cost_alerts_log WHERE kind = 'outbox'") == [(4,)]


@pytest.mark.commits
async def test_an_evaluator_that_cached_a_rule_sees_an_edit_made_elsewhere_before_it_fires(
    fresh_engine: AsyncEngine,
) -> None:
    """The background path reuses its rules for `rules_ttl`; another process edits the rule in
    between. The old threshold must not fire (it is no longer the rule's), the new one must."""
    cached = AlertEvaluator(fresh_engine, interval=0, rules_ttl=3600)
    await cached.save_rule(rule(thresholds=(10,)))
    async with AICallLogger(fresh_engine, alerts=cached) as logger:
        await log(logger, "1", T0)
        assert await cached.flush() is True  # loaded and cached the rule: thresholds (10,)
        await AlertEvaluator(fresh_engine).save_rule(rule(thresholds=(3, 20)))  # elsewhere
        await log(logger, "11", T0)  # $12 in the window
        assert await cached.flush() is True
    assert await rows(fresh_engine, "SELECT threshold, spend_usd FROM cost_alert_firings") == [(3, 12)]


@pytest.mark.commits
async def test_a_notification_for_a_channel_without_a_sink_waits_for_a_dispatcher_that_has_one(
    fresh_engine: AsyncEngine,
) -> None:
    await fire_one(fresh_engine, channels=("default", "pager"))
    delivered: list[AlertNotification] = []
    without_pager = AlertDispatcher(fresh_engine, {"default": delivered.append})
    assert await without_pager.dispatch_pending() == 1
    await without_pager.close()  # its last pass leaves the pager's notification alone too
    outbox = "SELECT channel, status, attempt, claimed_until FROM cost_alerts_log WHERE kind = 'outbox' ORDER BY channel"
    assert await rows(fresh_engine, outbox) == [
        ("default", "delivered", 1, None),
        ("pager", "pending", 0, None),
    ]
    pager = AlertDispatcher(fresh_engine, {"pager": delivered.append})
    assert await pager.dispatch_pending() == 1
    assert sorted(n.channel for n in delivered) == ["default", "pager"]
    assert [r[:3] for r in await rows(fresh_engine, outbox)] == [
        ("default", "delivered", 1),
        ("pager", "delivered", 1),
    ]


@pytest.mark.commits
async def test_an_attempt_that_never_ends_is_cut_off_so_close_returns(fresh_engine: AsyncEngine) -> None:
    await fire_one(fresh_engine)
    never = asyncio.Event()

    async def hanging(notification: AlertNotification) -> None:
        await never.wait()

    dispatcher = AlertDispatcher(
        fresh_engine, {"default": hanging}, attempt_timeout=0.2, lease=30, backoff=3600
    )
    dispatcher.start()
    dispatcher.wake()
    # The guard turns a hang into a failure; the assertion is that close() returns by itself.
    await asyncio.wait_for(dispatcher.close(), 120)
    attempts = await rows(
        fresh_engine, "SELECT attempt, status, error FROM cost_alerts_log WHERE kind = 'attempt'"
    )
    assert attempts == [(1, "failed", "no outcome within attempt_timeout (0.2 s)")]
    assert await rows(fresh_engine, "SELECT status FROM cost_alerts_log WHERE kind = 'outbox'") == [
        ("pending",)
    ]
    with pytest.raises(ValidationError, match="lease"):
        AlertDispatcher(fresh_engine, {"default": hanging}, attempt_timeout=60, lease=60)
    assert (
        AlertDispatcher(fresh_engine, {"default": hanging}, lease=10).attempt_timeout == 5
    )  # half a short lease


@pytest.mark.commits
async def test_a_delivery_cut_short_by_a_dead_dispatcher_is_redelivered_with_the_same_key(
    fresh_engine: AsyncEngine,
) -> None:
    """A dispatcher claims a notification and dies mid-delivery (its task is cancelled: nothing
    records the outcome). Until the lease runs out nobody else takes it; then another dispatcher
    redelivers it with the same idempotency key, and the lost attempt is in the log."""
    await fire_one(fresh_engine)
    seen: list[tuple[str, int]] = []
    claimed = asyncio.Event()

    async def dying(notification: AlertNotification) -> None:
        seen.append((notification.idempotency_key, notification.attempt))
        claimed.set()
        await asyncio.Event().wait()

    doomed = AlertDispatcher(fresh_engine, {"default": dying}, lease=3600)
    task = asyncio.create_task(doomed.dispatch_pending())
    await claimed.wait()
    task.cancel()  # the process dies
    with pytest.raises(asyncio.CancelledError):
        await task

    async def ok(notification: AlertNotification) -> None:
        seen.append((notification.idempotency_key, notification.attempt))

    survivor = AlertDispatcher(fresh_engine, {"default": ok})
    assert await survivor.dispatch_pending() == 0  # the lease still holds
    async with fresh_engine.begin() as conn:  # an hour later
        await conn.execute(text("UPDATE cost_alerts_log SET claimed_until = now() - interval '1 second' "
                                "WHERE kind = 'outbox'"))  # fmt: skip
    assert await survivor.dispatch_pending() == 1
    (key, first), (again, second) = seen
    assert (again, first, second) == (key, 1, 2)
    log_rows = await rows(
        fresh_engine, "SELECT kind, status, attempt, error FROM cost_alerts_log ORDER BY kind, attempt"
    )
    assert log_rows == [
        (
            "attempt",
            "failed",
            1,
            "lease expired: the dispatcher delivering it stopped before recording the outcome",
        ),
        ("attempt", "delivered", 2, None),
        ("outbox", "delivered", 2, None),
    ]


@pytest.mark.commits
async def test_closing_an_evaluator_evaluates_at_once_instead_of_sleeping_out_its_interval(
    fresh_engine: AsyncEngine,
) -> None:
    evaluator = AlertEvaluator(fresh_engine, interval=3600)
    await evaluator.save_rule(rule())
    async with AICallLogger(fresh_engine, alerts=evaluator) as logger:
        await log(logger, "11", T0)  # schedules an evaluation an hour from now
    # The guard turns a wait into a failure; the assertion is that close() returns by itself.
    await asyncio.wait_for(evaluator.close(), 120)
    assert await rows(fresh_engine, "SELECT threshold, spend_usd FROM cost_alert_firings") == [(10, 11)]


@pytest.mark.commits
async def test_a_blocking_plain_function_sink_is_cut_off_without_stalling_the_event_loop(
    fresh_engine: AsyncEngine,
) -> None:
    await fire_one(fresh_engine)
    release = threading.Event()

    def blocking(notification: AlertNotification) -> None:
        release.wait(60)  # a pager client without a timeout

    dispatcher = AlertDispatcher(fresh_engine, {"default": blocking}, attempt_timeout=0.2, backoff=3600)
    try:
        assert await dispatcher.dispatch_pending() == 1
    finally:
        release.set()
    attempts = await rows(fresh_engine, "SELECT status, error FROM cost_alerts_log WHERE kind = 'attempt'")
    assert attempts == [("failed", "no outcome within attempt_timeout (0.2 s)")]
