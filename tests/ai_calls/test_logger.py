"""Seed 000's flows through AICallLogger: log and read back, batches, idempotency, bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import AICallLogger, AICallRecord
from persistence.errors import ConflictError, TransientError, ValidationError
from tests.ai_calls.conftest import T0, call, counts, scalar


async def test_log_call_returns_the_committed_id_and_reads_back(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    call_id = await logger.log_call(
        provider="anthropic",
        model="claude-sonnet-4-20250514",
        input_tokens=1234,
        output_tokens=567,
        cost_usd=Decimal("0.012207"),
        latency_ms=912,
        customer_id="cust_001",
        organization_id="acme-corp",
        product_id="chatbot",
        environment="production",
        request_id="msg_01XYZ",
        trace_id="trace-1",
        cache_read_tokens=100,
        usage={"input_tokens": 1234, "output_tokens": 567, "cache_read_input_tokens": 100},
        created_at=T0,
    )
    # Another connection sees it: the row was committed before log_call returned.
    async with engine.connect() as conn:
        row = (
            (await conn.execute(text("SELECT * FROM ai_calls WHERE id = :id"), {"id": call_id}))
            .mappings()
            .one()
        )
        key = (await conn.execute(text("SELECT * FROM ai_call_keys"))).mappings().one()
    assert row["provider"] == "anthropic" and row["model"] == "claude-sonnet-4-20250514"
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["total_tokens"]) == (
        1234,
        567,
        100,
        1901,
    )
    assert row["cost_usd"] == Decimal("0.012207") and row["cost_source"] == "provided"
    assert row["usage"] == {"input_tokens": 1234, "output_tokens": 567, "cache_read_input_tokens": 100}
    assert row["created_at"] == T0 and row["status"] == "success"
    assert (row["customer_id"], row["request_id"], row["trace_id"]) == ("cust_001", "msg_01XYZ", "trace-1")
    assert key["idempotency_key"] == "anthropic:msg_01XYZ" and key["call_id"] == call_id
    assert await counts(engine) == (1, 1, 1)


async def test_a_retry_returns_the_same_id_and_adds_nothing(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    first = await logger.log_call(**call(1))
    again = await logger.log_call(**{**call(1), "created_at": T0 + timedelta(seconds=3)})
    assert again == first
    assert await counts(engine) == (1, 1, 1)


async def test_the_same_key_with_another_payload_is_a_conflict(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    await logger.log_call(**call(1))
    with pytest.raises(ConflictError, match="msg_000001") as info:
        await logger.log_call(**{**call(1), "output_tokens": 999})
    assert info.value.constraint == "pk_ai_call_keys"
    assert await counts(engine) == (1, 1, 1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"input_tokens": -1},
        {"cost_usd": Decimal("NaN")},
        {"cost_usd": Decimal("-0.5")},
        {"cost_usd": float("nan")},
        {"provider": "p" * 300},
        {"created_at": datetime(2026, 3, 10, 12, 0)},  # noqa: DTZ001
    ],
)
async def test_bad_input_raises_a_typed_error_and_writes_nothing(
    engine: AsyncEngine, logger: AICallLogger, overrides: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        await logger.log_call(**call(1, **overrides))
    with pytest.raises(ValidationError):
        await logger.log_batch([call(2), call(3, **overrides)])
    assert await counts(engine) == (0, 0, 0)


async def test_log_batch_twice_adds_the_rows_once(engine: AsyncEngine, logger: AICallLogger) -> None:
    calls = [call(i) for i in range(500)]
    assert await logger.log_batch(calls) == 500
    assert await logger.log_batch(calls) == 0
    more = [call(i) for i in range(400, 700)]  # 100 already logged, 200 new
    assert await logger.log_batch(more) == 200
    assert await counts(engine) == (700, 700, 2)  # one pending id range per batch that wrote rows
    total = await scalar(engine, "SELECT sum(cost_usd) FROM ai_calls")
    assert total == sum((c["cost_usd"] for c in (call(i) for i in range(700))), Decimal(0))
    # Ids come from the ledger's identity and match the keys.
    assert (
        await scalar(
            engine,
            "SELECT count(*) FROM ai_calls c JOIN ai_call_keys k ON k.call_id = c.id AND k.call_created_at = c.created_at",
        )
        == 700
    )


async def test_log_batch_repeats_inside_a_batch_count_once(engine: AsyncEngine, logger: AICallLogger) -> None:
    assert await logger.log_batch([call(1), call(2), call(1)]) == 2
    with pytest.raises(ConflictError):
        await logger.log_batch([call(3), {**call(3), "input_tokens": 1}])
    assert await counts(engine) == (2, 2, 1)


async def test_a_batch_reusing_a_key_for_another_call_writes_nothing(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    await logger.log_batch([call(1)])
    with pytest.raises(ConflictError, match="msg_000001"):
        await logger.log_batch([call(5), {**call(1), "latency_ms": 1}, call(6)])
    assert await counts(engine) == (1, 1, 1)


async def test_log_batch_takes_records_and_an_empty_batch(logger: AICallLogger, engine: AsyncEngine) -> None:
    assert await logger.log_batch([]) == 0
    records = [AICallRecord.coerce(call(i)) for i in range(3)]
    assert await logger.log_batch(records) == 3
    assert await logger.log_call(**call(0)) == await scalar(
        engine, "SELECT call_id FROM ai_call_keys WHERE idempotency_key = 'anthropic:msg_000000'"
    )


async def test_calls_without_a_key_are_distinct_calls(engine: AsyncEngine, logger: AICallLogger) -> None:
    one = await logger.log_call(**call(1, request_id=None))
    two = await logger.log_call(**call(1, request_id=None))
    assert one != two
    e1 = await logger.log_call(**call(1, request_id=None, event_id="evt-9"))
    assert await logger.log_call(**call(1, request_id=None, event_id="evt-9")) == e1
    assert (await counts(engine))[0] == 3


async def test_cost_is_computed_from_the_price_in_force(engine: AsyncEngine, logger: AICallLogger) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM vendor_prices WHERE provider = 'acme-ai'"))
        await conn.execute(
            text(
                "INSERT INTO vendor_prices (provider, model, input_per_mtok, output_per_mtok, cache_read_per_mtok, "
                "cache_write_per_mtok, reasoning_per_mtok, effective_from, effective_to) VALUES "
                "('acme-ai', 'm1', 3, 15, 0.3, 3.75, 15, '2026-01-01Z', '2026-03-01Z'), "
                "('acme-ai', 'm1', 2, 10, 0.2, 2.5, 10, '2026-03-01Z', NULL)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO vendor_prices (provider, model, tenant_id, input_per_mtok, output_per_mtok, "
                "cache_read_per_mtok, cache_write_per_mtok, reasoning_per_mtok, effective_from) VALUES "
                "('acme-ai', 'm1', 'vip-org', 1, 1, 0, 0, 0, '2026-01-01Z')"
            )
        )
    await logger.reload_prices()
    base: dict[str, Any] = {
        "provider": "acme-ai",
        "model": "m1",
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_tokens": 10,
    }
    feb = await logger.log_call(**base, request_id="feb", created_at=T0 - timedelta(days=30))
    mar = await logger.log_call(**base, request_id="mar", created_at=T0)
    vip = await logger.log_call(**base, request_id="vip", organization_id="vip-org", created_at=T0)
    given = await logger.log_call(**base, request_id="given", cost_usd=Decimal("0.5"), created_at=T0)
    async with engine.connect() as conn:
        rows = {
            r.id: r
            for r in await conn.execute(
                text("SELECT id, cost_usd, computed_cost_usd, cost_source, price_id FROM ai_calls")
            )
        }
    # 1000*3 + 100*15 + 10*0.3 = 4503 per million
    assert (rows[feb].cost_usd, rows[feb].computed_cost_usd) == (Decimal("0.004503"), Decimal("0.004503"))
    assert rows[mar].computed_cost_usd == Decimal("0.003002") and rows[mar].cost_source == "computed"
    assert rows[vip].computed_cost_usd == Decimal("0.0011")
    assert (rows[given].cost_usd, rows[given].computed_cost_usd, rows[given].cost_source) == (
        Decimal("0.5"),
        Decimal("0.003002"),
        "provided",
    )
    assert rows[mar].price_id == rows[given].price_id != rows[feb].price_id
    # No price in force (another model; before the first price): stored unpriced, never refused.
    m2 = await logger.log_call(provider="acme-ai", model="m2", input_tokens=1, output_tokens=1, created_at=T0)
    early = await logger.log_call(**base, request_id="early", created_at=T0.replace(year=2025))
    async with engine.connect() as conn:
        unpriced = (
            await conn.execute(
                text(
                    "SELECT id, cost_usd, computed_cost_usd, cost_source, price_id FROM ai_calls "
                    "WHERE id = ANY(:ids) ORDER BY id"
                ),
                {"ids": [m2, early]},
            )
        ).all()
    assert [tuple(r[1:]) for r in unpriced] == [(None, None, "unpriced", None)] * 2
    assert (await counts(engine))[0] == 6


@pytest.mark.commits
async def test_concurrent_loggers_lose_nothing_and_share_one_key(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    async with AICallLogger(engine, connections=8) as many:

        async def worker(w: int) -> list[int]:
            ids = []
            for i in range(50):
                ids.append(await many.log_call(**call(w * 1000 + i)))
            await many.log_batch([call(w * 1000 + 500 + i) for i in range(50)])
            return ids

        results = await asyncio.gather(*(worker(w) for w in range(8)))
        same = await asyncio.gather(*(many.log_call(**call(99_999)) for _ in range(8)))
    assert len({i for ids in results for i in ids}) == 400
    assert len(set(same)) == 1
    assert (await counts(engine))[:2] == (801, 801)


@pytest.mark.commits
async def test_a_lost_connection_is_replaced_and_the_call_retried(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    await logger.log_call(**call(1))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    await asyncio.sleep(0.05)
    assert await logger.log_call(**call(2)) > 0
    assert await logger.log_batch([call(3), call(4)]) == 2
    assert (await counts(engine))[0] == 4


@pytest.mark.commits
async def test_ingest_loads_in_concurrent_batches_and_a_rerun_adds_nothing(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    calls = [call(i) for i in range(2300)]
    assert await logger.ingest(iter(calls), batch_size=500, concurrency=2) == 2300
    assert await counts(engine) == (2300, 2300, 5)  # one pending id range per batch
    assert await logger.ingest(calls, batch_size=700, concurrency=3) == 0
    total = await scalar(engine, "SELECT sum(cost_usd) FROM ai_calls")
    assert total == sum((c["cost_usd"] for c in calls), Decimal(0))


@pytest.mark.commits
async def test_ingest_keeps_the_committed_batches_when_one_fails_and_a_rerun_completes_it(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    calls = [call(i) for i in range(1000)]
    bad = [*calls[:750], {**calls[750], "input_tokens": -1}, *calls[751:]]
    with pytest.raises(ValidationError, match="input_tokens") as failure:
        await logger.ingest(bad, batch_size=250, concurrency=2)
    assert (await counts(engine))[0] == 750  # the three batches before the bad one
    assert "ingest: 750 new rows of other batches were committed" in failure.value.__notes__[0]
    assert await logger.ingest(calls, batch_size=250) == 250
    with pytest.raises(ValidationError, match="batch_size"):
        await logger.ingest(calls, batch_size=0)


class _BadStr:
    def __str__(self) -> str:
        return "bad\ud800"


@pytest.mark.parametrize(
    ("method", "kwargs", "name"),
    [
        ("log_batch", {"calls": None}, "calls"),
        ("log_batch", {"calls": 5}, "calls"),
        ("log_batch", {"calls": "abc"}, "calls"),
        ("log_batch", {"calls": {"provider": "openai"}}, "calls"),
        ("ingest", {"calls": None}, "calls"),
        ("ingest", {"calls": [], "batch_size": "x"}, "batch_size"),
        ("ingest", {"calls": [], "batch_size": 1.5}, "batch_size"),
        ("ingest", {"calls": [], "batch_size": True}, "batch_size"),
        ("ingest", {"calls": [], "concurrency": None}, "concurrency"),
        ("get_stats", {"start_date": None, "end_date": T0}, "start_date"),
        ("get_stats", {"start_date": T0, "end_date": "tomorrow"}, "end_date"),
        ("get_stats", {"start_date": T0, "end_date": datetime.max.replace(tzinfo=UTC)}, "end_date"),
        # A usage value that is not JSON is refused, never stored as its str() (nor a raw UnicodeEncodeError).
        ("log_batch", {"calls": [call(1, usage={"x": _BadStr()})]}, r"usage\['x'\] is a _BadStr"),
        ("log_batch", {"calls": [call(1, usage={"x": {1, 2}})]}, r"usage\['x'\] is a set"),
        ("log_call", {**call(1, usage={"x": {1, 2}})}, r"usage\['x'\] is a set"),
        ("log_call", {**call(1, cost_usd=Decimal("1e-7"))}, "cost_usd has more than 6 decimal places"),
        ("log_call", {**call(1, created_at=datetime.max.replace(tzinfo=UTC))}, "created_at is out of range"),
    ],
)
async def test_wrong_typed_arguments_are_validation_errors_naming_them(
    engine: AsyncEngine, logger: AICallLogger, method: str, kwargs: dict[str, Any], name: str
) -> None:
    before = await counts(engine)
    with pytest.raises(ValidationError, match=name):
        await getattr(logger, method)(**kwargs)
    assert await counts(engine) == before


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"connections": 0}, "connections"),
        ({"connections": "4"}, "connections"),
        ({"connections": 2.5}, "connections"),
        ({"fold_interval": float("nan")}, "fold_interval"),
        ({"fold_every": 1.5}, "fold_every"),
        ({"price_ttl": float("nan")}, "price_ttl"),
    ],
)
def test_constructor_arguments_are_validation_errors(
    engine: AsyncEngine, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValidationError, match=name):
        AICallLogger(engine, **kwargs)
    with pytest.raises(ValidationError, match="engine"):
        AICallLogger(None)  # type: ignore[arg-type]


@pytest.mark.commits
async def test_concurrent_batches_each_get_one_contiguous_id_range(engine: AsyncEngine) -> None:
    # Ids are drawn under a lock, so batches racing each other still record one pending range each
    # (interleaved nextval calls would otherwise split them into many).
    batches = [[call(b * 2000 + i) for i in range(2000)] for b in range(8)]
    async with AICallLogger(engine, connections=8, fold_every=None) as log:
        await asyncio.gather(*(log.log_batch(b) for b in batches))
    assert await counts(engine) == (16000, 16000, 8)


@pytest.mark.commits
async def test_a_cancelled_ingest_leaves_whole_batches_and_the_logger_usable(
    engine: AsyncEngine, logger: AICallLogger
) -> None:
    calls = [call(i) for i in range(4000)]
    load = asyncio.create_task(logger.ingest(calls, batch_size=200, concurrency=2))
    for _ in range(2000):  # until a first batch committed
        if (await counts(engine))[0]:
            break
        await asyncio.sleep(0.005)
    load.cancel()
    with pytest.raises(asyncio.CancelledError):
        await load
    rows = (await counts(engine))[0]
    assert rows % 200 == 0 and 0 < rows < 4000  # whole batches only
    assert await logger.ingest(calls, batch_size=200) == 4000 - rows
    assert await counts(engine) == (4000, 4000, (await counts(engine))[2])


@pytest.mark.commits
async def test_batches_draw_their_ids_under_the_id_lock(engine: AsyncEngine, logger: AICallLogger) -> None:
    from persistence.ai_calls.ledger_sql import _IDS_LOCK

    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _IDS_LOCK})
        batch = asyncio.create_task(logger.log_batch([call(i) for i in range(10)]))
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
        for _ in range(2000):
            if await scalar(engine, waiting) == 1:
                break
            await asyncio.sleep(0.005)
        assert await scalar(engine, waiting) == 1 and not batch.done()
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _IDS_LOCK})
        assert await batch == 10


async def _terminate_others(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    await asyncio.sleep(0.05)


@pytest.mark.commits
async def test_every_leased_connection_terminated_between_calls(engine: AsyncEngine) -> None:
    async with AICallLogger(engine, connections=3) as log:
        await asyncio.gather(*(log.log_call(**call(i)) for i in range(6)))  # three leases, all idle now
        await _terminate_others(engine)
        # Dead idle leases are discarded, not retried one after the other until the retry budget is gone.
        assert await log.log_call(**call(10)) > 0
        assert await log.log_batch([call(11), call(12)]) == 2
        assert (await log.get_stats(T0, T0 + timedelta(hours=1)))["total_calls"] == 9
        assert log._idle and not any(lease.raw.is_closed() for lease in log._idle)


@pytest.mark.commits
async def test_every_leased_connection_terminated_during_a_call(engine: AsyncEngine) -> None:
    from persistence.ai_calls.logger import _fetch

    async with AICallLogger(engine, connections=2) as log:
        await asyncio.gather(*(log.log_call(**call(i)) for i in range(4)))

        async def sleep_on_the_ledger() -> Any:
            return await log._run(_fetch, "SELECT pg_sleep(0.5), 1 AS one")

        slow = asyncio.create_task(sleep_on_the_ledger())
        for _ in range(500):
            sleeping = await scalar(
                engine, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(0.5)%'"
            )
            if sleeping:
                break
            await asyncio.sleep(0.01)
        await _terminate_others(engine)
        # Retried once on a fresh connection, unless that one was cut too: then a retryable error.
        outcome = (await asyncio.gather(slow, return_exceptions=True))[0]
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, TransientError) and outcome.retryable, outcome
        else:
            assert outcome[0]["one"] == 1
        assert await log.log_call(**call(10)) > 0
        assert not any(lease.raw.is_closed() for lease in log._idle)
    assert (await counts(engine))[0] == 5
