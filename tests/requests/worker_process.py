"""A worker process for the concurrency test: `python -m tests.requests.worker_process N STOP_FILE`
runs N worker tasks (claim a batch, complete each) against DATABASE_URL until STOP_FILE appears.
It prints `ready` once connected and claiming (the parent produces only after that line, so this
process takes part however fast the parent's own workers are), then, at the end, the ids it
completed and how many completions were refused, as JSON."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

from persistence import create_database_engine
from persistence.requests import LeaseLostError, Requests, Worker


async def main(n: int, stop: Path) -> None:
    engine = await create_database_engine()
    requests = Requests(engine)
    completed: list[str] = []
    refused = 0

    async def worker(w: int) -> None:
        nonlocal refused
        me = Worker.local(f"child-{w}")
        while not stop.exists():  # noqa: ASYNC240 - a barrier between processes
            claims = await requests.claim(me, 10)
            if not claims:
                await asyncio.sleep(0.005)
                continue
            for claim in claims:
                digest = hashlib.sha256(claim.prompt.encode()).digest()
                try:
                    await requests.complete(claim, prompt_tokens=3, completion_tokens=4, result_sha256=digest)
                except LeaseLostError:
                    refused += 1
                else:
                    completed.append(str(claim.request_id))

    async def announce() -> None:
        # Connected and able to claim; the parent has produced nothing yet, so nothing is taken.
        assert await requests.claim(Worker.local("child-probe"), 1) == []
        print("ready", flush=True)

    try:
        await announce()
        await asyncio.gather(*(worker(w) for w in range(n)))
    finally:
        await engine.dispose()
    print(json.dumps({"completed": completed, "refused": refused}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
