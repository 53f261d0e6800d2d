"""The plans of the worker's transitions: a held request is found by its primary key.

Statistics gathered while nothing was processing (every `lease_until` NULL) made the planner
take the lease guard `lease_until > now()` for a selective condition and scan the partial
`lease_until` index of processing rows instead of the key. That index keeps an entry for every
request ever claimed until vacuum removes it, so under a long-open snapshot every completion
walked all of them (bench/bench_requests.py: ~4,300 buffers per completion after 20 s).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.requests import sql


def _index_scans(plan: dict[str, Any], table: str) -> list[str]:
    found = []
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if "Index Name" in node and node.get("Relation Name", table) == table:
            found.append(node["Index Name"])
    return found


@pytest.mark.parametrize(
    ("statement", "extra"),
    [
        (sql.COMPLETE, (None, 1, 2, 3, b"\x00" * 32, 7)),
        (sql.FAIL, (None, "boom", 1, 2, 3, 7)),
        (sql.ACKNOWLEDGE_CANCEL, (None, 7)),
        (sql.HEARTBEAT, (30.0, None)),
        (sql.RELEASE, (None, "w/boot")),
    ],
    ids=["complete", "fail", "acknowledge_cancel", "heartbeat", "release"],
)
async def test_a_held_request_is_found_by_its_key_not_by_the_lease_index(
    connection: AsyncConnection, statement: str, extra: tuple[object, ...]
) -> None:
    raw = (await connection.get_raw_connection()).driver_connection
    assert isinstance(raw, asyncpg.Connection)
    await raw.execute(
        "INSERT INTO request_inflight (company_id, request_id, user_id, model_id, prompt) "
        "SELECT 'acme', gen_random_uuid(), 'u' || (g % 20), 'gpt-4o', 'p' FROM generate_series(1, 2000) g"
    )
    await raw.execute("ANALYZE request_inflight")  # nothing processing: every lease_until NULL
    [claim] = await raw.fetch(sql.CLAIM, "w/boot", 1, 30.0, None)

    out = await raw.fetchval(
        "EXPLAIN (FORMAT JSON) " + statement,
        claim["company_id"],
        claim["request_id"],
        claim["lease_id"],
        *extra,
    )
    plan = (json.loads(out) if isinstance(out, str) else out)[0]["Plan"]
    assert _index_scans(plan, "request_inflight") == ["pk_request_inflight"]
