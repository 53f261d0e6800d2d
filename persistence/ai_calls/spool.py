"""A durable local spool for ledger records that could not be written to PostgreSQL.

Append-only JSON lines (`{"key": <idempotency key>, "record": {...}}`), fsync'd before `append`
returns, so a spooled record survives a crash of this process or of the machine. Replay is
"rotate, write, then delete": the active file is renamed to a numbered `*.replay` segment (new
appends go to a fresh file), the segment is written to the database with idempotent keys, and it is
deleted only after that write committed. A crash mid-replay leaves the segment for the next replay,
and the idempotency keys make writing it twice harmless: every record lands exactly once.

A torn last line (the process died inside `append`, so the caller never got an acknowledgement) is
skipped when read and cut off before the next append; a failed append cuts the file back to where it
started, so a retried batch never follows a partial copy of itself. One process owns a spool directory at a time (an exclusive `flock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persistence.errors import ConfigurationError, SpoolError

ACTIVE = "spool.jsonl"
_SEGMENT_SUFFIX = ".replay"


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    key: str
    record: Mapping[str, Any]


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

    def close(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def append(self, entries: Sequence[SpooledRecord], *, encode: Any = None) -> None:
        """Write `entries` and fsync; when this returns they are on disk."""
        if not entries:
            return
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
        if self._active.exists() and self._active.stat().st_size > 0:
            numbers = [int(p.name.split(".")[0]) for p in self.segments()]
            target = self.directory / f"{max(numbers, default=0) + 1:012d}{_SEGMENT_SUFFIX}"
            os.replace(self._active, target)
            _fsync_dir(self.directory)
        return self.segments()

    @staticmethod
    def read(segment: Path) -> list[SpooledRecord]:
        """Records of a segment; a torn (unterminated) last line is skipped."""
        raw = segment.read_bytes()
        out = []
        for line in _complete_lines(raw):
            try:
                item = json.loads(line)
                out.append(SpooledRecord(str(item["key"]), item["record"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise SpoolError(
                    f"spool segment {segment.name} has a corrupt line: {type(exc).__name__}"
                ) from None
        return out

    def done(self, segment: Path) -> None:
        """Forget a segment whose records are committed in the database."""
        segment.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def pending_count(self) -> int:
        """Records on disk not yet replayed (active file and segments)."""
        files = [*self.segments(), *([self._active] if self._active.exists() else [])]
        return sum(len(self.read(path)) for path in files)

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


def _complete_lines(raw: bytes) -> Iterator[bytes]:
    lines = raw.split(b"\n")
    # Everything after the last newline is a torn write (or empty).
    yield from (line for line in lines[:-1] if line.strip())


def iter_records(segments: Iterable[Path]) -> Iterator[SpooledRecord]:
    for segment in segments:
        yield from Spool.read(segment)
