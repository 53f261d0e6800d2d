"""Logging with cost-alert rules active vs without (issue 15, must-show 5: at most 1.15x).

    python bench/bench_alerts.py                  # ~2 min on 2 cores
    python bench/bench_alerts.py --rules 200      # many rules

Starts its own PostgreSQL (durable: fsync on), migrates a fresh database and saves `--rules` alert
rules over every scope (organization, customer, product, provider, model, all; daily/weekly/monthly
in four time zones, percentages of a budget and amounts). Some cross thresholds all through the run
(amount ladders on the busiest scopes), so firings, outbox rows and deliveries to a callable sink
happen while the other side is timed, as in production.

Three contenders, each with its own engine with the package's defaults (`build_engine(DatabaseConfig)`:
pool 20 + 10) and its own `AICallLogger` with the logger's defaults: without alerts; the same again
(an A/A control, whose ratio is the noise floor of the run); with alerts (its `AlertEvaluator`,
default `interval` = 1 s, and its started `AlertDispatcher` use the alerted engine). Interleaved
rounds (the order rotates), medians over all samples and of the per-round ratios ("paired"):

1. `log_call` latency (`log_record` of a pre-built record), p50 and p95: each side logs calls one
   after another for `--segment` seconds, so the alerted side's background evaluations (one per
   second) run inside its own timed segment and compete with its calls for the event loop and
   the CPUs.
2. `log_batch` rows/s: each side logs `--batch`-row batches for `--segment` seconds.

Between segments the alerted side's pending evaluation and delivery are finished untimed, so its
background work never lands in the other side's segment.

Round trips: afterwards a counting pass (two more default engines whose connections' asyncpg
protocol objects log every request, as in bench_repository.py) logs `--count-calls` calls and one
batch per side, then runs the alerted side's evaluation (one, for all of them) and delivery, and
lists what each side sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
from benchenv import cpu_model, load_average
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.ai_calls import AICallLogger, AICallRecord, alert_delivery, alerts, ledger_sql
from persistence.ai_calls.alert_delivery import AlertDispatcher, AlertNotification
from persistence.ai_calls.alerts import AlertEvaluator, CostAlertRule
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.testing.database import free_port

MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-20250514"), ("google", "gemini-1.5-pro")]
ZONES = ("UTC", "America/New_York", "Europe/Paris", "Asia/Kolkata")
SCOPES = ("organization", "customer", "product", "provider", "model", "all")
_counter = 0


def records(n: int, rng: random.Random) -> list[AICallRecord]:
    global _counter
    now = datetime.now(UTC)
    out = []
    for _ in range(n):
        _counter += 1
        provider, model = rng.choice(MODELS)
        out.append(
            AICallRecord.coerce(
                {
                    "provider": provider,
                    "model": model,
                    "input_tokens": rng.randint(100, 4000),
                    "output_tokens": rng.randint(10, 800),
                    "cost_usd": Decimal(rng.randint(100, 20_000)) / 1_000_000,
                    "latency_ms": rng.randint(200, 3000),
                    "organization_id": f"org_{rng.randint(0, 9)}",
                    "customer_id": f"cust_{rng.randint(0, 99):03d}",
                    "product_id": rng.choice(("chat", "search", "agent")),
                    "environment": "production",
                    "request_id": f"bench-{_counter}",
                    "created_at": now - timedelta(seconds=rng.random()),
                }
            )
        )
    return out


def rules(n: int) -> list[CostAlertRule]:
    """`n` rules cycling through the scopes, periods and zones: most with a budget no run reaches,
    a tenth with a tiny one (they fire early), and every seventh an amount ladder that keeps firing
    as the spend grows during the run."""
    out = []
    for i in range(n):
        scope = SCOPES[i % len(SCOPES)]
        value = {
            "organization": f"org_{i % 10}",
            "customer": f"cust_{i % 100:03d}",
            "product": ("chat", "search", "agent")[i % 3],
            "provider": MODELS[i % 3][0],
            "model": MODELS[i % 3][1],
            "all": None,
        }[scope]
        common: dict[str, Any] = {
            "name": f"rule-{i}",
            "scope": scope,
            "scope_value": value,
            "period": ("daily", "weekly", "monthly")[i % 3],
            "time_zone": ZONES[i % len(ZONES)],
        }
        if i % 7 == 3:
            ladder = tuple(Decimal(2**k) for k in range(14))  # 1 .. 8192 USD
            out.append(CostAlertRule(**common, thresholds=ladder))
        else:
            low = i % 10 == 0
            out.append(
                CostAlertRule(
                    **common,
                    threshold_kind="percent",
                    budget_usd=Decimal("0.5") if low else Decimal(1_000_000),
                    thresholds=(Decimal(50), Decimal(80), Decimal(100)),
                )
            )
    return out


# -- round trips (as bench_repository.py counts them) ---------------------------------------------

# asyncpg protocol methods that send a request and wait for the server's answer: one round trip each.
_REQUESTS = frozenset(
    {"prepare", "bind_execute", "bind_execute_many", "bind", "execute", "query", "copy_in", "copy_out",
     "close_statement"}
)  # fmt: skip
# The package's own statements, named; anything else is named by its first word.
_NAMES = {
    ledger_sql.LOG_CALL.strip(): "log_call INSERT",
    alerts._SPEND.strip(): "evaluate: spend of the windows",
    alerts._FIRE.strip(): "evaluate: fire (firings + outbox)",
    alerts._LOAD_RULES.strip(): "evaluate: load rules",
    alert_delivery._CLAIM.strip(): "dispatch: claim",
    alert_delivery._RECORD.strip(): "dispatch: record attempt",
}


def _label(name: str, first: object) -> str:
    query = str(getattr(first, "query", first))
    if name == "prepare":
        return "Parse"
    if name == "copy_in":
        return "COPY"
    known = _NAMES.get(query.strip())
    if known is not None:
        return known
    if "pg_advisory_unlock_all()" in query:
        return "RESET (pool release)"
    words = query.replace(";", " ").split()
    return words[0].upper() if words else "(empty)"


class CountingProtocol:
    """Stands in for an asyncpg connection's protocol; logs each request it sends."""

    def __init__(self, inner: Any, log: Counter[str]) -> None:
        self._inner = inner
        self._log = log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in _REQUESTS:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._log[_label(name, args[0] if args else kwargs.get("state"))] += 1
            return attr(*args, **kwargs)

        return counted


def counting_engine(config: DatabaseConfig, log: Counter[str]) -> AsyncEngine:
    engine = build_engine(config)

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        driver = dbapi_connection.driver_connection
        driver._protocol = CountingProtocol(driver._protocol, log)

    event.listen(engine.sync_engine.pool, "connect", on_connect)
    return engine


def _listing(counts: Counter[str], per: int) -> str:
    return " · ".join(f"{name} {n / per:g}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


async def count_round_trips(
    config: DatabaseConfig, calls: int, batch: int, rng: random.Random
) -> dict[str, str]:
    """What each side sends per steady-state log_call, per batch, and per evaluation."""
    plain_log: Counter[str] = Counter()
    alert_log: Counter[str] = Counter()
    plain_engine = counting_engine(config, plain_log)
    alert_engine = counting_engine(config, alert_log)
    delivered: list[AlertNotification] = []
    dispatcher = AlertDispatcher(alert_engine, {"default": delivered.append})
    # An interval no pass reaches: the calls' and the batch's requests are counted apart from the
    # evaluation they schedule, which `flush()` then runs at once and is counted on its own.
    evaluator = AlertEvaluator(alert_engine, dispatcher=dispatcher, interval=3600)
    out: dict[str, str] = {}
    try:
        async with (
            AICallLogger(plain_engine) as plain,
            AICallLogger(alert_engine, alerts=evaluator) as alerted,
        ):
            for log in (plain, alerted):  # warm up: connections opened, statements prepared, prices read
                for r in records(3, rng):
                    await log.log_record(r)
                await log.log_batch(records(10, rng))
            await evaluator.flush()
            await dispatcher.dispatch_pending()
            for side, log, counts in (("plain", plain, plain_log), ("alerted", alerted, alert_log)):
                counts.clear()
                for r in records(calls, rng):
                    await log.log_record(r)
                out[f"{side} call"] = _listing(counts, calls)
                out[f"{side} call total"] = f"{sum(counts.values()) / calls:g}"
                counts.clear()
                await log.log_batch(records(batch, rng))
                out[f"{side} batch"] = _listing(counts, 1)
                out[f"{side} batch total"] = str(sum(counts.values()))
            alert_log.clear()
            await evaluator.flush()  # the evaluation the alerted calls and batch scheduled
            out["evaluation"] = _listing(alert_log, 1)
            out["evaluation total"] = str(sum(alert_log.values()))
    finally:
        await evaluator.close()
        await dispatcher.close()
        await plain_engine.dispose()
        await alert_engine.dispose()
    return out


# -- timing ---------------------------------------------------------------------------------------


async def timed_calls(log: AICallLogger, seconds: float, rng: random.Random, sink: list[float]) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for r in records(200, rng):  # built before timing each call
            t = time.perf_counter()
            await log.log_record(r)
            sink.append(time.perf_counter() - t)


async def timed_batches(
    log: AICallLogger, seconds: float, size: int, rng: random.Random
) -> tuple[int, float]:
    rows, spent = 0, 0.0
    while spent < seconds:
        batch = records(size, rng)
        t = time.perf_counter()
        rows += await log.log_batch(batch)
        spent += time.perf_counter() - t
    return rows, spent


def _cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else values[0]


PLAIN = "without alerts"
CONTROL = "without alerts, 2nd engine (A/A control)"
ALERTED = "with alerts"


@dataclass
class Side:
    """One contender's samples, per round: call latencies, and (rows, seconds) of its batches."""

    name: str
    calls: list[list[float]] = field(default_factory=list)
    batches: list[tuple[int, float]] = field(default_factory=list)

    @property
    def n_calls(self) -> int:
        return sum(len(r) for r in self.calls)

    @property
    def n_rows(self) -> int:
        return sum(rows for rows, _ in self.batches)

    def p(self, q: int) -> float:
        return _p([x for r in self.calls for x in r], q) * 1000

    def rows_per_s(self) -> float:
        return self.n_rows / sum(spent for _, spent in self.batches)


def paired(a: Side, b: Side, stat: Callable[[list[float]], float]) -> float:
    """The median over rounds of b's statistic over a's, each round's own samples."""
    return statistics.median(stat(rb) / stat(ra) for ra, rb in zip(a.calls, b.calls, strict=True))


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds after one warm-up round")
    parser.add_argument("--segment", type=float, default=3.0,
                        help="seconds each side logs per round, per measure (default %(default)s)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=2000, help="rows per log_batch")
    parser.add_argument("--rules", type=int, default=30, help="alert rules saved (default %(default)s)")
    parser.add_argument(
        "--count-calls", type=int, default=200, help="log_calls per side in the counting pass"
    )
    args = parser.parse_args()
    rng = random.Random(15)

    data = Path(tempfile.mkdtemp(prefix="bench-alerts-", dir="/tmp"))
    server = EmbeddedServer(data, port=free_port(), bindir=EmbeddedConfig().pg_bindir, listen_address="127.0.0.1",
                            settings={"max_connections": "150"})  # fmt: skip
    server.start()
    delivered: list[AlertNotification] = []
    sides = [Side(PLAIN), Side(CONTROL), Side(ALERTED)]
    try:
        server.ensure_database("bench")
        # The package's defaults: pool 20 + 10, idle-only ping; one engine per side.
        config = DatabaseConfig.model_validate(
            {
                "host": str(server.socket_dir),
                "port": server.port,
                "user": server.superuser,
                "database": "bench",
            }
        )
        engines = [build_engine(config) for _ in sides]
        await migrations.upgrade(engines[0])
        dispatcher = AlertDispatcher(engines[2], {"default": delivered.append})
        evaluator = AlertEvaluator(engines[2], dispatcher=dispatcher)
        saved = rules(args.rules)
        for rule in saved:
            await evaluator.save_rule(rule)
        load_before = load_average()
        busy0 = _cpu_busy()
        cpu0 = time.process_time()
        started = time.perf_counter()
        async with (
            dispatcher,
            AICallLogger(engines[0]) as plain,
            AICallLogger(engines[1]) as control,
            AICallLogger(engines[2], alerts=evaluator) as alerted,
        ):
            loggers = {PLAIN: plain, CONTROL: control, ALERTED: alerted}

            async def settle() -> None:
                """The alerted side's pending evaluation and delivery, untimed."""
                await evaluator.flush()
                await dispatcher.dispatch_pending()

            for i in range(args.rounds + 1):
                warm = i == 0
                order = sides[i % 3 :] + sides[: i % 3]  # each side goes first, second and third in turn
                segment = args.segment / 3 if warm else args.segment
                for side in order:
                    calls: list[float] = []
                    await timed_calls(loggers[side.name], segment, rng, calls)
                    await settle()
                    if not warm:
                        side.calls.append(calls)
                for side in order:
                    rows, spent = await timed_batches(loggers[side.name], segment, args.batch, rng)
                    await settle()
                    if not warm:
                        side.batches.append((rows, spent))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu0
        busy1 = _cpu_busy()
        load_after = load_average()
        await evaluator.close()
        await dispatcher.close()
        raw = await asyncpg.connect(host=str(server.socket_dir), port=server.port, user=server.superuser,
                                    database="bench")  # fmt: skip
        version = await raw.fetchval("SHOW server_version")
        firings = await raw.fetchval("SELECT count(*) FROM cost_alert_firings")
        await raw.close()
        for engine in engines:
            await engine.dispose()
        trips = await count_round_trips(config, args.count_calls, args.batch, rng)
    finally:
        server.stop(mode="fast")
        shutil.rmtree(data, ignore_errors=True)

    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100
    a, c, b = sides
    scopes = Counter(rule.scope for rule in saved)
    print(f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}")
    print(f"- versions: Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
          f"asyncpg {asyncpg.__version__}, PostgreSQL {version}")  # fmt: skip
    print(f"- load: 1-minute load average {load_before} before, {load_after} after; the machine's CPUs "
          f"{busy:.0f}% busy during the timed rounds ({elapsed:.0f} s), this client {client_cpu / elapsed * 50:.0f}% "
          f"of 2 CPUs")  # fmt: skip
    print(f"- run: {args.rounds} rounds after 1 warm-up round, the three sides in rotating order; {args.segment:g} s "
          f"of log_call and {args.segment:g} s of log_batch per side per round; calls "
          f"{a.n_calls:,} / {c.n_calls:,} / {b.n_calls:,}, batch rows {a.n_rows:,} / {c.n_rows:,} / {b.n_rows:,} "
          f"(without / control / with)")  # fmt: skip
    print(f"- rules: {len(saved)} ({', '.join(f'{n} {s}' for s, n in scopes.items())}); daily/weekly/monthly "
          f"in {', '.join(ZONES)}; {firings} firings and {len(delivered)} deliveries during the run")  # fmt: skip
    print()
    print("| measure | without alerts | A/A control | with alerts | with / without | paired | control / without "
          "| target | met |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")

    def row(name: str, values: Callable[[Side], float], fmt: Callable[[float], str], slower: Callable[[float, float], float],
            target: bool, paired: float) -> None:  # fmt: skip
        ratio = slower(values(b), values(a))
        met = ("yes" if ratio <= 1.15 else "NO") if target else "(information)"
        print(f"| {name} | {fmt(values(a))} | {fmt(values(c))} | {fmt(values(b))} | {ratio:.2f}x | {paired:.2f}x | "
              f"{slower(values(c), values(a)):.2f}x | {'<= 1.15x' if target else ''} | {met} |")  # fmt: skip

    def latency(x: float, y: float) -> float:
        return x / y

    def throughput(x: float, y: float) -> float:
        return y / x

    ms = "{:.3f}".format
    row(
        "log_call p50 latency, ms",
        lambda s: s.p(50),
        ms,
        latency,
        True,
        paired(a, b, lambda calls: _p(calls, 50)),
    )
    row(
        "log_call p95 latency, ms",
        lambda s: s.p(95),
        ms,
        latency,
        False,
        paired(a, b, lambda calls: _p(calls, 95)),
    )
    row(f"log_batch ({args.batch:,} rows), rows/s", Side.rows_per_s, "{:,.0f}".format, throughput, True,
        statistics.median(ra / sa / (rb / sb) for (ra, sa), (rb, sb) in zip(a.batches, b.batches, strict=True)))  # fmt: skip
    print()
    print("Ratios: \"with / without\" is judged against the target (all samples of a side pooled); \"paired\" is "
          "the median of the per-round ratios (a round's segments ran back to back, so it cancels load that "
          "drifts between rounds); \"control / without\" compares two identical sides without alerts: the noise "
          "floor of this run.")  # fmt: skip
    print()
    print("Round trips (requests sent and waited for, counted at asyncpg's protocol; steady state):")
    print()
    print("| work | without alerts | with alerts |")
    print("|---|---|---|")
    print(f"| per log_call | {trips['plain call total']}: {trips['plain call']} | "
          f"{trips['alerted call total']}: {trips['alerted call']} |")  # fmt: skip
    print(f"| per log_batch ({args.batch:,} rows) | {trips['plain batch total']}: {trips['plain batch']} | "
          f"{trips['alerted batch total']}: {trips['alerted batch']} |")  # fmt: skip
    print(f"| per background evaluation (at most one a second, for all calls since the last) | — | "
          f"{trips['evaluation total']}: {trips['evaluation']} |")  # fmt: skip
    print("| per firing (rare: once per rule, window and threshold) | — | evaluate: fire 1 (firings + outbox, "
          "one statement) · dispatch: claim 1 · BEGIN · record attempt 1 per notification · COMMIT (from the code, "
          "not counted here) |")  # fmt: skip
    print("| the dispatcher's idle poll (every `poll_interval`, 5 s) | — | dispatch: claim 1 |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
