"""The durable spool: appended records survive, torn lines are skipped, segments go only when done."""

from __future__ import annotations

import os
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest

from persistence.ai_calls.spool import ACTIVE, SegmentReader, Spool, SpooledRecord, iter_records
from persistence.errors import SpoolError


def rec(n: int) -> SpooledRecord:
    return SpooledRecord(f"key-{n}", {"provider": "openai", "cost_usd": str(Decimal(n) / 1000)})


def test_append_rotate_replay_done(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([rec(1), rec(2)])
        spool.append([rec(3)])
        assert spool.pending_count() == 3
        [segment] = spool.rotate()
        spool.append([rec(4)])  # appends after a rotation go to a fresh file
        assert [r.key for r in iter_records([segment])] == ["key-1", "key-2", "key-3"]
        assert spool.rotate() == [segment, *spool.segments()[1:]]
        assert len(spool.segments()) == 2
        spool.done(segment)
        assert [r.key for r in iter_records(spool.segments())] == ["key-4"]
        assert Spool.read(spool.segments()[0])[0].record == {"provider": "openai", "cost_usd": "0.004"}


def test_torn_last_line_is_skipped_and_corruption_is_an_error(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([rec(1)])
        with (tmp_path / ACTIVE).open("ab") as f:
            f.write(b'{"key": "key-2", "rec')  # the process died inside append
        [segment] = spool.rotate()
        assert [r.key for r in Spool.read(segment)] == ["key-1"]
        segment.write_bytes(b"not json\n")
        with pytest.raises(SpoolError, match="corrupt"):
            Spool.read(segment)


def test_one_owner_per_directory(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path)
    Spool(tmp_path).close()  # free again once closed


def test_an_append_after_a_torn_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([rec(1)])
        with (tmp_path / ACTIVE).open("ab") as f:
            f.write(b'{"key": "key-2", "rec')  # the process died inside append, unacknowledged
        spool.append([rec(3)])  # the next run
        assert spool.pending_count() == 2
        assert [r.key for r in Spool.read(tmp_path / ACTIVE)] == ["key-1", "key-3"]


def test_a_failed_append_leaves_no_partial_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write, calls = os.write, []

    def write_half_then_fail(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    with Spool(tmp_path) as spool:
        spool.append([rec(1)])
        monkeypatch.setattr(os, "write", write_half_then_fail)
        with pytest.raises(OSError, match="No space"):
            spool.append([rec(2), rec(3)])
        spool.append([rec(2), rec(3)])  # the batch is retried whole
        monkeypatch.undo()
        assert [r.key for r in Spool.read(tmp_path / ACTIVE)] == ["key-1", "key-2", "key-3"]


def test_a_segment_is_streamed_in_chunks_with_bounded_memory(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        for start in range(0, 100_000, 5000):
            spool.append([rec(n) for n in range(start, start + 5000)])
        [segment] = spool.rotate()
    size = segment.stat().st_size
    tracemalloc.start()
    try:
        reader = SegmentReader(segment)
        seen, last = 0, ""
        while not reader.exhausted:
            records, corrupt = reader.chunk(100)
            assert len(records) <= 100 and not corrupt
            seen += len(records)
            last = records[-1].key if records else last
        reader.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (seen, last) == (100_000, "key-99999")
    assert peak < size / 20, (peak, size)  # a whole-segment read holds every line at once


def test_a_replay_resumes_after_the_last_committed_chunk(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([rec(n) for n in range(10)])
        [segment] = spool.rotate()
        reader = SegmentReader(segment)
        first, _ = reader.chunk(4)
        reader.commit()  # these 4 are settled
        reader.chunk(4)  # read but never committed (the process died, or the database went down)
        reader.close()
        assert spool.pending_count() == 6
        again = SegmentReader(segment)
        rest, _ = again.chunk(100)
        again.close()
        assert [r.key for r in first] == [f"key-{n}" for n in range(4)]
        assert [r.key for r in rest] == [f"key-{n}" for n in range(4, 10)]
        for wrong in ("999", "5", "x"):  # beyond the end, mid-line, garbage: replay it all again
            (tmp_path / (segment.name + ".offset")).write_text(wrong)
            assert spool.pending_count() == 10
        spool.done(segment)
        assert not list(tmp_path.glob("*.offset")) and spool.pending_count() == 0
        # A new segment that reuses the number starts from its beginning, whatever a note said.
        (tmp_path / (segment.name + ".offset")).write_text("999")
        spool.append([rec(20)])
        [again_segment] = spool.rotate()
        assert again_segment.name == segment.name
        assert [r.key for r in SegmentReader(again_segment).chunk(10)[0]] == ["key-20"]


def test_lines_that_do_not_decode_are_handed_out_apart_and_set_aside(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([rec(1)])
        with (tmp_path / ACTIVE).open("ab") as f:
            f.write(b"\x00garbage\n[1, 2]\n")
        spool.append([rec(2)])
        [segment] = spool.rotate()
        reader = SegmentReader(segment)
        records, corrupt = reader.chunk(10)
        reader.close()
        assert [r.key for r in records] == ["key-1", "key-2"]
        assert [c.raw for c in corrupt] == [b"\x00garbage", b"[1, 2]"]
        kept = spool.set_aside(segment, corrupt)
        assert kept.name == "corrupt-000000000001.jsonl"
        assert kept.read_bytes() == b"\x00garbage\n[1, 2]\n"


def test_a_line_nested_too_deep_to_decode_is_handed_out_apart(tmp_path: Path) -> None:
    # json.loads raises RecursionError on it: that line is corrupt, not an outage of the whole segment.
    with Spool(tmp_path) as spool:
        spool.append([rec(1)])
        with (tmp_path / ACTIVE).open("ab") as f:
            f.write(b"[" * 200_000 + b"\n")
        spool.append([rec(2)])
        [segment] = spool.rotate()
        reader = SegmentReader(segment)
        records, corrupt = reader.chunk(10)
        reader.close()
        assert [r.key for r in records] == ["key-1", "key-2"]
        assert [c.raw for c in corrupt] == [b"[" * 200_000]
        assert corrupt[0].reason.startswith("RecursionError")
