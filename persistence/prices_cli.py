"""`persistence prices add|list|sync|reprice`: the price book from the command line.

A face like `cli.py` (it prints); the work is in `persistence.ai_calls.price_api` (add, list) and
`persistence.ai_calls.price_sync` (sync from genai-prices). More actions plug in through
`add_prices_arguments`' returned subparsers and `PRICES_ACTIONS` (e.g. `reprice`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from persistence.cli_common import command_engine, utc_datetime
from persistence.reprice_cli import REPRICE_DESCRIPTION, add_reprice_arguments, reprice_command

if TYPE_CHECKING:
    from persistence.ai_calls.prices import Price

__all__ = ["PRICES_ACTIONS", "PRICES_DESCRIPTION", "add_prices_arguments", "prices_command"]

PRICES_DESCRIPTION = (
    "The vendor_prices table (USD per million tokens, effective-dated; tenant rows override the global "
    "price for calls whose organization_id is the tenant). list: show rows. add: enter a price (it ends "
    "the open-ended row of the same provider/model/tenant/tier that started earlier; --above-input-tokens N "
    "enters a context-length tier: whole calls whose input tokens, cached included, exceed N). sync: import the "
    "installed genai-prices package's prices as effective-dated rows; idempotent; never changes tenant "
    "rows or models whose global price was entered by hand; a changed price becomes a new row from now "
    "on. reprice: price the calls stored unpriced once a price exists (rollups follow). The database "
    "comes from DATABASE_URL or DB_* (or .env)."
)


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _tokens(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of tokens: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a number of tokens is not negative: {text!r}")
    return value


def add_prices_arguments(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The `prices` actions; returns the subparsers so another action can be added next to them."""
    actions = parser.add_subparsers(dest="prices_action", required=True)
    listing = actions.add_parser("list", help="list prices (all, or filtered)")
    listing.add_argument("--provider", help="only this provider")
    listing.add_argument("--model", help="only this model (exact name)")
    listing.add_argument("--tenant", help="only this tenant's overrides ('' for the global prices)")
    listing.add_argument(
        "--at", type=utc_datetime, help="only rows in force at this ISO time (UTC if no offset)"
    )
    listing.add_argument(
        "--above-input-tokens",
        type=_tokens,
        help="only this context-length tier (0: base prices; default: all tiers)",
    )
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")

    add = actions.add_parser("add", help="enter a price (global, or a tenant's override with --tenant)")
    add.add_argument("provider")
    add.add_argument("model")
    add.add_argument("--input", type=_decimal, required=True, help="USD per million input tokens")
    add.add_argument("--output", type=_decimal, required=True, help="USD per million output tokens")
    add.add_argument(
        "--cache-read", type=_decimal, help="USD per million cache-read tokens (default: --input)"
    )
    add.add_argument(
        "--cache-write", type=_decimal, help="USD per million 5-minute cache-write tokens (default: --input)"
    )
    add.add_argument(
        "--cache-write-1h",
        type=_decimal,
        help="USD per million 1-hour cache-write tokens (default: none; such calls stay unpriced)",
    )
    add.add_argument(
        "--reasoning", type=_decimal, help="USD per million reasoning tokens (default: --output)"
    )
    add.add_argument(
        "--from",
        dest="effective_from",
        type=utc_datetime,
        help="in force from (ISO time, UTC if no offset; default now)",
    )
    add.add_argument(
        "--to", dest="effective_to", type=utc_datetime, help="in force until (default: open-ended)"
    )
    add.add_argument("--tenant", help="the tenant (a call's organization_id) this price overrides for")
    add.add_argument(
        "--above-input-tokens",
        type=_tokens,
        default=0,
        help="a context-length tier: the price of whole calls whose input tokens (cached included) exceed "
        "N (default 0: the base price)",
    )
    add.add_argument("--source", default="manual", help="who entered it (default %(default)s)")
    add.add_argument("--json", action="store_true", help="print the stored row as JSON")

    sync = actions.add_parser(
        "sync", help="import the installed genai-prices' prices (idempotent; hand-entered rows are kept)"
    )
    sync.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    sync.add_argument(
        "--provider",
        action="append",
        dest="providers",
        help="import only this provider (repeatable; default: anthropic, cohere, deepseek, google, mistral, openai)",
    )
    sync.add_argument("--json", action="store_true", help="print the report as JSON")
    sync.add_argument("--verbose", action="store_true", help="list every model added, changed or skipped")

    reprice = actions.add_parser(
        "reprice",
        help="price the AI calls stored without a price, once a price exists (rollups follow)",
        description=REPRICE_DESCRIPTION,
    )
    add_reprice_arguments(reprice)
    return actions


def _row(price: Price) -> dict[str, Any]:
    def money(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {
        "id": price.id,
        "provider": price.provider,
        "model": price.model,
        "tenant_id": price.tenant_id,
        "input_per_mtok": money(price.input_per_mtok),
        "output_per_mtok": money(price.output_per_mtok),
        "cache_read_per_mtok": money(price.cache_read_per_mtok),
        "cache_write_per_mtok": money(price.cache_write_per_mtok),
        "cache_write_1h_per_mtok": money(price.cache_write_1h_per_mtok),
        "reasoning_per_mtok": money(price.reasoning_per_mtok),
        "effective_from": price.effective_from.isoformat(),
        "effective_to": None if price.effective_to is None else price.effective_to.isoformat(),
        "source": price.source,
        "min_input_tokens": price.min_input_tokens,
    }


def _print_rows(prices: list[Price]) -> None:
    print(
        f"{'provider':<10} {'model':<34} {'tenant':<10} {'input':>10} {'output':>10} {'c.read':>9} "
        f"{'c.write':>9} {'above':>7} {'from':<10} {'to':<10} source"
    )
    for p in prices:
        to = "" if p.effective_to is None else f"{p.effective_to:%Y-%m-%d}"
        print(
            f"{p.provider:<10} {p.model:<34} {p.tenant_id or '-':<10} {p.input_per_mtok.normalize():>10} "
            f"{p.output_per_mtok.normalize():>10} {p.cache_read_per_mtok.normalize():>9} "
            f"{p.cache_write_per_mtok.normalize():>9} {p.min_input_tokens:>7} {p.effective_from:%Y-%m-%d} {to:<10} {p.source or ''}"
        )
    print(f"{len(prices)} row(s)")


async def _list(args: argparse.Namespace) -> int:
    from persistence.ai_calls.price_api import list_prices

    async with command_engine() as engine:
        prices = await list_prices(
            engine,
            provider=args.provider,
            model=args.model,
            tenant_id=args.tenant,
            at=args.at,
            min_input_tokens=args.above_input_tokens,
        )
    if args.json:
        print(json.dumps([_row(p) for p in prices], indent=2))
    else:
        _print_rows(prices)
    return 0


async def _add(args: argparse.Namespace) -> int:
    from persistence.ai_calls.price_api import add_price

    async with command_engine() as engine:
        price = await add_price(
            engine,
            args.provider,
            args.model,
            input_per_mtok=args.input,
            output_per_mtok=args.output,
            cache_read_per_mtok=args.cache_read,
            cache_write_per_mtok=args.cache_write,
            cache_write_1h_per_mtok=args.cache_write_1h,
            reasoning_per_mtok=args.reasoning,
            effective_from=args.effective_from or datetime.now(UTC),
            effective_to=args.effective_to,
            tenant_id=args.tenant,
            source=args.source,
            min_input_tokens=args.above_input_tokens,
        )
    if args.json:
        print(json.dumps(_row(price), indent=2))
    else:
        scope = f"tenant {price.tenant_id}" if price.tenant_id else "global"
        if price.min_input_tokens:
            scope += f", calls above {price.min_input_tokens} input tokens"
        print(
            f"price {price.id}: {price.provider}/{price.model} ({scope}) from {price.effective_from.isoformat()}"
        )
    return 0


async def _sync(args: argparse.Namespace) -> int:
    from persistence.ai_calls.price_sync import DEFAULT_PROVIDERS, sync_prices

    async with command_engine() as engine:
        report = await sync_prices(
            engine, dry_run=args.dry_run, providers=args.providers or DEFAULT_PROVIDERS
        )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    verb = "would change" if report.dry_run else "changed"
    print(
        f"{report.source}: {report.added} model(s) added, {report.changed} changed, {report.unchanged} "
        f"unchanged, {report.skipped_manual} skipped (price entered by hand); {verb} "
        f"{report.rows_inserted} row(s) inserted, {report.rows_closed} closed, {report.rows_deleted} deleted"
    )
    if args.verbose:
        for c in report.changes:
            since = "" if c.effective_from is None else f" from {c.effective_from.isoformat()}"
            print(f"  {c.kind:<8} {c.provider}/{c.model}{since}{' - ' + c.reason if c.reason else ''}")
        for c in report.unsupported:
            print(f"  not imported {c.provider}/{c.model} - {c.reason}")
    return 0


# action -> coroutine; another module may add its own (the lead hooks `reprice` in here).
PRICES_ACTIONS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "list": _list,
    "add": _add,
    "sync": _sync,
    "reprice": reprice_command,
}


async def prices_command(args: argparse.Namespace) -> int:
    action = PRICES_ACTIONS.get(args.prices_action)
    if action is None:
        print(f"error: unknown prices action {args.prices_action!r}", file=sys.stderr)
        return 2
    return await action(args)
