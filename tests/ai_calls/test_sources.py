"""The file adapter: a vendor's JSON or CSV export, read exactly (Decimal) and limited to the period."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import ConfigurationError, FileUsageSource, UsageSource, UsageSourceError, reconcile
from persistence.ai_calls.sources import UsageAmount, parse_usage
from tests.ai_calls.fake_vendor import dumps
from tests.ai_calls.ledger_rows import END, START, seed_ledger, vendor_payload

CSV = """provider,model,date,calls,cost_usd
openai,gpt-4o,2026-10-31,7,0.70
openai,gpt-4o,2026-11-01,10,1.000001
anthropic,claude-sonnet-4-20250514,2026-11-03,5,0.123456789
openai,gpt-4o,2026-11-04,9,0.90
"""


async def test_json_export(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    path.write_text(
        dumps(
            {
                "total_transactions": 3,
                "total_cost": Decimal("0.000000001"),
                "by_provider": {"cohere": {"calls": 3, "cost": Decimal("0.000000001")}},
            }
        )
    )
    source = FileUsageSource(path)
    assert isinstance(source, UsageSource)
    assert source.name == "file:usage.json"
    usage = await source.fetch(START, END)
    assert usage.total_calls == 3 and usage.total_cost_usd == Decimal("0.000000001")
    assert usage.by_provider is not None and usage.by_provider["cohere"].calls == 3


def test_vendor_provider_names_are_compared_in_lower_case() -> None:
    usage = parse_usage(
        {
            "total_transactions": 6,
            "total_cost": Decimal("0.6"),
            "by_provider": {"OpenAI": {"calls": 2, "cost": Decimal("0.2")}, "openai": {"calls": 1, "cost": 0},
                            "Anthropic": {"calls": 3, "cost": Decimal("0.4")}},
            "lines": [{"provider": "OpenAI", "model": "gpt-4o", "date": "2026-11-01", "calls": 3, "cost": 0}],
        }
    )  # fmt: skip
    assert usage.by_provider == {
        "openai": UsageAmount(3, Decimal("0.2")),
        "anthropic": UsageAmount(3, Decimal("0.4")),
    }
    assert usage.lines is not None and usage.lines[0].provider == "openai"


def test_an_empty_by_provider_is_no_per_provider_figures() -> None:
    line = {
        "provider": "cohere",
        "model": "command-r",
        "date": "2026-11-01",
        "calls": 2,
        "cost": Decimal("0.5"),
    }
    with_lines = parse_usage(
        {"total_calls": 2, "total_cost": Decimal("0.5"), "by_provider": {}, "lines": [line]}
    )
    assert with_lines.by_provider == {"cohere": UsageAmount(2, Decimal("0.5"))}
    assert (
        parse_usage({"total_calls": 2, "total_cost": Decimal("0.5"), "by_provider": {}}).by_provider is None
    )


async def test_csv_export_keeps_the_days_of_the_period(tmp_path: Path) -> None:
    path = tmp_path / "usage.csv"
    path.write_text(CSV)
    usage = await FileUsageSource(path, name="vendor-export").fetch(START, END)
    assert usage.lines is not None
    assert [(line.model, line.day.isoformat(), line.calls) for line in usage.lines] == [
        ("gpt-4o", "2026-11-01", 10),
        ("claude-sonnet-4-20250514", "2026-11-03", 5),
    ]
    assert usage.total_calls == 15
    assert usage.total_cost_usd == Decimal("1.123457789")
    assert usage.by_provider is not None
    assert usage.by_provider["anthropic"].cost_usd == Decimal("0.123456789")


async def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        FileUsageSource(tmp_path / "usage.xlsx")
    with pytest.raises(UsageSourceError, match="cannot read"):
        await FileUsageSource(tmp_path / "missing.csv").fetch(START, END)
    bad = tmp_path / "bad.csv"
    bad.write_text("provider,model,date,calls\nopenai,gpt-4o,2026-11-01,1\n")
    with pytest.raises(UsageSourceError, match="columns"):
        await FileUsageSource(bad).fetch(START, END)
    bad.write_text("provider,model,date,calls,cost\nopenai,gpt-4o,2026-11-01,-1,0.1\n")
    with pytest.raises(UsageSourceError, match="CSV row 2"):
        await FileUsageSource(bad).fetch(START, END)
    broken = tmp_path / "bad.json"
    broken.write_text('{"total_transactions": 1, "total_cost": NaN}')
    with pytest.raises(UsageSourceError):
        await FileUsageSource(broken).fetch(START, END)


async def test_reconcile_against_csv_and_json_exports(engine: AsyncEngine, tmp_path: Path) -> None:
    seeded = await seed_ledger(engine)
    body = vendor_payload(seeded, short_pct=0, lines=True)
    csv_path = tmp_path / "export.csv"
    csv_path.write_text(
        "provider,model,date,transactions,cost\n"
        + "".join(
            f"{x['provider']},{x['model']},{x['date']},{x['calls']},{x['cost']}\n" for x in body["lines"]
        )
    )
    result = await reconcile(engine, FileUsageSource(csv_path), START, END)
    assert result.status == "PASS" and result.coverage_pct == 100
    assert {line.status for line in result.lines} == {"matched"}
    assert result.vendor_cost_usd == seeded.cost

    json_path = tmp_path / "export.json"
    json_path.write_text(dumps(vendor_payload(seeded, short_pct=3)))
    failed = await reconcile(engine, FileUsageSource(json_path), START, END)
    assert failed.status == "FAIL" and failed.id != result.id
