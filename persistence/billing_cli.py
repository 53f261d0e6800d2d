"""`persistence billing import|close|validate|accuracy`: vendor bills and cost accuracy from the shell.

A face like `cli.py` (it prints); the work is in `persistence.ai_calls.billing` and `.cost_accuracy`.
Exit status: 0 ok, 1 a validation found a mismatch / calls over tolerance (or our error), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from persistence.cli_common import command_engine, utc_datetime

if TYPE_CHECKING:
    from persistence.ai_calls.billing import BillingValidationReport
    from persistence.ai_calls.cost_accuracy import CostAccuracyReport, CostTolerance

__all__ = ["BILLING_DESCRIPTION", "add_billing_arguments", "billing_command"]

BILLING_DESCRIPTION = (
    "Vendor billing against the AI-call ledger. `import FILE` records a CSV/JSON bill (rows already "
    "recorded are skipped; rows of a closed period become adjustments). `close` moves billing periods "
    "open -> grace -> closed by the clock (--now). `validate --provider P --period YYYY-MM` compares "
    "billed USD with the ledger per model and UTC day and files the result (final once the period is "
    "closed). `accuracy --start --end` validates provided against computed cost per call."
)


def _month(text: str) -> date:
    try:
        return date.fromisoformat(text + "-01" if len(text) == 7 else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a month (YYYY-MM): {text!r}") from None


def _amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"not a non-negative number: {text!r}")
    return value


def _window(text: str) -> tuple[str, timedelta]:
    provider, sep, days = text.partition("=")
    try:
        if not sep or not provider:
            raise ValueError
        return provider.lower(), timedelta(days=float(days))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PROVIDER=DAYS, got {text!r}") from None


def add_billing_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="billing_action", required=True)
    imp = actions.add_parser("import", help="record a CSV/JSON bill")
    imp.add_argument("file", help="the bill: .csv or .json")
    imp.add_argument("--source", help="source of rows without one (default: file:<name>)")
    imp.add_argument(
        "--late-window",
        type=_window,
        action="append",
        default=[],
        metavar="PROVIDER=DAYS",
        help="a provider's late-data window for periods created now (default 35 days)",
    )
    close = actions.add_parser("close", help="move billing periods whose time has come")
    close.add_argument("--now", type=utc_datetime, default=None, help="the clock (ISO time; default: now)")
    for name, help_ in (
        ("validate", "compare a provider's billing month with the ledger"),
        ("accuracy", "compare provided with computed cost per call over a period"),
    ):
        sub = actions.add_parser(name, help=help_)
        if name == "validate":
            sub.add_argument("--provider", required=True)
            sub.add_argument("--period", type=_month, required=True, help="the month, YYYY-MM")
        else:
            sub.add_argument("--start", type=utc_datetime, required=True, help="ISO time, UTC if no offset")
            sub.add_argument("--end", type=utc_datetime, required=True, help="ISO time, exclusive")
        sub.add_argument("--tolerance-usd", type=_amount, default=None, help="absolute tolerance in USD")
        sub.add_argument("--tolerance-pct", type=_amount, default=None, help="relative tolerance in percent")
        sub.add_argument("--json", action="store_true", help="print the result as JSON")


def _tolerance(args: argparse.Namespace, default: CostTolerance) -> CostTolerance:
    from persistence.ai_calls.cost_accuracy import CostTolerance

    if args.tolerance_usd is None and args.tolerance_pct is None:
        return default
    return CostTolerance(
        absolute_usd=args.tolerance_usd if args.tolerance_usd is not None else default.absolute_usd,
        relative_pct=args.tolerance_pct if args.tolerance_pct is not None else default.relative_pct,
    )


async def billing_command(args: argparse.Namespace) -> int:
    from persistence.ai_calls import billing
    from persistence.ai_calls.cost_accuracy import CostTolerance, validate_cost_accuracy

    action: str = args.billing_action
    async with command_engine() as engine:
        if action == "import":
            policy = billing.BillingPolicy(late_windows=dict(args.late_window))
            done = await billing.import_billing_file(engine, args.file, source=args.source, policy=policy)
            print(
                f"recorded {done.recorded} rows, {done.adjustments} adjustments, {done.duplicates} already known"
            )
            return 0
        if action == "close":
            moved = await billing.close_due_periods(engine, now=args.now or datetime.now(UTC))
            for t in moved:
                p = t.period
                print(f"{p.provider} {p.period_start:%Y-%m}: {t.previous} -> {p.state}")
            if not moved:
                print("no period is due")
            return 0
        if action == "validate":
            period = await billing.get_billing_period(engine, args.provider, args.period)
            report = await billing.validate_billing(
                engine, period, tolerance=_tolerance(args, billing.DEFAULT_BILLING_TOLERANCE)
            )
            if args.json:
                print(json.dumps(_billing_json(report), indent=2))
            else:
                final = "final" if report.final else f"re-runs until closed ({report.period.state})"
                print(f"{period.provider} {period.period_start:%Y-%m}: {report.verdict} ({final})")
                print(
                    f"  billed {report.billed_usd} USD, ledger {report.ledger_usd} USD ({report.ledger_calls} calls)"
                )
                if report.adjustment_rows:
                    print(
                        f"  adjustments after close: {report.adjustment_rows} rows, {report.adjustments_usd} USD"
                    )
                for line in report.problems():
                    day = line.day.isoformat() if line.day else "period"
                    print(
                        f"  {line.status:<16} {line.model} {day}: billed {line.billed_usd}, ledger {line.ledger_usd}"
                    )
            return 0 if report.verdict == "ok" else 1
        accuracy = await validate_cost_accuracy(
            engine, start=args.start, end=args.end, tolerance=_tolerance(args, CostTolerance())
        )
        if args.json:
            print(json.dumps(_accuracy_json(accuracy), indent=2))
        else:
            print(
                f"cost accuracy {accuracy.period_start:%Y-%m-%d} .. {accuracy.period_end:%Y-%m-%d}: {accuracy.verdict}"
            )
            print(f"  rule: {accuracy.tolerance.describe()}")
            print(f"  {accuracy.calls} calls, {accuracy.calls_over_tolerance} over tolerance")
            for x in accuracy.over_tolerance():
                print(
                    f"  {x.provider}/{x.model} {x.day}: {x.calls_over_tolerance} calls, |variance| {x.abs_variance_usd} USD"
                )
        return 0 if accuracy.passed else 1


def _billing_json(report: BillingValidationReport) -> dict[str, Any]:
    return {
        "provider": report.period.provider,
        "period_start": report.period.period_start.isoformat(),
        "state": report.period.state,
        "final": report.final,
        "verdict": report.verdict,
        "billed_usd": str(report.billed_usd),
        "ledger_usd": str(report.ledger_usd),
        "ledger_calls": report.ledger_calls,
        "adjustments_usd": str(report.adjustments_usd),
        "validated_at": report.validated_at.isoformat(),
        "lines": [line.to_json() for line in report.lines],
    }


def _accuracy_json(report: CostAccuracyReport) -> dict[str, Any]:
    return {
        "period_start": report.period_start.isoformat(),
        "period_end": report.period_end.isoformat(),
        "verdict": report.verdict,
        "rule": report.tolerance.describe(),
        "calls": report.calls,
        "calls_over_tolerance": report.calls_over_tolerance,
        "lines": [
            {
                "provider": x.provider,
                "model": x.model,
                "day": x.day.isoformat(),
                "verdict": x.verdict,
                "calls": x.calls,
                "calls_over_tolerance": x.calls_over_tolerance,
                "computed_cost_usd": str(x.computed_cost_usd),
                "provided_cost_usd": str(x.provided_cost_usd),
                "abs_variance_usd": str(x.abs_variance_usd),
                "worst_call_ids": [w.call_id for w in x.worst_calls],
            }
            for x in report.lines
        ],
    }
