"""The `persistence` command: embedded server, migrations, seeding. The only module that prints."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from persistence.config import DatabaseConfig, EmbeddedConfig, ReconciliationConfig, configuration_error
from persistence.embedded import EmbeddedServer
from persistence.errors import ConfigurationError, PersistenceError
from persistence.migrate_cli import DESCRIPTION as MIGRATE_DESCRIPTION
from persistence.migrate_cli import add_migrate_arguments, migrate_command

if TYPE_CHECKING:
    from persistence.ai_calls.reconciliation import ReconciliationResult
    from persistence.ai_calls.sources import UsageSource
    from persistence.observe.health import HealthReport


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

    from persistence.engine import create_database_engine
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
    engine = await create_database_engine(config, check=False)  # the report says why it cannot connect
    try:
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
    finally:
        await engine.dispose()
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
        print(f"schema   : {schema.state} (database {schema.current}, code head {schema.head})")
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


# SeedPlan size fields and their --help text.
_SIZE_FLAGS = (
    ("claims", "claims to create"),
    ("verifications_per_claim", "verification results per claim"),
    ("training_per_claim", "training examples per claim"),
    ("checkpoints_per_model", "checkpoint versions per model and framework"),
    ("service_instances", "instances per service in service_health"),
    ("ai_calls", "AI-call ledger rows"),
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
        help="days of AI-call history before --as-of (default %(default)s)",
    )
    parser.add_argument(
        "--as-of",
        type=_utc_date,
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


def _utc_date(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


class _Progress:
    """One line per table, rewritten in place on a terminal; whole lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.current: str | None = None

    def __call__(self, table: str, done: int, total: int) -> None:
        line = f"  {table:<24} {done:>8}/{total:<8}"
        if self.tty:
            end = "\n" if done >= total else ""
            print(f"\r{line}", end=end, file=self.out, flush=True)
        elif done >= total:
            print(line, file=self.out, flush=True)


async def _seed(args: argparse.Namespace) -> int:
    from persistence import migrations
    from persistence.engine import create_database_engine
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
    engine = await create_database_engine(config)
    try:
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
    finally:
        await engine.dispose()
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


async def _partitions(args: argparse.Namespace) -> int:
    from persistence.ai_calls.partitions import maintain_partitions
    from persistence.engine import create_database_engine

    engine = await create_database_engine(DatabaseConfig())
    try:
        report = await maintain_partitions(
            engine,
            ahead=args.ahead,
            retention_months=args.retention_months,
            dry_run=args.dry_run,
            lock_timeout_ms=args.lock_timeout_ms,
        )
    finally:
        await engine.dispose()
    verb = "would " if report.dry_run else ""
    print(f"ai_calls partitions: {', '.join(f'{m:%Y-%m}' for m in report.existing) or 'none'}")
    print(f"  {verb}create: {', '.join(f'{m:%Y-%m}' for m in report.created) or 'nothing'}")
    if report.default_created:
        print(f"  {verb}create: the default partition")
    print(f"  {verb}drop:   {', '.join(f'{m:%Y-%m}' for m in report.dropped) or 'nothing'}")
    if report.keys_deleted:
        print(f"  deleted {report.keys_deleted} idempotency keys of dropped calls")
    return 0


def _utc_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def _rollups(args: argparse.Namespace) -> int:
    from persistence.ai_calls.rollups import fold_rollups, rebuild_rollups
    from persistence.engine import create_database_engine

    engine = await create_database_engine(DatabaseConfig())
    try:
        if args.action == "fold":
            print(f"folded the usage of {await fold_rollups(engine)} calls into the hourly rollups")
        else:
            if args.start is None or args.end is None:
                print("error: rebuild needs --start and --end", file=sys.stderr)
                return 2
            lo, hi = await rebuild_rollups(engine, args.start, args.end)
            print(
                f"rebuilt the hourly rollups of {lo:%Y-%m-%d %H:%M} .. {hi:%Y-%m-%d %H:%M} UTC from ai_calls"
            )
    finally:
        await engine.dispose()
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
        help="create upcoming monthly partitions of ai_calls (and the default one), drop expired ones",
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
    rollups.add_argument("--start", type=_utc_datetime, help="rebuild from (ISO time, UTC if no offset)")
    rollups.add_argument("--end", type=_utc_datetime, help="rebuild until (ISO time, UTC if no offset)")
    rec = sub.add_parser(
        "reconcile",
        help="compare the AI-call ledger with the metering vendor; exit 1 on FAIL",
        description=RECONCILE_DESCRIPTION,
    )
    add_reconcile_arguments(rec)

    grant = sub.add_parser(
        "grant-reader",
        help="create or update the read-only reconciliation_reader role (password from the environment)",
        description="Create (or update) a LOGIN role with SELECT on ai_calls and reconciliation_reports "
        "only, read-only by default. Idempotent. The password is read from RECONCILIATION_READER_PASSWORD "
        "(or .env) and sent to the server as a SCRAM verifier, never in clear.",
    )
    grant.add_argument("--role", default="reconciliation_reader", help="role name (default %(default)s)")
    return parser


SEED_DESCRIPTION = (
    "Migrate the database to head (its own transaction), then fill every table with realistic, "
    "related demo data in one transaction: a failed seeding writes nothing. Deterministic: the same "
    "--seed, --as-of and sizes give the same rows. Idempotent: the first run records its seed and date "
    "in audit_log and later runs reuse them, so running again (on any day) inserts nothing new; larger "
    "sizes add only the missing rows; a different --seed or --as-of is refused; --reset starts over. "
    "The database comes from DATABASE_URL or DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD (or .env); "
    "with neither, the embedded local PostgreSQL is started and used."
)


RECONCILE_DESCRIPTION = (
    "Reconcile the AI-call ledger against the metering vendor for the --days whole UTC days before "
    "--end (default: today 00:00 UTC), in total, per provider and per model and day where the source "
    "has them. The report is saved in reconciliation_reports (a re-run for the same period and source "
    "replaces it). Exit status: 0 PASS, 1 FAIL, 2 bad settings. The vendor comes from --source-url or "
    "METERING_API_URL (key: METERING_API_KEY), or from an export file (--source-file .json/.csv); the "
    "database from DATABASE_URL or DB_* (or .env)."
)


def add_reconcile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=7, help="days to reconcile (default %(default)s)")
    parser.add_argument(
        "--end",
        type=_utc_date,
        default=None,
        help="end of the period, YYYY-MM-DD, exclusive (default: today UTC)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--source-url", help="metering API base URL (default: METERING_API_URL)")
    where.add_argument("--source-file", help="a vendor export instead of the API: .json or .csv")
    parser.add_argument(
        "--source-name", help="name the report is filed under (default: API host or file name)"
    )
    parser.add_argument(
        "--threshold",
        type=_percent,
        default=None,
        help="allowed variance in percent (default: RECONCILIATION_THRESHOLD_PCT or 2)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--all-lines", action="store_true", help="also list matched model/day lines")


def _percent(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"not a non-negative percentage: {text!r}")
    return value


def _usage_source(args: argparse.Namespace, settings: ReconciliationConfig) -> UsageSource:
    from persistence.ai_calls.sources import FileUsageSource, HttpUsageSource

    if args.source_file:
        return FileUsageSource(args.source_file, name=args.source_name)
    url = args.source_url or settings.metering_api_url
    if not url:
        raise ConfigurationError(
            "no usage source: pass --source-url or --source-file, or set METERING_API_URL"
        )
    if settings.metering_api_key is None:
        raise ConfigurationError("METERING_API_KEY is not set (the metering API's bearer key)")
    return HttpUsageSource(
        url,
        settings.metering_api_key,
        name=args.source_name or settings.metering_source_name,
        timeout=settings.metering_timeout,
        retries=settings.metering_retries,
    )


def _print_alert(result: ReconciliationResult) -> None:
    """Seed 000's send_alert, on stderr (cron mails it)."""
    print(
        f"RECONCILIATION FAILED: {result.variance_pct}% call variance, {result.cost_variance_pct}% cost "
        f"variance (threshold {result.threshold_pct}%); ledger {result.ours_calls} calls, "
        f"{result.source} {result.vendor_calls} calls; missing {result.missing_calls}",
        file=sys.stderr,
    )


def _print_report(result: ReconciliationResult, out: TextIO, *, all_lines: bool) -> None:
    print(
        f"reconciliation {result.period_start:%Y-%m-%d %H:%M} .. {result.period_end:%Y-%m-%d %H:%M} UTC"
        f"  source {result.source}  threshold {result.threshold_pct}%",
        file=out,
    )
    print(
        f"status {result.status}  calls variance {result.variance_pct}%  cost variance "
        f"{result.cost_variance_pct}%  coverage {result.coverage_pct}%  (report id {result.id})\n",
        file=out,
    )
    shown = [
        line for line in result.lines if all_lines or line.level != "model_day" or line.status != "matched"
    ]
    header = ("level", "provider", "model", "day", "ours calls", "vendor calls", "calls %",
              "ours cost", "vendor cost", "cost %", "status")  # fmt: skip
    table = [header] + [
        (
            line.level,
            line.provider or "",
            line.model or "",
            line.day.isoformat() if line.day else "",
            str(line.ours_calls),
            str(line.vendor_calls),
            str(line.calls_variance_pct),
            str(line.ours_cost_usd),
            str(line.vendor_cost_usd),
            str(line.cost_variance_pct),
            line.status,
        )
        for line in shown
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = range(4, 10)
    for n, row in enumerate(table):
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)
    hidden = len(result.lines) - len(shown)
    if hidden:
        print(f"({hidden} matched model/day lines not shown; --all-lines lists them)", file=out)


async def _reconcile(args: argparse.Namespace) -> int:
    from persistence.ai_calls.reconciliation import Reconciler
    from persistence.engine import create_database_engine

    if args.days < 1:
        print("error: --days must be at least 1", file=sys.stderr)
        return 2
    settings = ReconciliationConfig()
    try:
        source = _usage_source(args, settings)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    end = args.end or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    threshold = args.threshold if args.threshold is not None else settings.threshold_pct
    engine = await create_database_engine(DatabaseConfig())
    # Which ledger: with no DATABASE_URL / DB_* set this is the embedded server, which is rarely
    # what a cron job on a production host means.
    print(f"ledger: {engine.url.render_as_string(hide_password=True)}", file=sys.stderr)
    try:
        reconciler = Reconciler(engine, source, threshold_pct=threshold, alert=_print_alert)
        result = await reconciler.reconcile(start, end)
    finally:
        await engine.dispose()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_report(result, sys.stdout, all_lines=args.all_lines)
    return 0 if result.passed else 1


async def _grant_reader(args: argparse.Namespace) -> int:
    from persistence.ai_calls.access import grant_reader
    from persistence.engine import create_database_engine

    password = ReconciliationConfig().reader_password
    if password is None:
        print(
            "error: set RECONCILIATION_READER_PASSWORD (environment or .env) to the role's password",
            file=sys.stderr,
        )
        return 2
    engine = await create_database_engine(DatabaseConfig())
    try:
        await grant_reader(engine, password, role=args.role)
    finally:
        await engine.dispose()
    print(f"role {args.role}: LOGIN, SELECT on ai_calls and reconciliation_reports only")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "server":
            return _server_command(args)
        if args.command == "migrate":
            return asyncio.run(migrate_command(args))
        if args.command == "seed":
            return asyncio.run(_seed(args))
        if args.command == "health":
            return asyncio.run(_health(args))
        if args.command == "partitions":
            return asyncio.run(_partitions(args))
        if args.command == "rollups":
            return asyncio.run(_rollups(args))
        if args.command == "reconcile":
            return asyncio.run(_reconcile(args))
        if args.command == "grant-reader":
            return asyncio.run(_grant_reader(args))
    except ValidationError as exc:
        print(f"error: {configuration_error(exc)}", file=sys.stderr)
        return 2
    except PersistenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was committed by the running step", file=sys.stderr)
        return 130
    return 2


def seed_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/seed_database.py: `persistence seed` with its own program name."""
    parser = argparse.ArgumentParser(prog="seed_database.py", description=SEED_DESCRIPTION)
    add_seed_arguments(parser)
    return _run_script(_seed(parser.parse_args(argv)), "interrupted; the seeding transaction was rolled back")


def reconcile_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/reconcile.py (seed 000's weekly cron): `persistence reconcile`."""
    parser = argparse.ArgumentParser(prog="reconcile.py", description=RECONCILE_DESCRIPTION)
    add_reconcile_arguments(parser)
    return _run_script(
        _reconcile(parser.parse_args(argv)),
        "interrupted; no report was saved unless the summary was printed",
    )


def _run_script(work: Coroutine[Any, Any, int], interrupted: str) -> int:
    """Run a script's coroutine; exit 2 on bad settings, 1 on our errors, 130 on Ctrl-C."""
    try:
        return asyncio.run(work)
    except ValidationError as exc:
        print(f"error: {configuration_error(exc)}", file=sys.stderr)
        return 2
    except PersistenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
