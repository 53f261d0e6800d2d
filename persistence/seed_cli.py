"""`persistence seed` and `scripts/seed_database.py`: migrate, then seed, printed for people.

A face like `cli.py` (it prints); the work is in `persistence.seeding`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from persistence.cli_common import command_engine, run_script, utc_date
from persistence.config import DatabaseConfig

__all__ = ["SEED_DESCRIPTION", "add_seed_arguments", "main", "seed_command"]

SEED_DESCRIPTION = (
    "Migrate the database to head (its own transaction), then fill every table with realistic, "
    "related demo data in one transaction: a failed seeding writes nothing. Deterministic: the same "
    "--seed, --as-of and sizes give the same rows. Idempotent: the first run records its seed and date "
    "in audit_log and later runs reuse them, so running again (on any day) inserts nothing new; larger "
    "sizes add only the missing rows; a different --seed or --as-of is refused; --reset starts over. "
    "The database comes from DATABASE_URL or DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD (or .env); "
    "with neither, the embedded local PostgreSQL is started and used."
)


# SeedPlan size fields and their --help text.
_SIZE_FLAGS = (
    ("claims", "claims to create"),
    ("verifications_per_claim", "verification results per claim"),
    ("training_per_claim", "training examples per claim"),
    ("checkpoints_per_model", "checkpoint versions per model and framework"),
    ("service_instances", "instances per service in service_health"),
    ("ai_calls", "AI-call ledger rows (each also gets its cost event in analytics.tenant_cost_events)"),
    ("platform_events", "platform events (analytics.platform_events)"),
    ("agent_executions", "agent executions (analytics.agent_executions)"),
    ("cost_events", "cost events that are not AI calls: embeddings, storage, compute"),
)


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    from persistence.seeding import SeedPlan

    d = SeedPlan()
    parser.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="random seed; same seed, same data; must match the database's first seeding unless "
        "--reset (default %(default)s)",
    )
    for field, text in _SIZE_FLAGS:
        parser.add_argument(
            "--" + field.replace("_", "-"),
            type=int,
            default=getattr(d, field),
            help=f"{text} (default %(default)s)",
        )
    parser.add_argument(
        "--days",
        type=int,
        default=d.days,
        help="days of history (AI calls and events) before --as-of (default %(default)s)",
    )
    parser.add_argument(
        "--as-of",
        type=utc_date,
        default=None,
        help="end of the generated history, YYYY-MM-DD in UTC (default: the date recorded by the "
        "database's first seeding, else today; a different date needs --reset)",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="delete all rows of the package's tables first (refused when another table references them)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output, only the summary")


class _Progress:
    """One line per table, rewritten in place on a terminal; whole lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.current: str | None = None

    def __call__(self, table: str, done: int, total: int) -> None:
        line = f"  {table:<28} {done:>8}/{total:<8}"
        if self.tty:
            end = "\n" if done >= total else ""
            print(f"\r{line}", end=end, file=self.out, flush=True)
        elif done >= total:
            print(line, file=self.out, flush=True)


async def seed_command(args: argparse.Namespace) -> int:
    from persistence import migrations
    from persistence.seeding import SeedPlan, seed_database

    try:
        sizes = {field: getattr(args, field) for field, _ in _SIZE_FLAGS}
        plan = SeedPlan(seed=args.seed, days=args.days, as_of=args.as_of, **sizes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = DatabaseConfig()
    log = sys.stderr
    where = (
        config.describe() if config.is_configured else "the embedded local PostgreSQL (no DATABASE_URL set)"
    )
    print(f"database: {where}", file=log)
    try:
        async with command_engine(config) as engine:
            before, after = await migrations.upgrade(engine)
            if before != after:
                print(f"schema: migrated {before or 'empty'} -> {after}", file=log)
            else:
                print(f"schema: at head ({after})", file=log)
            print(f"seeding (seed={plan.seed}{', reset' if args.reset else ''}):", file=log)
            progress = None if args.quiet else _Progress(log)
            report = await seed_database(engine, plan, reset=args.reset, progress=progress)
            print(f"seeded as of {report.as_of:%Y-%m-%d %H:%M} UTC", file=log)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    inserted = report.inserted
    width = max(len(t) for t in report.after)
    print(f"\n{'table':<{width}}  {'before':>8}  {'inserted':>8}  {'rows':>8}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 8}")
    for table, rows in report.after.items():
        print(f"{table:<{width}}  {report.before.get(table, 0):>8}  {inserted.get(table, 0):>8}  {rows:>8}")
    print(
        f"{'total':<{width}}  {sum(report.before.values()):>8}  {sum(inserted.values()):>8}  "
        f"{sum(report.after.values()):>8}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/seed_database.py: `persistence seed` with its own program name."""
    parser = argparse.ArgumentParser(prog="seed_database.py", description=SEED_DESCRIPTION)
    add_seed_arguments(parser)
    return run_script(
        seed_command(parser.parse_args(argv)), "interrupted; the seeding transaction was rolled back"
    )
