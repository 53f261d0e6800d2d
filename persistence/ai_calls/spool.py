"""A durable local spool for ledger records that could not be written to PostgreSQL.

Append-only JSON lines (`{"key": <idempotency key>, "record": {...}}`), fsync'd before `append`
returns, so a spooled record survives a crash of this process or of the machine. Replay is
"rotate, write, then delete": the active file is renamed to a numbered `*.replay` segment (new
appends go to a fresh file), the segment is written to the database with idempotent keys, and it is
deleted only after that write committed. A crash mid-replay leaves the segment for the next replay,
and the idempotency keys make writing it twice harmless: every record lands exactly once.

Replay streams a segment (`SegmentReader`: a chunk of lines at a time, so memory stays bounded however
long the outage was) and records how far it got in `<segment>.offset` after each chunk is settled, so a
crash mid-replay redoes one chunk, not the segment. A line that does not decode is moved aside to
`corrupt-<segment>.jsonl` (and logged by the caller), never retried.

A torn last line (the process died inside `append`, so the caller never got an acknowledgement) is
skipped when read and cut off before the next append; a failed append cuts the file back to where it
started, so a retried batch never follows a partial copy of itself. One process owns a spool directory
at a time (an exclusive `flock`); within it, file operations hold a thread lock, so an append left
running in a worker thread by a cancelled task never interleaves with the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persistence.errors import ConfigurationError, SpoolError

ACTIVE = "spool.jsonl"
_SEGMENT_SUFFIX = ".replay"
_OFFSET_SUFFIX = ".offset"
_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    key: str
    record: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CorruptLine:
    """A spool line that does not decode: its bytes as found, and why."""

    raw: bytes
    reason: str


def decode_line(line: bytes) -> SpooledRecord:
    """One spool line; raises (`ValueError`, `KeyError`, `TypeError`, `RecursionError`, ...) when it
    is not a spooled record."""
    item = json.loads(line)
    record = item["record"]
    if not isinstance(record, Mapping):
        raise TypeError(f"record is a {type(record).__name__}, not an object")
    return SpooledRecord(str(item["key"]), record)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Blocking file operations; the async `BatchLogger` calls them through `asyncio.to_thread`."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.directory / "spool.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigurationError(
                f"spool directory {self.directory} is not usable: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool directory {self.directory} is in use by another process") from None
        self._active = self.directory / ACTIVE
        self._mutex = threading.Lock()

    def close(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def append(self, entries: Sequence[SpooledRecord], *, encode: Any = None) -> None:
        """Write `entries` and fsync; when this returns they are on disk."""
        if not entries:
            return
        with self._mutex:
            self._append(entries, encode)

    def _append(self, entries: Sequence[SpooledRecord], encode: Any) -> None:
        data = "".join(
            json.dumps(
                {"key": e.key, "record": e.record}, default=encode, ensure_ascii=False, allow_nan=False
            )
            + "\n"
            for e in entries
        ).encode()
        created = not self._active.exists()
        fd = os.open(self._active, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            start = _drop_torn_tail(fd)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except BaseException:
                # Part of the batch may be on disk; the caller keeps the whole batch and retries, so
                # cut the file back: a torn line in the middle would make the segment unreadable.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.directory)  # the new file's directory entry must survive a crash too

    def segments(self) -> list[Path]:
        """Segments waiting for replay, oldest first."""
        return sorted(self.directory.glob(f"*{_SEGMENT_SUFFIX}"), key=lambda p: int(p.name.split(".")[0]))

    def rotate(self) -> list[Path]:
        """Seal the active file as the newest segment (if it has data); return every pending segment."""
        with self._mutex:
            return self._rotate()

    def _rotate(self) -> list[Path]:
        if self._active.exists() and self._active.stat().st_size > 0:
            numbers = [int(p.name.split(".")[0]) for p in self.segments()]
            target = self.directory / f"{max(numbers, default=0) + 1:012d}{_SEGMENT_SUFFIX}"
            _offset_file(target).unlink(missing_ok=True)  # a stale note must not skip the new lines
            os.replace(self._active, target)
            _fsync_dir(self.directory)
        return self.segments()

    @staticmethod
    def read(segment: Path) -> list[SpooledRecord]:
        """Records of a segment (all in memory: for tools and tests; replay uses `SegmentReader`).

        A torn (unterminated) last line is skipped; a corrupt line raises `SpoolError`."""
        out = []
        with segment.open("rb") as f:
            for line in _complete_lines(f):
                try:
                    out.append(decode_line(line))
                except Exception as exc:  # RecursionError on a deeply nested line too
                    raise SpoolError(
                        f"spool segment {segment.name} has a corrupt line: {type(exc).__name__}"
                    ) from None
        return out

    def set_aside(self, segment: Path, lines: Sequence[CorruptLine]) -> Path:
        """Keep undecodable lines of `segment` in `corrupt-<segment>.jsonl` (fsync'd); returns that path."""
        target = self.directory / f"corrupt-{segment.name.split('.')[0]}.jsonl"
        with self._mutex:
            created = not target.exists()
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                data = b"".join(line.raw + b"\n" for line in lines)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.directory)
        return target

    def done(self, segment: Path) -> None:
        """Forget a segment whose records are committed in the database (or set aside)."""
        with self._mutex:
            # The note first: a crash in between leaves a segment replayed again from its start
            # (harmless), never a note that a later segment of the same number would inherit.
            _offset_file(segment).unlink(missing_ok=True)
            segment.unlink(missing_ok=True)
            _fsync_dir(self.directory)

    def pending_count(self) -> int:
        """Records on disk not yet replayed (active file and segments), counted without decoding."""
        with self._mutex:
            files = [*self.segments(), *([self._active] if self._active.exists() else [])]
            return sum(_count_lines(path, _read_offset(path)) for path in files)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(fd: int) -> int:
    """Cut an unterminated last line (left by a process that died inside `append`, never
    acknowledged), so the next record starts on a line of its own; returns the file's size."""
    size = os.lseek(fd, 0, os.SEEK_END)
    end = size
    while end > 0:
        chunk = os.pread(fd, min(end, 65536), end - min(end, 65536))
        if end == size and chunk.endswith(b"\n"):
            return size
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = end - len(chunk) + newline + 1
            break
        end -= len(chunk)
    os.ftruncate(fd, end)
    return end


def _complete_lines(f: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a binary file, one at a time; an unterminated last line is a torn write: skipped."""
    for line in f:
        if line.endswith(b"\n") and line.strip():
            yield line[:-1]


def _offset_file(segment: Path) -> Path:
    return segment.with_name(segment.name + _OFFSET_SUFFIX)


def _read_offset(path: Path) -> int:
    """How far an earlier replay of `path` got (bytes); 0 (replay it all again: harmless, keys make it
    idempotent) if none did, or the note is unreadable or does not point just after a line of `path`."""
    try:
        offset = int(_offset_file(path).read_text() or 0)
        if offset <= 0:
            return 0
        with path.open("rb") as f:
            f.seek(offset - 1)
            return offset if f.read(1) == b"\n" else 0
    except (OSError, ValueError):
        return 0


def _count_lines(path: Path, offset: int) -> int:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return sum(block.count(b"\n") for block in iter(lambda: f.read(_BLOCK), b""))
    except FileNotFoundError:
        return 0


class SegmentReader:
    """Streams one segment, `chunk(n)` lines at a time, from where an earlier replay stopped.

    Blocking (the `BatchLogger` calls it through `asyncio.to_thread`). `commit()` records that every
    line handed out so far is settled, so a later replay starts after them.
    """

    def __init__(self, segment: Path) -> None:
        self.segment = segment
        self._file = segment.open("rb")
        self.offset = _read_offset(segment)
        self._file.seek(self.offset)
        self._next = self.offset
        self.exhausted = False

    def chunk(self, size: int) -> tuple[list[SpooledRecord], list[CorruptLine]]:
        """Up to `size` lines: the records, and the lines that do not decode."""
        records: list[SpooledRecord] = []
        corrupt: list[CorruptLine] = []
        while len(records) + len(corrupt) < size:
            line = self._file.readline()
            if not line.endswith(b"\n"):  # end of file, or a torn (never acknowledged) last line
                self.exhausted = True
                break
            self._next += len(line)
            if not line.strip():
                continue
            try:
                records.append(decode_line(line[:-1]))
            except Exception as exc:  # anything (RecursionError on deep nesting too): this line only
                corrupt.append(CorruptLine(line[:-1], f"{type(exc).__name__}: {str(exc)[:200]}"))
        return records, corrupt

    def commit(self) -> None:
        """Note (atomically, fsync'd) that the lines read so far are settled."""
        if self._next == self.offset:
            return
        note = _offset_file(self.segment)
        tmp = note.with_name(note.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(self._next).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, note)  # old or new offset after a crash: both are safe (replay is idempotent)
        self.offset = self._next

    def close(self) -> None:
        self._file.close()


def iter_records(segments: Iterable[Path]) -> Iterator[SpooledRecord]:
    for segment in segments:
        yield from Spool.read(segment)
