"""BatchLogger: buffered writes, backpressure, and no loss across a PostgreSQL crash (must-show 2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import AICallLogger, AICallRecord, BatchLogger
from persistence.ai_calls.batch import RejectedCallsError, UnwrittenCallsError
from persistence.ai_calls.batch_outcomes import decode_record, encode_record
from persistence.ai_calls.batch_outcomes import is_refusal as _is_refusal
from persistence.ai_calls.prices import UnpricedCallError
from persistence.ai_calls.spool import Spool, SpooledRecord
from persistence.config import DatabaseConfig
from persistence.engine import build_engine
from persistence.errors import (
    ConflictError,
    DatabaseConnectionError,
    DatabaseError,
    PersistenceError,
    TransientError,
    ValidationError,
)
from persistence.testing import ThrowawayPostgres
from persistence.testing.database import free_port
from tests.logs import capture_logs

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def call(n: int, **kw: object) -> AICallRecord:
    fields: dict[str, object] = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 100 + n % 50,
        "output_tokens": 20,
        "cost_usd": Decimal("0.000150"),
        "request_id": f"batch-{n}",
        "created_at": T0 + timedelta(milliseconds=n),
    }
    fields.update(kw)
    return AICallRecord(**fields)  # type: ignore[arg-type]


async def count(engine: AsyncEngine, sql: str = "SELECT count(*) FROM ai_calls") -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


def test_spool_encoding_round_trips() -> None:
    record = call(1, usage={"prompt_tokens": 101, "completion_tokens": 20}, request_id=None, event_id="e-1")
    again = decode_record(json.loads(json.dumps(encode_record(record))))
    assert again == record


def test_spool_encoding_keeps_usage_with_every_json_type() -> None:
    # The decoded call must keep its idempotency payload (tuples are read back as lists).
    record = call(
        2, usage={"cost": 1.5, "at": "x", "n": 3, "by_tier": {"2": [1, None, True]}, "t": (1, -0.0)}
    )
    line = json.dumps(encode_record(record))
    again = decode_record(json.loads(line))
    assert (again.idempotency_key, again.payload_hash) == (record.idempotency_key, record.payload_hash)
    assert again.usage_json == record.usage_json


def unreachable_engine() -> AsyncEngine:
    """An engine whose server is down: nothing listens on its port."""
    return build_engine(
        DatabaseConfig.model_validate(
            {
                "host": "127.0.0.1",
                "port": free_port(),
                "user": "nobody",
                "database": "nothing",
                "connect_timeout": 1.0,
            }
        )
    )


async def test_calls_spooled_while_down_land_once_after_a_spool_failure(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = Spool.append
    failures: list[int] = []

    def append_failing_once(self: Spool, entries: list[SpooledRecord]) -> None:
        if not failures:
            failures.append(len(entries))
            raise OSError(28, "No space left on device")
        real_append(self, entries)

    monkeypatch.setattr(Spool, "append", append_failing_once)
    down = unreachable_engine()
    calls = [call(n, usage={"cost": 0.5}) for n in range(30)]
    try:
        async with AICallLogger(down) as logger:
            batcher = BatchLogger(logger, batch_size=10, flush_interval=3600, spool_dir=tmp_path,
                                  retry_interval=0.01)  # fmt: skip
            for c in calls:
                await batcher.log(c)
            await batcher.close()  # still down: the calls stay in the spool
    finally:
        await down.dispose()
    assert failures == [10]  # the first spool write failed; that batch was kept and spooled later
    assert (batcher.stats.spooled, batcher.stats.buffered, batcher.stats.written) == (30, 0, 0)

    async with AICallLogger(engine) as logger:
        again = BatchLogger(logger, spool_dir=tmp_path)
        await again.open()  # counts what the first run left (the writer has not run yet)
        assert again.stats.pending_in_spool == 30
        await again.close()
    assert (again.stats.replayed, again.stats.written, again.stats.rejected) == (30, 30, 0)
    assert await count(engine) == 30
    assert await count(engine, "SELECT count(*) FROM ai_calls WHERE usage->>'cost' = '0.5'") == 30


async def test_a_stopped_writer_fails_its_callers_and_close_spools_what_it_left(tmp_path: Path) -> None:
    down = unreachable_engine()
    try:
        async with AICallLogger(down) as logger:
            batcher = BatchLogger(logger, batch_size=5, flush_interval=3600, spool_dir=tmp_path)
            await batcher.log(call(0))
            assert batcher._task is not None
            batcher._task.cancel()  # stands for any bug that would end the writer task
            with contextlib.suppress(asyncio.CancelledError):
                await batcher._task
            with pytest.raises(PersistenceError, match="writer stopped"):
                await asyncio.wait_for(batcher.log(call(1)), timeout=10)  # nobody would write it
            with pytest.raises(PersistenceError, match="writer stopped"):
                await asyncio.wait_for(batcher.close(), timeout=10)
    finally:
        await down.dispose()
    with Spool(tmp_path) as spool:  # close() released the spool and kept the buffered call in it
        assert [r.key for r in spool.read(tmp_path / "spool.jsonl")] == [call(0).idempotency_key]


async def test_a_refused_call_is_settled_once_even_when_it_cannot_be_kept_in_a_file(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "rejected.jsonl").mkdir()  # so the file cannot be written
    async with AICallLogger(engine) as logger:
        await logger.log_record(call(1))
        batcher = BatchLogger(
            logger, batch_size=10, flush_interval=3600, spool_dir=tmp_path, retry_interval=0.01
        )
        for c in (call(0), call(1, input_tokens=999), call(2)):  # key batch-1 reused for another call
            await batcher.log(c)
        await asyncio.wait_for(batcher.close(), timeout=30)
    assert (batcher.stats.written, batcher.stats.rejected, batcher.stats.buffered) == (2, 1, 0)
    assert await count(engine) == 3


async def test_batches_flush_and_close_drain(engine: AsyncEngine, tmp_path: Path) -> None:
    async with AICallLogger(engine) as logger:
        batcher = BatchLogger(logger, batch_size=10, flush_interval=3600, max_buffered=20, spool_dir=tmp_path)
        for n in range(25):
            await batcher.log(call(n))
        await batcher.flush()
        assert await count(engine) == 25
        anonymous = call(99, request_id=None)  # no request id: the batcher pins the generated key
        await batcher.log(anonymous)
        await batcher.log(call(3))  # a retry of a logged call: no second row
        await batcher.close()
        assert await count(engine) == 26
        assert batcher.stats.written == 26 and batcher.stats.buffered == 0 and batcher.stats.spooled == 0


async def test_a_call_the_database_refuses_is_kept_aside_and_the_rest_land(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    async with AICallLogger(engine) as logger:
        await logger.log_record(call(1))
        batcher = BatchLogger(logger, batch_size=10, flush_interval=3600, spool_dir=tmp_path)
        await batcher.log(call(0))
        await batcher.log(call(1, input_tokens=999))  # key batch-1 reused for another call
        await batcher.log(call(2))
        await batcher.close()
        assert await count(engine) == 3
        stats = batcher.stats
        assert (stats.written, stats.rejected, stats.spooled) == (2, 1, 0)
        kept = (tmp_path / "rejected.jsonl").read_text()
        assert '"key": "openai:batch-1"' in kept and '"ConflictError"' in kept


async def test_a_refused_call_in_the_spool_does_not_hold_back_the_others(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # Spooled during an outage, before the database could judge them; one turns out to be refused.
    spool = Spool(tmp_path)
    spool.append([SpooledRecord(r.idempotency_key, encode_record(r)) for r in
                  (call(10), call(11, input_tokens=999), call(12))])  # fmt: skip
    spool.close()
    async with AICallLogger(engine) as logger:
        await logger.log_record(call(11))
        batcher = BatchLogger(logger, spool_dir=tmp_path)
        await batcher.open()
        assert batcher.stats.pending_in_spool == 3
        await batcher.close()
        assert await count(engine) == 3
        stats = batcher.stats
        assert (stats.written, stats.rejected, stats.pending_in_spool) == (2, 1, 0)
        assert '"key": "openai:batch-11"' in (tmp_path / "rejected.jsonl").read_text()


@pytest_asyncio.fixture(loop_scope="session")
async def crashable() -> AsyncIterator[tuple[ThrowawayPostgres, AsyncEngine]]:
    """A private server (the session's is shared) whose commits are durable, so a crash keeps them."""
    pg = ThrowawayPostgres(settings={"synchronous_commit": "on"})
    pg.start()
    try:
        await pg.create_migrated_template()
        name = pg.clone("crash_test")
        engine = build_engine(pg.config(name, pool_size=4, max_overflow=0, connect_timeout=2.0))
        try:
            yield pg, engine
        finally:
            await engine.dispose()
    finally:
        pg.stop()


async def test_postgres_crash_mid_write_loses_and_duplicates_nothing(
    crashable: tuple[ThrowawayPostgres, AsyncEngine], tmp_path: Path
) -> None:
    pg, engine = crashable
    total = 5000
    logger = AICallLogger(engine)
    batcher = BatchLogger(
        logger,
        batch_size=100,
        flush_interval=0.05,
        max_buffered=300,  # backpressure: the producer waits for the writer, so the outage is seen
        spool_dir=tmp_path / "spool",
        retry_interval=0.05,
    )
    crashed = restarted = False
    try:
        for n in range(total):
            await batcher.log(call(n))
            if not crashed and batcher.stats.written >= 1000:
                await asyncio.to_thread(pg.stop_server, "immediate")  # while batches are in flight
                crashed = True
            if crashed and not restarted and batcher.stats.spooled >= 500:
                await asyncio.to_thread(pg.start_server)
                restarted = True
            if n % 50 == 0:
                await asyncio.sleep(0)  # let the writer run, as a real service would
    finally:
        if crashed and not restarted:
            await asyncio.to_thread(pg.start_server)
        await batcher.close()
        await logger.close()
    assert crashed and restarted
    stats = batcher.stats
    rejected = tmp_path / "spool" / "rejected.jsonl"
    assert stats.rejected == 0, rejected.read_text() if rejected.exists() else stats
    assert stats.spooled >= 500
    assert stats.replayed == stats.spooled and stats.pending_in_spool == 0
    assert await count(engine) == total
    assert await count(engine, "SELECT count(DISTINCT request_id) FROM ai_calls") == total
    assert await count(engine, "SELECT count(*) FROM ai_call_keys") == total
    assert not list((tmp_path / "spool").glob("*.replay"))


# -- issue 13: no call is ever stuck behind a bad one; recovery needs no new traffic -------------

REFUSE_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.customer_id = 'poison' THEN
        RAISE EXCEPTION 'this customer is refused';  -- P0001: neither an outage nor a constraint
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON ai_calls FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


async def execute(engine: AsyncEngine, sql: str) -> None:
    async with engine.begin() as conn:
        await (await conn.get_raw_connection()).driver_connection.execute(sql)  # type: ignore[union-attr]


@pytest.mark.parametrize("spooled", [True, False], ids=["spool_dir", "no_spool_dir"])
async def test_one_call_the_database_refuses_among_2000_is_isolated_and_the_rest_are_written(
    engine: AsyncEngine, tmp_path: Path, spooled: bool
) -> None:
    await execute(engine, REFUSE_POISON)  # real PostgreSQL refuses it; validation cannot know
    poison = call(1000, customer_id="poison")
    calls = [call(n) for n in range(1000)] + [poison] + [call(n) for n in range(1001, 2001)]
    async with AICallLogger(engine) as logger:
        batcher = BatchLogger(logger, spool_dir=tmp_path if spooled else None, retry_interval=0.01)
        for c in calls:
            await batcher.log(c)
        if spooled:
            stats = await asyncio.wait_for(batcher.close(), timeout=120)  # a guard against a hang only
            kept = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
            assert [(k["key"], k["sqlstate"], k["reason"]) for k in kept] == [
                (poison.idempotency_key, "P0001", "this customer is refused [SQLSTATE P0001]")
            ]
            assert decode_record(kept[0]["record"]) == poison
        else:
            with pytest.raises(RejectedCallsError) as refused:
                await asyncio.wait_for(batcher.close(), timeout=120)
            [rejected] = refused.value.rejected
            assert rejected.record == poison
            assert isinstance(rejected.error, DatabaseError) and rejected.error.sqlstate == "P0001"
            assert refused.value.__cause__ is rejected.error
            assert poison.idempotency_key in str(refused.value)
            stats = batcher.stats
    assert (stats.written, stats.rejected, stats.buffered, stats.spooled, stats.pending_in_spool) == (
        2000,
        1,
        0,
        0,
        0,
    )
    assert await count(engine) == 2000
    assert await count(engine, "SELECT count(*) FROM ai_calls WHERE customer_id = 'poison'") == 0


@pytest.mark.parametrize("spooled", [True, False], ids=["spool_dir", "no_spool_dir"])
async def test_a_call_postgres_could_not_store_is_refused_at_log_and_the_2000_others_are_written(
    engine: AsyncEngine, tmp_path: Path, spooled: bool
) -> None:
    # A lone surrogate used to pass validation and fail inside COPY, taken for an outage for ever.
    async with AICallLogger(engine) as logger:
        batcher = BatchLogger(logger, spool_dir=tmp_path if spooled else None, retry_interval=0.01)
        for n in range(2000):
            await batcher.log(call(n))
            if n == 1000:
                with pytest.raises(ValidationError, match="customer_id contains a lone surrogate"):
                    await batcher.log(
                        {**encode_record(call(n)), "request_id": "bad", "customer_id": "c\udc80"}
                    )
        stats = await asyncio.wait_for(batcher.close(), timeout=120)  # a guard against a hang only
    assert (stats.written, stats.rejected, stats.buffered, stats.pending_in_spool) == (2000, 0, 0, 0)
    assert await count(engine) == 2000
    assert not (tmp_path / "rejected.jsonl").exists()  # the caller got the error; nothing was accepted


async def test_after_a_10s_outage_the_spool_replays_by_itself_with_no_new_traffic(
    crashable: tuple[ThrowawayPostgres, AsyncEngine], tmp_path: Path, record_property: Any
) -> None:
    pg, engine = crashable
    logger = AICallLogger(engine)
    batcher = BatchLogger(logger, batch_size=50, flush_interval=3600, spool_dir=tmp_path, retry_interval=0.05,
                          max_retry_interval=1.0)  # fmt: skip
    restarted = False
    await asyncio.to_thread(pg.stop_server, "immediate")
    try:
        for n in range(300):
            await batcher.log(call(n))
        await batcher.flush()  # written or spooled: the server is down, so spooled
        assert (batcher.stats.spooled, batcher.stats.pending_in_spool, batcher.stats.written) == (300, 300, 0)
        await asyncio.sleep(10)  # the outage; nobody logs or flushes from here on
        await asyncio.to_thread(pg.start_server)
        restarted = True
        back = time.monotonic()
        while batcher.stats.pending_in_spool:  # the writer probes with backoff and replays by itself
            await asyncio.wait_for(asyncio.sleep(0.05), timeout=1)
            assert time.monotonic() - back < 120, "the spool was never replayed"  # a hang guard only
        record_property("seconds_from_restart_to_empty_spool", round(time.monotonic() - back, 2))
        assert await count(engine) == 300
        assert (batcher.stats.replayed, batcher.stats.written) == (300, 300)
        assert not files(tmp_path, "*.replay")
    finally:
        if not restarted:
            await asyncio.to_thread(pg.start_server)
        await batcher.close()
        await logger.close()


async def test_spool_lines_that_do_not_decode_are_set_aside_with_a_log_line(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    good = [call(n) for n in range(5)]
    with Spool(tmp_path) as spool:
        spool.append([SpooledRecord(r.idempotency_key, encode_record(r)) for r in good[:2]])
        with (tmp_path / "spool.jsonl").open("ab") as f:
            f.write(b"not json at all\n")
            f.write(b'{"key": "k", "record": {"provider": "openai"}}\n')  # JSON, but no call
        spool.append([SpooledRecord(r.idempotency_key, encode_record(r)) for r in good[2:]])
    with capture_logs() as logs:
        async with AICallLogger(engine) as logger:
            batcher = BatchLogger(logger, spool_dir=tmp_path)
            stats = await asyncio.wait_for(batcher.close(), timeout=60)  # a guard against a hang only
    assert (stats.written, stats.replayed, stats.set_aside, stats.pending_in_spool) == (5, 5, 2, 0)
    assert await count(engine) == 5
    [aside] = files(tmp_path, "corrupt-*.jsonl")
    assert aside.read_bytes().splitlines()[0] == b"not json at all"
    assert len(aside.read_bytes().splitlines()) == 2
    assert not files(tmp_path, "*.replay")
    assert any(e["event"] == "spooled lines that do not decode were set aside" for e in logs)


async def test_a_spool_line_nested_too_deep_is_set_aside_and_the_others_written(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    good = [call(n) for n in range(4)]
    with Spool(tmp_path) as spool:
        spool.append([SpooledRecord(r.idempotency_key, encode_record(r)) for r in good[:2]])
        with (tmp_path / "spool.jsonl").open("ab") as f:
            f.write(b"[" * 200_000 + b"\n")  # json.loads: RecursionError
        spool.append([SpooledRecord(r.idempotency_key, encode_record(r)) for r in good[2:]])
    with capture_logs() as logs:
        async with AICallLogger(engine) as logger:
            batcher = BatchLogger(logger, spool_dir=tmp_path)
            stats = await asyncio.wait_for(batcher.close(), timeout=60)  # a guard against a hang only
    assert (stats.written, stats.replayed, stats.set_aside, stats.pending_in_spool) == (4, 4, 1, 0)
    assert await count(engine) == 4
    [aside] = files(tmp_path, "corrupt-*.jsonl")
    assert aside.read_bytes() == b"[" * 200_000 + b"\n"
    assert not files(tmp_path, "*.replay")
    assert any(e["event"] == "spooled lines that do not decode were set aside" for e in logs)


def forged(n: int, **fields: object) -> AICallRecord:
    """A record carrying a value validation would refuse (set after it): how the batch logger copes
    with a record it cannot spool, whatever the reason."""
    record = call(n)
    for name, value in fields.items():
        object.__setattr__(record, name, value)
    return record


async def test_a_call_that_cannot_be_spooled_is_set_aside_and_does_not_block_the_others(
    tmp_path: Path,
) -> None:
    down = unreachable_engine()
    bad = forged(0, customer_id="bad\ud800")  # the spool line cannot be encoded as UTF-8
    good = [call(n) for n in range(1, 25)]
    try:
        async with AICallLogger(down) as logger:
            batcher = BatchLogger(logger, batch_size=10, flush_interval=3600, spool_dir=tmp_path,
                                  retry_interval=0.01)  # fmt: skip
            for c in [bad, *good]:
                await batcher.log(c)
            with capture_logs() as logs:
                await asyncio.wait_for(batcher.flush(), timeout=60)  # a guard against a hang only
            stats = await asyncio.wait_for(batcher.close(timeout=3), timeout=60)
    finally:
        await down.dispose()
    assert (stats.buffered, stats.spooled, stats.rejected, stats.pending_in_spool) == (0, 24, 1, 24)
    [rejected] = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert rejected["key"] == bad.idempotency_key and rejected["error"] == "UnicodeEncodeError"
    assert any(e["event"] == "AI call could not be spooled; set aside" for e in logs)
    spooled = [r.key for seg in Spool(tmp_path).rotate() for r in Spool.read(seg)]
    assert spooled == [c.idempotency_key for c in good]


async def test_unwritten_calls_error_says_the_spool_failed_when_one_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: Spool, entries: list[SpooledRecord]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Spool, "append", disk_full)
    down = unreachable_engine()
    calls = [call(n) for n in range(3)]
    try:
        async with AICallLogger(down) as logger:
            batcher = BatchLogger(logger, flush_interval=3600, spool_dir=tmp_path, retry_interval=0.01)
            for c in calls:
                await batcher.log(c)
            with pytest.raises(UnwrittenCallsError, match="the spool could not be written") as unwritten:
                await asyncio.wait_for(batcher.close(timeout=3), timeout=60)  # the guard: a hang only
    finally:
        await down.dispose()
    assert "no spool_dir" not in str(unwritten.value)
    assert unwritten.value.calls == calls


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"flush_interval": float("nan")}, "flush_interval"),
        ({"flush_interval": float("inf")}, "flush_interval"),
        ({"flush_interval": "5"}, "flush_interval"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"retry_interval": float("nan")}, "retry_interval"),
        ({"max_retry_interval": float("nan")}, "max_retry_interval"),
        ({"max_retry_interval": 0.5, "retry_interval": 1.0}, "max_retry_interval"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"batch_size": "10"}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_buffered": None}, "max_buffered"),
        ({"max_buffered": 5, "batch_size": 10}, "max_buffered"),
        ({"spool_dir": 42}, "spool_dir"),
        ({"overflow": "oldest"}, "overflow"),
        ({"overflow": "spill"}, "spool_dir"),  # spilling needs a spool
    ],
)
async def test_constructor_arguments_are_validated(kwargs: dict[str, Any], name: str) -> None:
    down = unreachable_engine()
    try:
        async with AICallLogger(down) as logger:
            with pytest.raises(ValidationError, match=name):
                BatchLogger(logger, **kwargs)
            with pytest.raises(ValidationError, match="logger"):
                BatchLogger(None)  # type: ignore[arg-type]
    finally:
        await down.dispose()


@pytest.mark.parametrize("bad", [float("nan"), -1, 0, "3", float("inf")])
async def test_close_timeout_is_validated(bad: Any) -> None:
    down = unreachable_engine()
    try:
        async with AICallLogger(down) as logger:
            batcher = BatchLogger(logger)
            with pytest.raises(ValidationError, match="timeout"):
                await batcher.close(timeout=bad)
            await batcher.close(timeout=3)
    finally:
        await down.dispose()


async def test_close_returns_within_its_timeout_and_spools_what_it_could_not_write(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # The database answers but never finishes: a transaction holds a lock the writer needs.
    async with engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE ai_call_keys IN ACCESS EXCLUSIVE MODE"))
        async with AICallLogger(engine) as logger:
            batcher = BatchLogger(logger, batch_size=10, flush_interval=3600, spool_dir=tmp_path)
            for n in range(25):
                await batcher.log(call(n))
            closing = asyncio.ensure_future(batcher.close(timeout=2))
            done, _ = await asyncio.wait([closing], timeout=60)  # a guard against a hang only
            assert done, "close(timeout=2) did not return"
            stats = closing.result()
        await blocker.rollback()
    assert (stats.buffered, stats.written, stats.pending_in_spool) == (0, 0, 25)
    async with AICallLogger(engine) as logger:
        again = await asyncio.wait_for(BatchLogger(logger, spool_dir=tmp_path).close(), timeout=60)
    assert (again.replayed, again.pending_in_spool) == (25, 0)
    assert await count(engine) == 25


async def test_close_without_a_spool_hands_back_what_it_could_not_write(tmp_path: Path) -> None:
    down = unreachable_engine()
    try:
        async with AICallLogger(down) as logger:
            batcher = BatchLogger(logger, batch_size=10, flush_interval=3600, retry_interval=0.01)
            calls = [call(n) for n in range(5)]
            for c in calls:
                await batcher.log(c)
            with pytest.raises(UnwrittenCallsError) as unwritten:
                await asyncio.wait_for(batcher.close(timeout=2), timeout=60)  # the guard: a hang only
    finally:
        await down.dispose()
    assert unwritten.value.calls == calls and unwritten.value.retryable
    assert isinstance(unwritten.value, PersistenceError)


async def test_a_full_buffer_spills_to_the_spool_or_drops_by_count_never_silently(tmp_path: Path) -> None:
    down = unreachable_engine()
    try:
        async with AICallLogger(down) as logger:
            # The producer never yields, so the writer cannot empty the buffer: it fills at once.
            spilling = BatchLogger(logger, batch_size=5, max_buffered=5, spool_dir=tmp_path, overflow="spill")
            for n in range(50):
                await spilling.log(call(n))
            assert (spilling.stats.queued, spilling.stats.waited, spilling.stats.dropped) == (50, 0, 0)
            spilled = await spilling.close(timeout=5)
            dropping = BatchLogger(logger, batch_size=5, max_buffered=5, retry_interval=0.01, overflow="drop")
            with capture_logs() as logs:
                for n in range(50):
                    await dropping.log(call(n))
            dropped = dropping.stats
            with pytest.raises(UnwrittenCallsError):
                await dropping.close(timeout=1)
    finally:
        await down.dispose()
    assert spilled.spooled == spilled.pending_in_spool == 50
    assert (dropped.queued, dropped.dropped, dropped.buffered) == (5, 45, 5)
    assert [line["dropped"] for line in logs if "dropped" in line["event"]] == [1]  # logged, not per call


async def test_the_spool_is_opened_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened_in: list[threading.Thread] = []
    real_init = Spool.__init__

    def recording_init(self: Spool, directory: Path | str) -> None:
        opened_in.append(threading.current_thread())
        real_init(self, directory)

    monkeypatch.setattr(Spool, "__init__", recording_init)
    down = unreachable_engine()
    try:
        async with AICallLogger(down) as logger:
            batcher = BatchLogger(logger, spool_dir=tmp_path / "spool")
            assert not (tmp_path / "spool").exists()  # constructing does no file I/O
            await batcher.log(call(0))
            assert opened_in and opened_in[0] is not threading.main_thread()
            await batcher.close()
    finally:
        await down.dispose()


async def test_a_failed_background_fold_is_logged(engine: AsyncEngine, tmp_path: Path) -> None:
    await execute(
        engine,
        "CREATE FUNCTION no_fold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'folds are refused'; END $$; "
        "CREATE TRIGGER no_fold BEFORE INSERT ON ai_call_model_hourly FOR EACH ROW EXECUTE FUNCTION no_fold();",
    )
    with capture_logs() as logs:
        async with AICallLogger(engine, fold_every=1) as logger:
            async with BatchLogger(logger, spool_dir=tmp_path) as batcher:
                await batcher.log(call(0))
            await asyncio.wait_for(logger.close(), timeout=60)
    assert await count(engine) == 1  # the call is written; only its fold failed
    assert any(e["event"] == "background rollup fold failed" and e["sqlstate"] == "P0001" for e in logs)


async def run_outside_a_transaction(engine: AsyncEngine, *statements: str) -> None:
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        for statement in statements:
            await raw.execute(statement)


@pytest.mark.commits
async def test_a_failure_that_would_fail_every_call_is_an_outage_not_a_refusal(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # A read-only database (a standby after a failover) refuses every write with 25006: nothing about
    # the calls is wrong, so none is rejected; they wait in the spool and land once writes are back.
    alter = "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = {}', current_database()); END $$"
    await run_outside_a_transaction(engine, alter.format("on"))
    await engine.dispose()  # new sessions pick the setting up
    async with AICallLogger(engine) as logger:
        batcher = BatchLogger(logger, batch_size=10, flush_interval=3600, spool_dir=tmp_path, retry_interval=0.05,
                              max_retry_interval=0.5)  # fmt: skip
        for n in range(20):
            await batcher.log(call(n))
        await batcher.flush()
        assert (batcher.stats.spooled, batcher.stats.rejected, batcher.stats.written) == (20, 0, 0)
        await run_outside_a_transaction(
            engine,
            "SET default_transaction_read_only = off",
            alter.format("off"),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        started = time.monotonic()
        while batcher.stats.pending_in_spool:  # replayed by the writer's probe, no new traffic
            await asyncio.sleep(0.05)
            assert time.monotonic() - started < 120, "the spool was never replayed"  # a hang guard only
        stats = await batcher.close()
    assert (stats.written, stats.rejected, stats.pending_in_spool) == (20, 0, 0)
    assert await count(engine) == 20
    assert not (tmp_path / "rejected.jsonl").exists()


@pytest.mark.parametrize(
    ("error", "refusal"),
    [
        (ConflictError("key reused"), True),
        (ValidationError("bad value"), True),
        (UnpricedCallError("no price"), True),
        (DatabaseError("check", sqlstate="23514"), True),
        (DatabaseError("raised by a trigger", sqlstate="P0001"), True),
        (DatabaseError("unsupported unicode escape", sqlstate="22P05"), True),
        (UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed"), True),
        (TransientError("connection lost"), False),
        (TransientError("serialization failure", sqlstate="40001"), False),
        (
            DatabaseConnectionError(
                host="h", port=5432, database="d", user="u", reason="bad password", sqlstate="28P01"
            ),
            False,
        ),
        (DatabaseError("read-only transaction", sqlstate="25006"), False),
        (DatabaseError("permission denied", sqlstate="42501"), False),
        (DatabaseError("relation does not exist", sqlstate="42P01"), False),
        (DatabaseError("database error: InterfaceError"), False),
        (PersistenceError("AICallLogger is closed"), False),
        (ConnectionRefusedError(), False),
        (TimeoutError(), False),
    ],
)
def test_only_a_verdict_on_a_row_is_a_refusal(error: BaseException, refusal: bool) -> None:
    assert _is_refusal(error) is refusal
