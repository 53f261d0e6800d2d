"""What the command-line faces (`cli.py`, `seed_cli.py`, `reconcile_cli.py`, `migrate_cli.py`) share:
one engine per command, created and disposed in one place; how a command's errors end the process;
date arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from persistence.config import DatabaseConfig, configuration_error
from persistence.errors import PersistenceError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["command_engine", "run_guarded", "run_script", "utc_date", "utc_datetime"]


@contextlib.asynccontextmanager
async def command_engine(
    config: DatabaseConfig | None = None, *, check: bool = True
) -> AsyncIterator[AsyncEngine]:
    """The engine of one command (`config`, default the configured database or the embedded
    server), disposed when the command is done however it ends. `check=False` skips the connect
    check (`health` reports an unreachable database instead of failing)."""
    from persistence.engine import create_database_engine  # not at import: `--help` stays fast

    engine = await create_database_engine(config if config is not None else DatabaseConfig(), check=check)
    try:
        yield engine
    finally:
        await engine.dispose()


def run_guarded(work: Callable[[], int], interrupted: str) -> int:
    """Run a command; exit 2 on bad settings, 1 on our errors, 130 on Ctrl-C (saying `interrupted`)."""
    try:
        return work()
    except ValidationError as exc:
        print(f"error: {configuration_error(exc)}", file=sys.stderr)
        return 2
    except PersistenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def run_script(work: Coroutine[Any, Any, int], interrupted: str) -> int:
    """Run a script's coroutine under `run_guarded`."""
    return run_guarded(lambda: asyncio.run(work), interrupted)


def utc_date(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def utc_datetime(text: str) -> datetime:
    """An ISO date or date/time; UTC when it has no offset."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
