"""`persistence migrate` and `scripts/run_migration.py`: run | status | rollback, printed for people.

A face like `cli.py` (it prints); the work is in `persistence.migrations`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from persistence.cli_common import command_engine, run_script

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from persistence.migrations import WaitCallback

UP_TO_DATE = 0
PENDING = 3  # `status`: migrations are pending (1 is an error, 2 bad settings or usage)

DESCRIPTION = (
    "Alembic migrations of the configured database, run safely. "
    "run (the default): upgrade to head holding a PostgreSQL advisory lock, so two migrators never "
    "run at once (a second one waits up to --wait seconds, then finds nothing to do); every DDL "
    "statement runs with lock_timeout=--lock-timeout, and the whole run is one transaction, so a "
    "table that stays locked fails the run (exit 1) with nothing applied. "
    f"status: the current revision, head and the pending revisions; exit {UP_TO_DATE} when up to "
    f"date, {PENDING} when migrations are pending. "
    "rollback: undo the current revision (one step) after showing what its downgrade removes; asks "
    "for confirmation, which needs a terminal unless --yes is given. "
    "Exit status: 1 on a database or lock error or a declined rollback; 2 on bad settings or usage "
    "(rollback with neither a terminal nor --yes included). "
    "The database comes from DATABASE_URL or DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD (or .env); "
    "with neither, the embedded local PostgreSQL is started and used."
)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        choices=["run", "status", "rollback"],
        default="run",
        help="run (default): upgrade to head; status: current vs head and what is pending; "
        "rollback: go back one revision",
    )
    parser.add_argument("--revision", default="head", help="run: target revision (default %(default)s)")
    parser.add_argument(
        "--lock-timeout",
        type=_seconds,
        default=5.0,
        help="run/rollback: seconds a DDL statement may wait for a table lock (default %(default)s)",
    )
    parser.add_argument(
        "--wait",
        type=_seconds,
        default=600.0,
        help="run/rollback: seconds to wait for another migrator to finish (default %(default)s)",
    )
    parser.add_argument("--yes", "-y", action="store_true", help="rollback: do not ask for confirmation")
    parser.add_argument(
        "--alembic-config",
        metavar="INI",
        default=None,
        help="a service's alembic.ini: its own revisions run beside ours (ours first); "
        "rollback steps back the service's branch first",
    )


def _waiting(wait: float) -> WaitCallback:
    def tell(pid: int | None) -> None:
        holder = f" (server pid {pid})" if pid is not None else ""
        print(
            f"waiting for another migration{holder} to finish (up to {wait:g}s) ...",
            file=sys.stderr,
            flush=True,
        )

    return tell


def _label(revision: str | None) -> str:
    return revision or "base (empty)"


async def migrate_command(args: argparse.Namespace) -> int:
    from persistence import migrations

    if args.action == "rollback" and not args.yes and not sys.stdin.isatty():
        print(
            "error: rollback asks for confirmation and stdin is not a terminal; pass --yes", file=sys.stderr
        )
        return 2
    async with command_engine() as engine:
        if args.action == "status":
            service = args.alembic_config
            status = await migrations.migration_status(engine, service=service)
            print(f"current: {_label(status.current)}")
            print(f"head:    {_label(status.head)}")
            if service is not None:
                print(f"stamped: {', '.join(status.stamped) or 'nothing'}")
                print(f"heads:   {', '.join(status.heads)}")
            if status.up_to_date:
                print("up to date")
                return UP_TO_DATE
            print(f"pending: {len(status.pending)}")
            for revision in status.pending:
                print(f"  {revision.id}  {revision.message}")
            return PENDING
        if args.action == "run":
            before, after = await migrations.upgrade_locked(
                engine,
                args.revision,
                lock_timeout=args.lock_timeout,
                wait=args.wait,
                on_wait=_waiting(args.wait),
                service=args.alembic_config,
            )
            if before == after:
                print(f"schema already at {_label(after)}: nothing to do")
            else:
                print(f"schema migrated {_label(before)} -> {after}")
            return 0
        return await _rollback(engine, args)


async def _rollback(engine: AsyncEngine, args: argparse.Namespace) -> int:
    from persistence import migrations

    service = args.alembic_config
    plan = migrations.rollback_plan(
        await migrations.rollback_candidate(engine, service=service), service=service
    )
    revision = plan.revision
    print(f"rollback {revision.id} -> {_label(revision.down_revision)}: undoes '{revision.message}'")
    if plan.drops:
        print("its downgrade removes:")
        for item in plan.drops:
            print(f"  - {item}")
    details = revision.doc.split("\n", 1)[1].strip() if "\n" in revision.doc else ""
    if details:
        print("about this revision:")
        for line in details.splitlines():
            print(f"  {line}".rstrip())
    if not args.yes:
        try:
            # Nothing else runs on this loop while a person decides (and Ctrl-C stays immediate).
            answer = input(f"roll back {revision.id}? [y/N] ")  # noqa: ASYNC250
        except EOFError:
            answer = ""
        if answer.strip().lower() not in {"y", "yes"}:
            print("rollback cancelled; nothing changed", file=sys.stderr)
            return 1
    before, after = await migrations.rollback_one(
        engine,
        revision.id,
        lock_timeout=args.lock_timeout,
        wait=args.wait,
        on_wait=_waiting(args.wait),
        service=service,
    )
    print(f"schema rolled back {_label(before)} -> {_label(after)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/run_migration.py: `persistence migrate` with its own program name."""
    parser = argparse.ArgumentParser(prog="run_migration.py", description=DESCRIPTION)
    add_migrate_arguments(parser)
    return run_script(
        migrate_command(parser.parse_args(argv)),
        "interrupted; the migration transaction was rolled back",
    )
