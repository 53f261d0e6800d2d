"""A writer process for the cross-process alert test: `python -m tests.ai_calls.alert_writer TAG N
WEBHOOK_URL GO_FILE` logs N calls of $1 concurrently (after GO_FILE appears) through a logger with
an alert evaluator and a dispatcher of its own, as one replica of an application would; each
writer also evaluates on demand after its call."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from persistence import create_database_engine
from persistence.ai_calls import AICallLogger
from persistence.ai_calls.alert_delivery import AlertDispatcher, WebhookSink
from persistence.ai_calls.alerts import AlertEvaluator

AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def main(tag: str, n: int, url: str, go: Path) -> None:
    engine = await create_database_engine()
    dispatcher = AlertDispatcher(engine, {"default": WebhookSink(url)}, backoff=0)
    evaluator = AlertEvaluator(engine, dispatcher=dispatcher, interval=0)
    async with AICallLogger(engine, alerts=evaluator, connections=8) as log:
        Path(f"{go}.{tag}.ready").touch()  # noqa: ASYNC240 - a barrier between processes
        while not go.exists():  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.01)

        async def writer(i: int) -> None:
            await log.log_call("openai", "gpt-4o", 100, 10, cost_usd=Decimal(1), organization_id="acme",
                               request_id=f"{tag}-{i}", created_at=AT)  # fmt: skip
            # Besides the logger's own evaluation: every writer evaluates too, so dozens of
            # evaluations in two processes race for the same crossing.
            await evaluator.evaluate(AT)

        await asyncio.gather(*(writer(i) for i in range(n)))
    await evaluator.close()
    await dispatcher.close()
    await engine.dispose()
    print("done")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)  # a failed evaluation or dispatch shows in the test's report
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])))
