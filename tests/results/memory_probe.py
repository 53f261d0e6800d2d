"""Must-show 3's measurement, in a process of its own: `python -m tests.results.memory_probe MIB
[--whole]` stores MIB MiB of binary content streamed from a generator, reads it back as a stream
(checking length and sha-256), and prints one JSON line: the peak of Python allocations during
the round trip (tracemalloc) and how far the process's peak RSS rose above its RSS before it
(VmHWM, reset just before the round trip; not ru_maxrss, which on Linux carries the pre-exec
peak of the forked parent, here the whole pytest process), plus the timings.

`--whole` reads the content back with `read_bytes` instead: the control showing that the
measurement sees a result held whole in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

from persistence import create_database_engine
from persistence.results import ResultStore

MIB = 1024 * 1024


def status(field: str) -> int:
    """A size from /proc/self/status, in bytes (VmRSS: resident now; VmHWM: this process's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak() -> None:
    """Make VmHWM the current RSS (Linux >= 4.0); if refused, the peak since exec stays an upper bound."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


async def generate(total: int, hasher: hashlib._Hash) -> AsyncIterator[bytes]:
    rng = random.Random(17)
    for _ in range(total // MIB):
        piece = rng.randbytes(MIB)
        hasher.update(piece)
        yield piece


async def main(mib: int, whole: bool) -> None:
    engine = await create_database_engine()
    async with ResultStore(engine) as store:
        warm = await store.put(
            "probe", random.Random(1).randbytes(3 * MIB), mime_type="application/octet-stream"
        )
        async for _ in store.stream("probe", warm.sha256):
            pass  # every code path has run once: imports, statements prepared, buffers sized
        expected = hashlib.sha256()
        reset_peak()
        rss_before = status("VmRSS")
        tracemalloc.start()
        started = time.perf_counter()
        stored = await store.put("probe", generate(mib * MIB, expected), mime_type="video/mp4")
        wrote = time.perf_counter()
        received, seen = 0, hashlib.sha256()
        if whole:
            data = await store.read_bytes("probe", stored.sha256)
            received = len(data)
            seen.update(data)
            del data
        else:
            async for chunk in store.stream("probe", stored.sha256):
                received += len(chunk)
                seen.update(chunk)
        read = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_growth = status("VmHWM") - rss_before
    await engine.dispose()
    print(
        json.dumps(
            {
                "size": stored.size_bytes,
                "received": received,
                "sha256_ok": stored.sha256 == expected.digest() == seen.digest(),
                "chunked": stored.chunked,
                "tracemalloc_peak": peak,
                "rss_peak_growth": rss_growth,
                "write_s": round(wrote - started, 2),
                "read_s": round(read - wrote, 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "--whole" in sys.argv[2:]))
