"""`persistence reconcile` and `scripts/reconcile.py` (seed 000's weekly cron): the ledger against the
metering vendor, printed as a table or JSON; exit 1 on FAIL.

A face like `cli.py` (it prints); the work is in `persistence.ai_calls.reconciliation`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, TextIO

from persistence.cli_common import command_engine, run_script, utc_date
from persistence.config import ReconciliationConfig
from persistence.errors import ConfigurationError

if TYPE_CHECKING:
    from persistence.ai_calls.reconciliation import ReconciliationResult
    from persistence.ai_calls.sources import UsageSource

__all__ = ["RECONCILE_DESCRIPTION", "add_reconcile_arguments", "main", "reconcile_command"]

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
        type=utc_date,
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
    if result.unpriced_calls:
        print(
            f"unpriced: {result.unpriced_calls} of our calls ({result.unpriced_tokens} tokens) had no price, "
            "so no cost (`persistence prices reprice` prices them)\n",
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


async def reconcile_command(args: argparse.Namespace) -> int:
    from persistence.ai_calls.reconciliation import Reconciler

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
    async with command_engine() as engine:
        # Which ledger: with no DATABASE_URL / DB_* set this is the embedded server, which is rarely
        # what a cron job on a production host means.
        print(f"ledger: {engine.url.render_as_string(hide_password=True)}", file=sys.stderr)
        reconciler = Reconciler(engine, source, threshold_pct=threshold, alert=_print_alert)
        result = await reconciler.reconcile(start, end)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_report(result, sys.stdout, all_lines=args.all_lines)
    return 0 if result.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/reconcile.py (seed 000's weekly cron): `persistence reconcile`."""
    parser = argparse.ArgumentParser(prog="reconcile.py", description=RECONCILE_DESCRIPTION)
    add_reconcile_arguments(parser)
    return run_script(
        reconcile_command(parser.parse_args(argv)),
        "interrupted; no report was saved unless the summary was printed",
    )
