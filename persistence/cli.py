"""The `persistence` command: embedded server, migrations, seeding. The only module that prints."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from persistence.billing_cli import BILLING_DESCRIPTION, add_billing_arguments, billing_command
from persistence.cli_common import command_engine, run_guarded, utc_datetime
from persistence.config import DatabaseConfig, EmbeddedConfig, ReconciliationConfig
from persistence.embedded import EmbeddedServer
from persistence.errors import PersistenceError
from persistence.migrate_cli import DESCRIPTION as MIGRATE_DESCRIPTION
from persistence.migrate_cli import add_migrate_arguments, migrate_command
from persistence.prices_cli import PRICES_DESCRIPTION, add_prices_arguments, prices_command
from persistence.reconcile_cli import RECONCILE_DESCRIPTION, add_reconcile_arguments, reconcile_command
from persistence.reconcile_cli import main as reconcile_main
from persistence.seed_cli import SEED_DESCRIPTION, add_seed_arguments, seed_command
from persistence.seed_cli import main as seed_main

if TYPE_CHECKING:
    from persistence.observe.health import HealthReport

# `seed_main` / `reconcile_main`: the entry points scripts/seed_database.py and scripts/reconcile.py import.
__all__ = ["build_parser", "main", "reconcile_main", "seed_main"]


def _print_status(server: EmbeddedServer, database: str, out: TextIO) -> None:
    status = server.status()
    state = f"running (pid {status.pid})" if status.running else "stopped"
    print(f"embedded PostgreSQL: {state}", file=out)
    print(f"  data dir : {status.data_dir}", file=out)
    print(f"  version  : {status.version or 'not initialised'}", file=out)
    if status.bindir is not None:
        print(f"  binaries : {status.bindir}", file=out)
    print(f"  url      : {server.url(database)}", file=out)


def _server_command(args: argparse.Namespace) -> int:
    config = EmbeddedConfig()
    server = EmbeddedServer.from_config(config)
    database: str = args.database or config.database
    if args.action == "start":
        server.ensure_database(database)
        _print_status(server, database, sys.stdout)
    elif args.action == "stop":
        stopped = server.stop()
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    elif args.action == "status":
        _print_status(server, database, sys.stdout)
        return 0 if server.status().running else 3
    elif args.action == "url":
        print(server.url(database))
    return 0


async def _health(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from persistence.observe.health import health, not_checked
    from persistence.repositories import ServiceHealthRepository

    config = DatabaseConfig()
    stale_error: str | None = None
    stale: list[dict[str, object]] = []
    if not config.is_configured:  # the embedded server: check it if it runs, never start it
        embedded = EmbeddedConfig()
        server = EmbeddedServer.from_config(embedded)
        database = config.database or embedded.database
        config = server.database_config(database, base=config)
        if not server.status().running:
            stopped = "embedded PostgreSQL is stopped (`persistence server start` starts it)"
            return _print_health(
                args, "the embedded local PostgreSQL", not_checked(stopped, database=database), [], None
            )
        where = f"the embedded local PostgreSQL ({server.data_dir})"
    else:
        where = config.describe()
    async with command_engine(config, check=False) as engine:  # the report says why it cannot connect
        report = await health(engine, timeout=args.timeout)
        if report.connected and report.schema.state == "at head":
            try:
                async with asyncio.timeout(args.timeout):
                    rows = await ServiceHealthRepository(engine).stale_instances(
                        timedelta(seconds=args.stale_after)
                    )
                stale = [
                    {
                        "service_name": r.service_name,
                        "instance_id": r.instance_id,
                        "status": r.status,
                        "last_heartbeat": r.last_heartbeat.isoformat(),
                    }
                    for r in rows
                ]
            except (PersistenceError, TimeoutError) as exc:
                stale_error = f"{type(exc).__name__}: {exc}"
    return _print_health(args, where, report, stale, stale_error)


def _print_health(
    args: argparse.Namespace,
    where: str,
    report: HealthReport,
    stale: list[dict[str, object]],
    stale_error: str | None,
) -> int:

    if args.json:
        out = {"database": where, **report.as_dict(), "stale_after_s": args.stale_after, "stale": stale}
        if stale_error is not None:
            out["stale_error"] = stale_error
        print(json.dumps(out, indent=2, default=str))
        return 0 if report.healthy else 1
    status = "healthy" if report.healthy else f"UNHEALTHY ({report.error})"
    print(f"database : {where}")
    print(f"status   : {status}")
    if report.connected:
        print(f"latency  : {report.latency_ms:.2f} ms (SELECT 1 round trip)")
        print(f"server   : PostgreSQL {report.server_version}")
    if report.pool is not None:
        p = report.pool
        print(f"pool     : size {p.size}, in use {p.in_use}, idle {p.idle}, overflow {p.overflow}")
    schema = report.schema
    if schema.state == "behind head":
        pending = f", {schema.behind} migration(s) pending" if schema.behind is not None else ""
        print(f"schema   : behind head (at {schema.current or 'base'}, head {schema.head}{pending})")
    elif schema.state == "at head":
        print(f"schema   : at head ({schema.head})")
    else:
        at = f"database {schema.current}, " if schema.current is not None else ""
        print(f"schema   : {schema.state} ({at}code head {schema.head})")
    if report.unpriced_calls_24h:
        print(
            f"unpriced : {report.unpriced_calls_24h} AI call(s) ({report.unpriced_tokens_24h} tokens) in the "
            "last 24 h have no price (`persistence prices reprice` prices them once one is entered)"
        )
    if stale_error is not None:
        print(f"services : could not list ({stale_error})")
    elif report.healthy:
        print(f"stale instances (no heartbeat for {args.stale_after:g}s): {len(stale) or 'none'}")
        for item in stale:
            print(
                f"  {item['service_name']}/{item['instance_id']}  {item['status']}  "
                f"last heartbeat {item['last_heartbeat']}"
            )
    return 0 if report.healthy else 1


async def _partitions(args: argparse.Namespace) -> int:
    from persistence.ai_calls.partitions import maintain_partitions
    from persistence.events.partitions import maintain_event_partitions

    async with command_engine() as engine:
        report = await maintain_partitions(
            engine,
            ahead=args.ahead,
            retention_months=args.retention_months,
            dry_run=args.dry_run,
            lock_timeout_ms=args.lock_timeout_ms,
        )
        events = await maintain_event_partitions(
            engine,
            retention_days=args.event_retention_days,
            retention_months=args.event_retention_months,
            dry_run=args.dry_run,
            lock_timeout_ms=args.lock_timeout_ms,
        )
    verb = "would " if report.dry_run else ""
    print(f"ai_calls partitions: {', '.join(f'{m:%Y-%m}' for m in report.existing) or 'none'}")
    print(f"  {verb}create: {', '.join(f'{m:%Y-%m}' for m in report.created) or 'nothing'}")
    if report.default_created:
        print(f"  {verb}create: the default partition")
    print(f"  {verb}drop:   {', '.join(f'{m:%Y-%m}' for m in report.dropped) or 'nothing'}")
    if report.keys_deleted:
        print(f"  deleted {report.keys_deleted} idempotency keys of dropped calls")
    for table, starts in events.created.items():
        fmt = "%Y-%m-%d" if table == "platform_events" else "%Y-%m"
        print(f"analytics.{table} partitions: {len(events.existing[table])}")
        print(f"  {verb}create: {', '.join(d.strftime(fmt) for d in starts) or 'nothing'}")
        if table in events.defaults_created:
            print(f"  {verb}create: the default partition")
        print(f"  {verb}drop:   {', '.join(d.strftime(fmt) for d in events.dropped[table]) or 'nothing'}")
        if events.default_rows.get(table):
            print(f"  warning: {events.default_rows[table]} rows in the default partition")
        for skip in events.skipped:
            if skip.table == table:
                print(
                    f"  kept {skip.start.strftime(fmt)} past retention: {skip.buckets} hours not in the rollups"
                )
    return 1 if events.skipped else 0


async def _rollups(args: argparse.Namespace) -> int:
    from persistence.ai_calls.rollups import fold_rollups, rebuild_rollups

    if args.action == "rebuild" and (args.start is None or args.end is None):
        print("error: rebuild needs --start and --end", file=sys.stderr)
        return 2
    async with command_engine() as engine:
        if args.action == "fold":
            print(f"folded the usage of {await fold_rollups(engine)} calls into the hourly rollups")
        else:
            lo, hi = await rebuild_rollups(engine, args.start, args.end)
            print(
                f"rebuilt the hourly rollups of {lo:%Y-%m-%d %H:%M} .. {hi:%Y-%m-%d %H:%M} UTC from ai_calls"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persistence",
        description="PostgreSQL persistence layer: local server, migrations and demo data. "
        "The database comes from DATABASE_URL or DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD (or .env); "
        "with neither, a local PostgreSQL is started in the per-user data directory.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    server = sub.add_parser("server", help="manage the embedded local PostgreSQL server")
    server.add_argument(
        "action",
        choices=["start", "stop", "status", "url"],
        help="start (and create the database), stop, show status (exit 3 if stopped), print URL",
    )
    server.add_argument("--database", help="database name (default: PERSISTENCE_DATABASE or 'persistence')")

    migrate = sub.add_parser(
        "migrate",
        help="migrations of the configured database: run (default; under an advisory lock), status, rollback",
        description=MIGRATE_DESCRIPTION,
    )
    add_migrate_arguments(migrate)

    health = sub.add_parser(
        "health",
        help="check the configured database (connectivity, latency, version, pool, schema at head) "
        "and list service instances without a recent heartbeat; exit 1 when unhealthy",
    )
    health.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        help="seconds without a heartbeat after which an instance is stale (default %(default)s)",
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds allowed (default %(default)s)")
    health.add_argument("--json", action="store_true", help="print the report as JSON")

    seed = sub.add_parser(
        "seed",
        help="migrate to head, then fill the database with realistic demo data",
        description=SEED_DESCRIPTION,
    )
    add_seed_arguments(seed)

    parts = sub.add_parser(
        "partitions",
        help="create upcoming partitions of ai_calls and the analytics event tables (and the default ones), "
        "drop expired ones",
    )
    parts.add_argument(
        "--ahead", type=int, default=2, help="months after the current one to create (default %(default)s)"
    )
    parts.add_argument(
        "--retention-months",
        type=int,
        default=None,
        help="drop monthly partitions that ended more than this many months ago (default: keep all)",
    )
    parts.add_argument(
        "--event-retention-days",
        type=int,
        default=None,
        help="drop daily partitions of analytics.platform_events older than this (seed 004: 1096; default: keep all)",
    )
    parts.add_argument(
        "--event-retention-months",
        type=int,
        default=None,
        help="drop monthly partitions of analytics.tenant_cost_events and agent_executions older than this "
        "(seed 004: 84; default: keep all)",
    )
    parts.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    parts.add_argument(
        "--lock-timeout-ms",
        type=int,
        default=5000,
        help="lock_timeout of each DDL step (default %(default)s)",
    )

    rollups = sub.add_parser(
        "rollups", help="fold pending usage now, or rebuild the hourly rollups of a window"
    )
    rollups.add_argument("action", choices=["fold", "rebuild"])
    rollups.add_argument("--start", type=utc_datetime, help="rebuild from (ISO time, UTC if no offset)")
    rollups.add_argument("--end", type=utc_datetime, help="rebuild until (ISO time, UTC if no offset)")
    rec = sub.add_parser(
        "reconcile",
        help="compare the AI-call ledger with the metering vendor; exit 1 on FAIL",
        description=RECONCILE_DESCRIPTION,
    )
    add_reconcile_arguments(rec)

    bill = sub.add_parser(
        "billing",
        help="vendor bills against the ledger (import, close, validate) and cost accuracy",
        description=BILLING_DESCRIPTION,
    )
    add_billing_arguments(bill)
    prices = sub.add_parser(
        "prices",
        help="the price book: list, add (global or per tenant), sync from genai-prices",
        description=PRICES_DESCRIPTION,
    )
    add_prices_arguments(prices)

    grant = sub.add_parser(
        "grant-reader",
        help="create or update the read-only reconciliation_reader role (password from the environment)",
        description="Create (or update) a LOGIN role with SELECT on ai_calls and reconciliation_reports "
        "only, read-only by default. Idempotent. The password is read from RECONCILIATION_READER_PASSWORD "
        "(or .env) and sent to the server as a SCRAM verifier, never in clear.",
    )
    grant.add_argument("--role", default="reconciliation_reader", help="role name (default %(default)s)")
    return parser


async def _grant_reader(args: argparse.Namespace) -> int:
    from persistence.ai_calls.access import grant_reader

    password = ReconciliationConfig().reader_password
    if password is None:
        print(
            "error: set RECONCILIATION_READER_PASSWORD (environment or .env) to the role's password",
            file=sys.stderr,
        )
        return 2
    async with command_engine() as engine:
        await grant_reader(engine, password, role=args.role)
    print(f"role {args.role}: LOGIN, SELECT on ai_calls and reconciliation_reports only")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "migrate": migrate_command,
    "seed": seed_command,
    "health": _health,
    "partitions": _partitions,
    "rollups": _rollups,
    "reconcile": reconcile_command,
    "billing": billing_command,
    "grant-reader": _grant_reader,
    "prices": prices_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = _COMMANDS.get(args.command)  # None: `server`, the one synchronous command

    def work() -> int:
        return _server_command(args) if command is None else asyncio.run(command(args))

    return run_guarded(work, "interrupted; nothing was committed by the running step")
