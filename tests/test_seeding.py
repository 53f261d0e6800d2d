"""Seeding is deterministic, idempotent, atomic and produces related, consistent data (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ai_calls import normalise_usage
from persistence.engine import build_engine
from persistence.models import Base, Claim, ModelCheckpoint
from persistence.seeding import (
    LEDGER_DERIVED_TABLES,
    REFERENCE_TABLES,
    SEEDED_TABLES,
    SeedPlan,
    call_cost,
    decide_consensus,
    seed_database,
    seed_uuid,
    table_counts,
)
from persistence.testing.database import ThrowawayPostgres

AS_OF = datetime(2025, 11, 19, tzinfo=UTC)  # a Wednesday
SMALL = SeedPlan(
    claims=20, ai_calls=300, platform_events=900, agent_executions=250, cost_events=120, days=10, as_of=AS_OF
)
LARGER = dataclasses.replace(SMALL, claims=30, ai_calls=450)
# 3 models: claim-verifier x 5 frameworks, evidence-ranker x 3, consensus-calibrator x 1.
MODEL_FRAMEWORK_PAIRS = 9


@pytest.fixture
def seed_engine(engine: AsyncEngine) -> AsyncEngine:
    """The plugin's engine: rolled back after the test, or a private database under `commits`."""
    return engine


@contextlib.asynccontextmanager
async def another_database(pg: ThrowawayPostgres) -> AsyncIterator[AsyncEngine]:
    """A second private clone of the migrated template, for comparing two seeded databases."""
    name = pg.clone()
    engine = build_engine(pg.config(name))
    try:
        yield engine
    finally:
        await engine.dispose()
        pg.drop(name)


async def checksums(engine: AsyncEngine, *, skip: dict[str, set[str]] | None = None) -> dict[str, str]:
    """md5 over every row's text form per table, rows sorted, so equal checksums mean equal content.

    The seed-run record is left out: its created_at is the time of the run (see test_seed_run_record).
    """
    skip = skip or {}
    out = {}
    async with engine.connect() as conn:
        for name in SEEDED_TABLES:
            cols = ", ".join(
                f'"{c.name}"'
                for c in Base.metadata.tables[name].columns
                if c.name not in skip.get(name, set())
            )
            where = " WHERE entity_type <> 'seed_run'" if name == "audit_log" else ""
            sql = (
                f"SELECT md5(coalesce(string_agg(r, E'\\n' ORDER BY r), '')) "
                f"FROM (SELECT ROW({cols})::text AS r FROM {name}{where}) AS rows"
            )
            out[name] = str(await conn.scalar(text(sql)))
    return out


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


def test_seeded_tables_are_every_table_in_dependency_order() -> None:
    assert set(SEEDED_TABLES) | set(LEDGER_DERIVED_TABLES) | set(REFERENCE_TABLES) == set(
        Base.metadata.tables
    )
    for table in Base.metadata.tables.values():
        for fk in table.foreign_keys if table.name in SEEDED_TABLES else ():
            assert SEEDED_TABLES.index(fk.column.table.name) < SEEDED_TABLES.index(table.name)


def test_default_as_of_is_today_midnight_utc() -> None:
    as_of = SeedPlan().resolved_as_of()
    assert as_of.utcoffset() == timedelta(0)
    assert (as_of.hour, as_of.minute, as_of.second, as_of.microsecond) == (0, 0, 0, 0)
    assert as_of.date() == datetime.now(UTC).date()
    plus_two = datetime(2025, 11, 19, 2, tzinfo=timezone(timedelta(hours=2)))
    assert SeedPlan(as_of=plus_two).resolved_as_of() == AS_OF
    # "Today" is injectable, and is the UTC day.
    assert SeedPlan().resolved_as_of(lambda: plus_two) == datetime(2025, 11, 19, tzinfo=UTC)
    assert SeedPlan().resolved_as_of(lambda: plus_two - timedelta(hours=1)) == datetime(
        2025, 11, 18, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        SeedPlan().resolved_as_of(lambda: datetime(2025, 11, 19))  # noqa: DTZ001 - the naive value under test


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"days": 3651}, "days must be <= 3650"),
        ({"days": 10**12}, "days must be <= 3650"),
        ({"verifications_per_claim": 6}, "verifications_per_claim must be <= 5"),
        ({"training_per_claim": 11}, "training_per_claim must be <= 10"),
        ({"service_instances": 101}, "service_instances must be <= 100"),
        ({"checkpoints_per_model": 100}, "checkpoints_per_model must be <= 99"),
        ({"claims": 100_001}, "claims must be <= 100000"),
        ({"ai_calls": 1_000_001}, "ai_calls must be <= 1000000"),
        ({"as_of": datetime(1, 1, 1, tzinfo=UTC)}, "as_of must be in"),
        ({"as_of": datetime(9999, 12, 31, tzinfo=UTC)}, "as_of must be in"),
        ({"claims": True}, "claims must be an int"),
    ],
)
def test_sizes_are_bounded(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SeedPlan(**overrides)


def test_the_largest_plan_is_accepted() -> None:
    SeedPlan(
        claims=100_000,
        verifications_per_claim=5,
        training_per_claim=10,
        checkpoints_per_model=99,
        service_instances=100,
        ai_calls=1_000_000,
        days=3650,
    )


async def test_first_run_fills_every_table(seed_engine: AsyncEngine) -> None:
    report = await seed_database(seed_engine, SMALL)

    assert report.before == dict.fromkeys(SEEDED_TABLES, 0)
    assert all(report.after[name] > 0 for name in SEEDED_TABLES), report.after
    assert report.inserted == report.after
    assert await table_counts(seed_engine) == report.after
    after = report.after
    assert after["claims"] == 20
    assert after["verification_results"] == 20 * 3
    assert after["training_data"] == 20 * 2
    assert after["model_checkpoints"] == MODEL_FRAMEWORK_PAIRS * 4
    assert after["service_health"] == 4 * 3
    assert after["ai_calls"] == 300
    assert 10 <= after["consensus_decisions"] <= 20
    assert after["audit_log"] == 20 + 60 + after["consensus_decisions"] + 1  # + the seed-run record
    # Ten days of calls: reports for [12 Nov, 19 Nov) and [5 Nov, 12 Nov), filed on their last day.
    assert after["reconciliation_reports"] == 2


async def test_a_short_window_ending_on_a_sunday_still_fills_every_table(seed_engine: AsyncEngine) -> None:
    plan = SeedPlan(claims=3, ai_calls=40, days=3, as_of=datetime(2026, 11, 1, tzinfo=UTC))
    report = await seed_database(seed_engine, plan)
    assert all(report.after[name] > 0 for name in SEEDED_TABLES), report.after
    assert report.after["reconciliation_reports"] == 1


async def test_default_plan_seeds(seed_engine: AsyncEngine) -> None:
    report = await seed_database(seed_engine)
    assert report.after["claims"] == 200
    assert report.after["verification_results"] == 600
    assert report.after["training_data"] == 400
    assert report.after["ai_calls"] == 5000
    assert report.after["reconciliation_reports"] >= 4


async def test_second_run_inserts_and_changes_nothing(seed_engine: AsyncEngine) -> None:
    first = await seed_database(seed_engine, SMALL)
    data = await checksums(seed_engine)

    second = await seed_database(seed_engine, SMALL)
    smaller = await seed_database(seed_engine, dataclasses.replace(SMALL, claims=5, ai_calls=10))

    assert second.before == first.after
    assert second.inserted == dict.fromkeys(SEEDED_TABLES, 0)
    assert smaller.inserted == dict.fromkeys(SEEDED_TABLES, 0)
    assert await checksums(seed_engine) == data


@pytest.mark.commits
async def test_same_plan_gives_identical_data_on_two_databases(
    seed_engine: AsyncEngine, migrated: ThrowawayPostgres
) -> None:
    await seed_database(seed_engine, SMALL)
    async with another_database(migrated) as other:
        await seed_database(other, SMALL)
        assert await checksums(other) == await checksums(seed_engine)

    async with another_database(migrated) as other:
        await seed_database(other, dataclasses.replace(SMALL, seed=7))
        mine, theirs = await checksums(seed_engine), await checksums(other)
        assert mine["claims"] != theirs["claims"]
        assert mine["ai_calls"] != theirs["ai_calls"]
        # Keys depend on the row index only, never on the seed.
        ids = "SELECT id, external_id FROM claims ORDER BY id"
        assert await rows(other, ids) == await rows(seed_engine, ids)


@pytest.mark.commits
async def test_larger_plan_adds_only_the_difference(
    seed_engine: AsyncEngine, migrated: ThrowawayPostgres
) -> None:
    first = await seed_database(seed_engine, SMALL)
    grown = await seed_database(seed_engine, LARGER)

    inserted = grown.inserted
    assert inserted["claims"] == 10
    assert inserted["verification_results"] == 30
    assert inserted["training_data"] == 20
    assert inserted["ai_calls"] == 150
    assert inserted["model_checkpoints"] == 0
    assert inserted["service_health"] == 0
    assert inserted["reconciliation_reports"] == 0
    assert grown.after["consensus_decisions"] > first.after["consensus_decisions"]
    assert inserted["audit_log"] == 10 + 30 + inserted["consensus_decisions"]

    # Growing in steps ends where seeding the larger plan at once does (ledger ids follow insert order).
    async with another_database(migrated) as direct:
        await seed_database(direct, LARGER)
        # Ledger ids (and the ids of the calls' cost events, derived from them) follow insert order.
        skip = {"ai_calls": {"id"}, "analytics.tenant_cost_events": {"call_id", "event_id"}}
        assert await checksums(seed_engine, skip=skip) == await checksums(direct, skip=skip)
    await assert_reports_match_ledger(seed_engine)


@pytest.mark.commits
async def test_reset_reseeds_from_scratch(seed_engine: AsyncEngine) -> None:
    first = await seed_database(seed_engine, SMALL)
    data = await checksums(seed_engine)
    async with seed_engine.begin() as conn:
        await conn.execute(
            insert(Claim).values(external_id="not-seeded", content="The Moon is made of cheese.")
        )

    again = await seed_database(seed_engine, SMALL, reset=True)

    assert again.before == dict.fromkeys(SEEDED_TABLES, 0)
    assert again.after == first.after
    # Identities restart too, so even the ledger's ids are the same.
    assert await checksums(seed_engine) == data


def clock(at: datetime) -> Callable[[], datetime]:
    return lambda: at


async def test_seed_run_record(seed_engine: AsyncEngine) -> None:
    run_at = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
    report = await seed_database(seed_engine, SMALL, now=clock(run_at))
    assert (report.seed, report.as_of) == (42, AS_OF)

    record = await rows(seed_engine, "SELECT * FROM audit_log WHERE entity_type = 'seed_run'")
    assert len(record) == 1
    assert record[0].id == seed_uuid("audit_log", "seed-run")
    assert (record[0].entity_id, record[0].action, record[0].user_id) == (
        "persistence.seeding",
        "seed",
        "seed",
    )
    assert record[0].created_at == run_at
    assert record[0].metadata == {
        "seed": 42,
        "as_of": "2025-11-19T00:00:00+00:00",
        "plan": {
            "claims": 20,
            "verifications_per_claim": 3,
            "training_per_claim": 2,
            "checkpoints_per_model": 4,
            "service_instances": 3,
            "ai_calls": 300,
            "platform_events": 900,
            "agent_executions": 250,
            "cost_events": 120,
            "days": 10,
        },
    }


async def test_a_later_day_without_as_of_inserts_nothing(seed_engine: AsyncEngine) -> None:
    today = SeedPlan(claims=20, ai_calls=300, days=10)  # as_of: "today"
    first = await seed_database(seed_engine, today, now=clock(datetime(2026, 11, 20, 23, 59, tzinfo=UTC)))
    assert first.as_of == datetime(2026, 11, 20, tzinfo=UTC)
    data = await checksums(seed_engine)

    for later in (datetime(2026, 11, 21, 0, 1, tzinfo=UTC), datetime(2027, 3, 2, 9, tzinfo=UTC)):
        again = await seed_database(seed_engine, today, now=clock(later))
        assert again.as_of == first.as_of
        assert again.inserted == dict.fromkeys(SEEDED_TABLES, 0)
    # Naming the recorded date explicitly is the same run.
    same = dataclasses.replace(today, as_of=datetime(2026, 11, 20, tzinfo=UTC))
    assert (await seed_database(seed_engine, same)).inserted == dict.fromkeys(SEEDED_TABLES, 0)
    assert await checksums(seed_engine) == data
    assert await rows(seed_engine, "SELECT report_date FROM reconciliation_reports ORDER BY 1") == [
        (date(2026, 11, 13),),
        (date(2026, 11, 20),),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"seed": 99},
            r"database was seeded with seed=42 as_of=2025-11-19; pass --reset to reseed with seed=99$",
        ),
        (
            {"as_of": datetime(2025, 11, 20, tzinfo=UTC)},
            r"seeded with seed=42 as_of=2025-11-19; pass --reset to reseed with seed=42 as_of=2025-11-20$",
        ),
    ],
)
async def test_another_seed_or_as_of_is_refused_and_writes_nothing(
    seed_engine: AsyncEngine, change: dict[str, Any], message: str
) -> None:
    await seed_database(seed_engine, SMALL)
    data, counts = await checksums(seed_engine), await table_counts(seed_engine)

    with pytest.raises(ValueError, match=message):
        await seed_database(seed_engine, dataclasses.replace(LARGER, **change))

    assert await table_counts(seed_engine) == counts
    assert await checksums(seed_engine) == data


async def test_reset_reseeds_with_another_seed(seed_engine: AsyncEngine, migrated: ThrowawayPostgres) -> None:
    await seed_database(seed_engine, SMALL)
    other = dataclasses.replace(SMALL, seed=99, as_of=None)
    later = datetime(2026, 1, 5, 12, tzinfo=UTC)

    reseeded = await seed_database(seed_engine, other, reset=True, now=clock(later))

    assert (reseeded.seed, reseeded.as_of) == (99, datetime(2026, 1, 5, tzinfo=UTC))
    assert reseeded.before == dict.fromkeys(SEEDED_TABLES, 0)
    # The same data as seed 99 on an empty database, and the new anchor holds from now on.
    async with another_database(migrated) as direct:
        await seed_database(direct, other, now=clock(later))
        assert await checksums(seed_engine) == await checksums(direct)
    assert (await seed_database(seed_engine, other)).inserted == dict.fromkeys(SEEDED_TABLES, 0)
    with pytest.raises(ValueError, match="seeded with seed=99 as_of=2026-01-05"):
        await seed_database(seed_engine, SMALL)


async def test_seeded_rows_without_a_record_are_refused(seed_engine: AsyncEngine) -> None:
    await seed_database(seed_engine, SMALL)
    async with seed_engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE entity_type = 'seed_run'"))
    counts = await table_counts(seed_engine)

    with pytest.raises(ValueError, match="no seed-run record"):
        await seed_database(seed_engine, SMALL)
    assert await table_counts(seed_engine) == counts

    assert (await seed_database(seed_engine, SMALL, reset=True)).after == {
        **counts,
        "audit_log": counts["audit_log"] + 1,
    }


async def test_reset_refuses_to_empty_a_table_that_references_ours(seed_engine: AsyncEngine) -> None:
    await seed_database(seed_engine, SMALL)
    async with seed_engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE user_notes (id serial PRIMARY KEY, claim_id uuid NOT NULL REFERENCES claims (id))"
            )
        )
        await conn.execute(text("INSERT INTO user_notes (claim_id) SELECT id FROM claims LIMIT 3"))
    data, counts = await checksums(seed_engine), await table_counts(seed_engine)

    with pytest.raises(
        ValueError,
        match=r"cannot reset: user_notes references claims \(foreign key user_notes_claim_id_fkey\)",
    ):
        await seed_database(seed_engine, dataclasses.replace(SMALL, seed=7), reset=True)

    assert await rows(seed_engine, "SELECT count(*) FROM user_notes") == [(3,)]
    assert await table_counts(seed_engine) == counts
    assert await checksums(seed_engine) == data


async def test_exactly_one_active_checkpoint_per_model_and_framework(seed_engine: AsyncEngine) -> None:
    # A live checkpoint the seeder did not write: seeding must keep it the only active one.
    async with seed_engine.begin() as conn:
        await conn.execute(
            insert(ModelCheckpoint).values(
                model_name="claim-verifier",
                framework="empirical",
                version="0.9.0-hotfix",
                checkpoint_path="s3://models/hotfix",
                metrics={"f1": 0.8},
                is_active=True,
            )
        )
    await seed_database(seed_engine, SMALL)
    await seed_database(seed_engine, dataclasses.replace(SMALL, checkpoints_per_model=6))

    active = await rows(
        seed_engine,
        "SELECT model_name, framework, count(*) FILTER (WHERE is_active), count(*) "
        "FROM model_checkpoints GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert len(active) == MODEL_FRAMEWORK_PAIRS
    assert all(n_active == 1 for _, _, n_active, _ in active), active
    assert {total for m, f, _, total in active if (m, f) != ("claim-verifier", "empirical")} == {6}
    hotfix = await rows(seed_engine, "SELECT is_active FROM model_checkpoints WHERE version = '0.9.0-hotfix'")
    assert hotfix == [(True,)]


async def test_related_rows_are_consistent(seed_engine: AsyncEngine) -> None:
    await seed_database(seed_engine, SMALL)

    orphans = await rows(
        seed_engine,
        "SELECT claim_id FROM verification_results v "
        "WHERE NOT EXISTS (SELECT 1 FROM claims c WHERE c.external_id = v.claim_id)",
    )
    assert orphans == []

    decisions = await rows(
        seed_engine,
        "SELECT d.claim_id, d.consensus_result, d.consensus_confidence, d.participating_frameworks, "
        "       array_agg(v.result['valid']::boolean ORDER BY v.created_at), "
        "       array_agg(v.confidence ORDER BY v.created_at), array_agg(v.framework ORDER BY v.created_at) "
        "FROM consensus_decisions d LEFT JOIN verification_results v ON v.claim_id = d.claim_id "
        "GROUP BY d.id",
    )
    assert decisions
    for claim_id, result, confidence, frameworks, valid, confidences, names in decisions:
        assert valid != [None], f"consensus for {claim_id} has no verifications"
        verdict = decide_consensus(list(zip(valid, confidences, strict=True)))
        assert result["valid"] == verdict.valid
        assert confidence == pytest.approx(sum(confidences) / len(confidences), abs=1e-12)
        assert set(frameworks) == set(names)

    training = await rows(
        seed_engine,
        "SELECT t.claim_id, t.claim_text = c.content, t.used_in_training, t.training_batch_id "
        "FROM training_data t LEFT JOIN claims c ON c.id = t.claim_id",
    )
    assert all(claim_id is not None and same_text for claim_id, same_text, _, _ in training)
    assert all((batch is not None) == used for _, _, used, batch in training)
    assert {used for _, _, used, _ in training} == {True, False}

    audit = await rows(
        seed_engine,
        "SELECT entity_type, count(*), min(action), max(action), bool_and(user_id = 'seed') "
        "FROM audit_log GROUP BY 1",
    )
    counts = await table_counts(seed_engine)
    assert {t: (n, lo, hi, ok) for t, n, lo, hi, ok in audit} == {
        "claim": (counts["claims"], "insert", "insert", True),
        "verification_result": (counts["verification_results"], "insert", "insert", True),
        "consensus_decision": (counts["consensus_decisions"], "insert", "insert", True),
        "seed_run": (1, "seed", "seed", True),
    }
    claim_changes = await rows(
        seed_engine,
        "SELECT a.changes -> 'content' = jsonb_build_array(null, c.content) "
        "FROM audit_log a JOIN claims c ON c.external_id = a.entity_id WHERE a.entity_type = 'claim'",
    )
    assert claim_changes and all(ok for (ok,) in claim_changes)

    services = await rows(
        seed_engine, "SELECT service_name, count(DISTINCT instance_id) FROM service_health GROUP BY 1"
    )
    assert dict(services) == {"api-gateway": 3, "verifier": 3, "consensus-engine": 3, "trainer": 3}


async def assert_reports_match_ledger(engine: AsyncEngine) -> None:
    reports = await rows(
        engine,
        "SELECT r.report_date, r.period_start, r.period_end, r.total_calls, r.total_cost_usd, r.total_tokens, "
        "       r.provider_stats, r.revenium_calls, r.revenium_cost_usd, r.variance_pct, r.status, "
        "       (SELECT count(*) FROM ai_calls a WHERE a.created_at >= r.period_start AND a.created_at < r.period_end),"
        "       (SELECT round(coalesce(sum(cost_usd), 0), 2) FROM ai_calls a "
        "        WHERE a.created_at >= r.period_start AND a.created_at < r.period_end),"
        "       (SELECT coalesce(sum(total_tokens), 0) FROM ai_calls a "
        "        WHERE a.created_at >= r.period_start AND a.created_at < r.period_end) "
        "FROM reconciliation_reports r ORDER BY r.report_date",
    )
    assert reports
    for (report_date, start, end, calls, cost, tokens, stats, rev_calls, rev_cost, variance, status,
         ledger_calls, ledger_cost, ledger_tokens) in reports:  # fmt: skip
        assert (calls, cost, tokens) == (ledger_calls, ledger_cost, ledger_tokens), report_date
        assert end - start == timedelta(days=7)
        assert (AS_OF - end) % timedelta(days=7) == timedelta(0)
        assert end.date() == report_date
        assert sum(p["calls"] for p in stats.values()) == calls
        assert (
            sum((Decimal(p["cost_usd"]) for p in stats.values()), Decimal(0)).quantize(Decimal("0.01"))
            == cost
        )
        assert status == "PASS"
        assert abs(calls - rev_calls) <= calls / 100
        assert abs(cost - rev_cost) <= cost / 100
        assert isinstance(variance, Decimal)
        assert variance <= 1


async def test_reconciliation_reports_match_the_ledger(seed_engine: AsyncEngine) -> None:
    await seed_database(seed_engine, SMALL)
    await assert_reports_match_ledger(seed_engine)


async def test_ai_calls_are_priced_attributed_and_shaped(seed_engine: AsyncEngine) -> None:
    await seed_database(seed_engine, SMALL)
    calls = await rows(
        seed_engine,
        "SELECT created_at, provider, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
        "usage, status, error_class, cost_usd, request_id, customer_id, organization_id, product_id, environment "
        "FROM ai_calls ORDER BY id",
    )
    assert len(calls) == 300
    assert len({c.request_id for c in calls}) == 300
    assert all(c.request_id.startswith("seed-call-") for c in calls)
    assert [c.created_at for c in calls] == sorted(c.created_at for c in calls)
    for c in calls:
        assert AS_OF - timedelta(days=SMALL.days) <= c.created_at < AS_OF
        assert c.created_at.utcoffset() == timedelta(0)
        assert c.cost_usd == call_cost(
            c.model, c.input_tokens, c.output_tokens, c.cache_read_tokens, c.cache_write_tokens
        )
        assert None not in (c.customer_id, c.organization_id, c.product_id, c.environment)
        # The raw usage is the provider's own shape and splits into exactly the stored buckets.
        buckets = normalise_usage(c.provider, c.usage)
        assert (buckets.input_tokens, buckets.output_tokens, buckets.cache_read_tokens,
                buckets.cache_write_tokens) == (c.input_tokens, c.output_tokens, c.cache_read_tokens,
                                                c.cache_write_tokens)  # fmt: skip
        assert (c.status == "success") == (c.error_class is None)
        if c.status != "success":
            assert c.output_tokens == 0
    # A realistic mix: prompt caching on a good share of calls, cache writes, and a few failures.
    assert 0.15 < sum(c.cache_read_tokens > 0 for c in calls) / len(calls) < 0.5
    assert any(c.cache_write_tokens > 0 for c in calls)
    assert 0 < sum(c.status != "success" for c in calls) < len(calls) * 0.06
    assert {c.provider for c in calls} == {"openai", "anthropic", "google", "cohere"}
    per_day: dict[int, int] = {}
    for c in calls:
        per_day[c.created_at.weekday()] = per_day.get(c.created_at.weekday(), 0) + 1
    weekday = sum(per_day.get(d, 0) for d in range(5)) / 5
    weekend = sum(per_day.get(d, 0) for d in (5, 6)) / 2
    assert weekend < weekday
    night = sum(1 for c in calls if 2 <= c.created_at.hour < 5)
    afternoon = sum(1 for c in calls if 14 <= c.created_at.hour < 17)
    assert night < afternoon


async def test_progress_is_reported_per_batch_with_increasing_done(seed_engine: AsyncEngine) -> None:
    calls: list[tuple[str, int, int]] = []
    await seed_database(
        seed_engine,
        dataclasses.replace(SMALL, ai_calls=2500),
        progress=lambda t, d, n: calls.append((t, d, n)),
    )
    tables = list(dict.fromkeys(t for t, _, _ in calls))
    assert tables == list(SEEDED_TABLES)
    for table in tables:
        steps = [(done, total) for t, done, total in calls if t == table]
        dones = [done for done, _ in steps]
        assert dones == sorted(set(dones)), table
        assert len({total for _, total in steps}) == 1
        assert dones[-1] == steps[-1][1]
    assert [done for t, done, _ in calls if t == "ai_calls"] == [1000, 2000, 2500]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"claims": -1}, "claims"),
        ({"ai_calls": -5}, "ai_calls"),
        ({"verifications_per_claim": -1}, "verifications_per_claim"),
        ({"service_instances": -3}, "service_instances"),
        ({"days": 0}, "days"),
        ({"as_of": datetime(2025, 11, 19)}, "timezone-aware"),  # noqa: DTZ001 - the naive value under test
    ],
)
async def test_invalid_plan_raises_and_writes_nothing(
    seed_engine: AsyncEngine, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await seed_database(seed_engine, dataclasses.replace(SMALL, **overrides))

    # A plan corrupted after construction is caught by seed_database itself.
    corrupted = dataclasses.replace(SMALL)
    object.__setattr__(corrupted, next(iter(overrides)), next(iter(overrides.values())))
    with pytest.raises(ValueError, match=message):
        await seed_database(seed_engine, corrupted)

    assert await table_counts(seed_engine) == dict.fromkeys(SEEDED_TABLES, 0)


async def test_failure_midway_leaves_nothing_behind(seed_engine: AsyncEngine) -> None:
    def explode_in_ledger(table: str, done: int, total: int) -> None:
        if table == "ai_calls":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        await seed_database(seed_engine, SMALL, progress=explode_in_ledger)

    assert await table_counts(seed_engine) == dict.fromkeys(SEEDED_TABLES, 0)


@pytest.mark.commits
async def test_concurrent_seeders_serialise(seed_engine: AsyncEngine) -> None:
    one, two = await asyncio.gather(seed_database(seed_engine, SMALL), seed_database(seed_engine, SMALL))

    counts = await table_counts(seed_engine)
    assert counts["ai_calls"] == 300  # without the lock both would pass the NOT EXISTS check
    assert {name: one.inserted[name] + two.inserted[name] for name in SEEDED_TABLES} == counts
    assert dict.fromkeys(SEEDED_TABLES, 0) in (one.inserted, two.inserted)


@pytest.mark.commits
async def test_seeded_calls_reach_the_rollups_exactly_while_a_logger_writes(seed_engine: AsyncEngine) -> None:
    from persistence.ai_calls import AICallLogger

    live = [{"provider": "openai", "model": "gpt-4o", "input_tokens": 100 + i, "output_tokens": 10,
             "cost_usd": Decimal("0.002"), "request_id": f"live-{i}",
             "created_at": AS_OF - timedelta(days=2, minutes=i)} for i in range(600)]  # fmt: skip
    async with AICallLogger(seed_engine, fold_every=None) as log:

        async def writer() -> None:
            for start in range(0, 600, 50):
                await log.log_batch(live[start : start + 50])
                await asyncio.sleep(0)

        await asyncio.gather(seed_database(seed_engine, SMALL), writer())
        await log.fold_rollups()
    async with seed_engine.connect() as conn:
        ledger = (
            await conn.execute(text("SELECT count(*), sum(cost_usd), sum(total_tokens) FROM ai_calls"))
        ).one()
        rolled = (
            await conn.execute(
                text("SELECT sum(calls), sum(cost_usd), sum(total_tokens) FROM ai_call_model_hourly")
            )
        ).one()
        full = (await conn.execute(text("SELECT sum(calls), sum(cost_usd) FROM ai_call_usage_hourly"))).one()
    assert ledger[0] == 300 + 600
    assert tuple(rolled) == tuple(ledger)
    assert tuple(full) == tuple(ledger[:2])
