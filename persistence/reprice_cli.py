"""`persistence prices reprice`: price the AI calls stored unpriced.

A face like `cli.py` (it prints); the work is in `persistence.ai_calls.reprice`. Prints one summary
line (or the report as JSON); stderr only carries errors.
"""

from __future__ import annotations

import argparse
import json
import sys

from persistence.cli_common import command_engine, utc_datetime

__all__ = ["REPRICE_DESCRIPTION", "add_reprice_arguments", "reprice_command"]

REPRICE_DESCRIPTION = (
    "Price the AI calls the ledger stored without a price (a model with no vendor_prices row in force "
    "at the time of the call) in [--since, --until), with the price row in force at each call's time; "
    "the hourly rollups follow. Idempotent: a second run prices nothing more. Calls still without a "
    "price are counted and left unpriced. The database comes from DATABASE_URL or DB_* (or .env)."
)


def add_reprice_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=utc_datetime, required=True, help="from (ISO date/time, UTC if no offset), inclusive"
    )
    parser.add_argument(
        "--until", type=utc_datetime, default=None, help="until (ISO date/time, UTC if no offset), exclusive"
    )
    parser.add_argument("--provider", help="only this provider's calls")
    parser.add_argument("--model", help="only this model's calls")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


async def reprice_command(args: argparse.Namespace) -> int:
    """Exit 0 when the run completed (whether or not calls are left unpriced), 2 on a bad window."""
    from persistence.ai_calls.reprice import reprice_calls

    if args.until is not None and args.until <= args.since:
        print("error: --until must be after --since", file=sys.stderr)
        return 2
    async with command_engine() as engine:
        report = await reprice_calls(
            engine, since=args.since, until=args.until, provider=args.provider, model=args.model
        )
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        until = "" if report.until is None else f" until {report.until.isoformat()}"
        print(
            f"repriced {report.repriced} call(s) ({report.repriced_tokens} tokens, {report.cost_usd} USD) "
            f"since {report.since.isoformat()}{until}; {report.still_unpriced} call(s) "
            f"({report.still_unpriced_tokens} tokens) still without a price"
        )
    return 0
