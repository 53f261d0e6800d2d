"""`SyncAICallLogger`: the ledger from plain synchronous code (seed 000's integration example).

asyncpg connections belong to one event loop, so the facade owns a private loop in a daemon thread,
creates its engine there, and runs each call on it (`run_coroutine_threadsafe(...).result()`).
Every method blocks until the database answered, and raises what `AICallLogger` raises; a call
that takes longer than `timeout` is cancelled and raises `TransientError`.
Thread-safe: several threads may log through one facade.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

from persistence.ai_calls.logger import AICallLogger, Stats, _iterable_of_calls
from persistence.ai_calls.record import AICallRecord, positive_int, positive_seconds
from persistence.config import DatabaseConfig
from persistence.errors import PersistenceError, TransientError

__all__ = ["SyncAICallLogger"]

T = TypeVar("T")


def _config(db_config: DatabaseConfig | Mapping[str, Any] | str | None) -> DatabaseConfig:
    if db_config is None:
        return DatabaseConfig()
    if isinstance(db_config, DatabaseConfig):
        return db_config
    if isinstance(db_config, str):
        return DatabaseConfig.model_validate({"url": db_config})
    return DatabaseConfig.model_validate(dict(db_config))  # seed 000's {'host', 'port', 'database', ...}


class SyncAICallLogger:
    """Blocking `log_call` / `log_batch` / `ingest` / `get_stats` / `close` over an `AICallLogger`.

    `db_config`: a `DatabaseConfig`, seed 000's dict (`host`, `port`, `database`, `user`,
    `password`), a URL, or None for the environment (`DATABASE_URL`, `DB_*`, embedded server).
    """

    def __init__(
        self,
        db_config: DatabaseConfig | Mapping[str, Any] | str | None = None,
        *,
        connections: int = 4,
        timeout: float | None = 60.0,
    ) -> None:
        # Checked before the loop thread starts: a wrong argument is a ValidationError naming it.
        connections = positive_int("connections", connections)
        self.timeout = None if timeout is None else positive_seconds("timeout", timeout)
        config = _config(db_config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="persistence-ai-call-logger", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._logger = self._call(self._open(config, connections))
        except BaseException:
            self._stop()
            raise

    @staticmethod
    async def _open(config: DatabaseConfig, connections: int) -> AICallLogger:
        from persistence.engine import create_database_engine

        engine = await create_database_engine(config)
        return AICallLogger(engine, connections=connections)

    def _call(self, coro: Coroutine[Any, Any, T], *, timed: bool = True) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise PersistenceError("SyncAICallLogger cannot be used from its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout if timed else None)
        except TimeoutError:
            if future.done():  # finished meanwhile, or the call's own error: its outcome stands
                return future.result()
            future.cancel()
            raise TransientError(
                f"no answer from the database within {self.timeout} s; the call was cancelled "
                "(retrying it with the same request_id or event_id is safe)"
            ) from None
        except BaseException:
            future.cancel()  # Ctrl-C while waiting stops the call (or the load) too
            raise

    def _check(self) -> None:
        if self._closed:
            raise PersistenceError("SyncAICallLogger is closed")

    def log_call(
        self,
        provider: str,
        model: str,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: Decimal | int | str | float | None = None,
        latency_ms: int | None = None,
        customer_id: str | None = None,
        organization_id: str | None = None,
        product_id: str | None = None,
        environment: str | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
        **extra: Any,
    ) -> int:
        """`AICallLogger.log_call`, blocking: returns the id once the row is committed."""
        self._check()
        return self._call(
            self._logger.log_call(
                provider,
                model,
                input_tokens,
                output_tokens,
                cost_usd,
                latency_ms,
                customer_id,
                organization_id,
                product_id,
                environment,
                request_id,
                trace_id,
                **extra,
            )
        )

    def log_batch(self, calls: Iterable[AICallRecord | Mapping[str, Any]]) -> int:
        """`AICallLogger.log_batch`, blocking: the number of new rows."""
        self._check()
        return self._call(self._logger.log_batch(list(_iterable_of_calls(calls))))

    def ingest(
        self,
        calls: Iterable[AICallRecord | Mapping[str, Any]],
        *,
        batch_size: int = 5000,
        concurrency: int = 2,
    ) -> int:
        """`AICallLogger.ingest`, blocking and without the per-call timeout: the number of new rows.

        `calls` is read into a list first, in the calling thread."""
        self._check()
        load = self._logger.ingest(
            list(_iterable_of_calls(calls)), batch_size=batch_size, concurrency=concurrency
        )
        return self._call(load, timed=False)

    def get_stats(self, start_date: datetime, end_date: datetime) -> Stats:
        self._check()
        return self._call(self._logger.get_stats(start_date, end_date))

    def close(self) -> None:
        """Release the connections, dispose the engine and stop the loop thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown(), timed=False)  # its final fold may take a while
        finally:
            self._stop()

    async def _shutdown(self) -> None:
        await self._logger.close()
        await self._logger.engine.dispose()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncAICallLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
