"""The read side of `Repository`, against a real server (each test rolled back by the plugin's `engine`)."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from persistence.errors import InvalidRequestError, NotFoundError, ValidationError
from persistence.models import AICall, Claim, VerificationResult
from persistence.repository import Page, Repository
from persistence.repository.keyset import checksum as _checksum
from persistence.repository.keyset import sort_plan as _sort_plan
from persistence.repository.reads import MAX_LIMIT
from persistence.transaction import session_scope, transaction

BASE_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
INJECTION = "x'; DROP TABLE claims; --"


class Verifications(Repository[VerificationResult]):
    model = VerificationResult


class Calls(Repository[AICall]):
    model = AICall


class Boom(Exception):
    pass


@pytest.fixture
def repo(engine: AsyncEngine) -> Verifications:
    return Verifications(engine)


_SAVEPOINT_STATEMENTS = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement sent on the engine (an event hook, not a mock)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        if not args[2].startswith(_SAVEPOINT_STATEMENTS):  # the isolating fixture's, not the code's
            seen.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine.sync_engine, "before_cursor_execute", record)


@pytest.fixture(params=["outside", "inside"])
def block(request: pytest.FixtureRequest) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
    """Run the reads outside any transaction block, or inside one."""
    if request.param == "inside":
        return transaction
    return contextlib.nullcontext


def checked_out(engine: AsyncEngine) -> int:
    """Connections of the engine's pool currently lent out."""
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


def row(i: int, **values: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 17) % 2**128),
        "claim_id": f"c{i}",
        "framework": "alpha",
        "result": {"valid": True},
        "confidence": 0.5,
        "processing_time_ms": None,
        "model_version": None,
        "created_at": BASE_TIME + timedelta(seconds=i),
    }
    return data | values


async def insert_rows(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany INSERT (every row has the same keys: the first row's keys decide the columns)."""
    async with engine.begin() as conn:
        await conn.execute(insert(VerificationResult), list(rows))


FIVE = [
    row(0, framework="alpha", confidence=0.1, result={"valid": True, "tags": ["a"]}),
    row(
        1,
        framework="alpha",
        confidence=0.5,
        processing_time_ms=10,
        model_version="v1",
        result={"valid": False},
    ),
    row(
        2,
        framework="beta",
        confidence=0.5,
        processing_time_ms=20,
        model_version="v2",
        result={"valid": True, "score": 3},
    ),
    row(3, framework="beta", confidence=0.9, model_version="v1", result={"valid": False, "tags": ["a", "b"]}),
    row(4, framework="gamma", confidence=1.0, processing_time_ms=30, result={"valid": True}),
]

LOOKUPS: list[tuple[dict[str, Any], set[str]]] = [
    ({"claim_id": "c1"}, {"c1"}),
    ({"claim_id__eq": "c1"}, {"c1"}),
    ({"model_version": None}, {"c0", "c4"}),
    ({"model_version__ne": "v1"}, {"c2"}),  # SQL semantics: NULL matches neither = nor <>
    ({"model_version__ne": None}, {"c1", "c2", "c3"}),
    ({"confidence__lt": 0.5}, {"c0"}),
    ({"confidence__lte": 0.5}, {"c0", "c1", "c2"}),
    ({"confidence__gt": 0.5}, {"c3", "c4"}),
    ({"confidence__gte": 0.9}, {"c3", "c4"}),
    (
        {
            "created_at__gte": BASE_TIME + timedelta(seconds=1),
            "created_at__lt": BASE_TIME + timedelta(seconds=3),
        },
        {"c1", "c2"},
    ),
    ({"framework__in": ["alpha", "gamma"]}, {"c0", "c1", "c4"}),
    ({"framework__in": ("beta",)}, {"c2", "c3"}),
    ({"framework__in": []}, set()),
    ({"framework__not_in": ["alpha"]}, {"c2", "c3", "c4"}),
    ({"framework__not_in": []}, {"c0", "c1", "c2", "c3", "c4"}),
    ({"processing_time_ms__in": [10, 30]}, {"c1", "c4"}),
    ({"id__in": [str(FIVE[0]["id"]), FIVE[3]["id"]]}, {"c0", "c3"}),
    ({"processing_time_ms__isnull": True}, {"c0", "c3"}),
    ({"processing_time_ms__isnull": False}, {"c1", "c2", "c4"}),
    ({"result__contains": {"valid": True}}, {"c0", "c2", "c4"}),
    ({"result__contains": {"tags": ["a"]}}, {"c0", "c3"}),
    ({"result__contains": {"tags": ["b"], "valid": False}}, {"c3"}),
    ({"framework": "beta", "confidence__gte": 0.9}, {"c3"}),
    ({"claim_id": INJECTION}, set()),
]


# -- get, get_or_none, get_many ----------------------------------------------------------------------


async def test_get_returns_the_model_and_not_found_names_entity_and_key(
    engine: AsyncEngine, repo: Verifications, block: Callable[[], Any]
) -> None:
    await insert_rows(engine, FIVE)
    missing = uuid.UUID(int=42)
    async with block():
        found = await repo.get(FIVE[2]["id"])
        assert isinstance(found, VerificationResult)
        assert (found.claim_id, found.framework, found.result) == ("c2", "beta", {"valid": True, "score": 3})
        assert found.created_at == FIVE[2]["created_at"]
        assert (await repo.get(str(FIVE[2]["id"]))).id == FIVE[2]["id"]  # text form of the key
        with pytest.raises(NotFoundError) as info:
            await repo.get(missing)
    assert info.value.entity == "VerificationResult"
    assert info.value.key == missing
    assert str(info.value) == f"VerificationResult {missing!r} not found"


async def test_get_or_none(engine: AsyncEngine, repo: Verifications, block: Callable[[], Any]) -> None:
    await insert_rows(engine, FIVE)
    async with block():
        found = await repo.get_or_none(FIVE[0]["id"])
        assert found is not None
        assert found.claim_id == "c0"
        assert await repo.get_or_none(uuid.UUID(int=42)) is None


async def test_malformed_key_is_a_clear_error_before_any_sql(
    engine: AsyncEngine, repo: Verifications, statements: list[str]
) -> None:
    for bad in ("not-a-uuid", 17, None, b"\x00" * 16):
        with pytest.raises(InvalidRequestError, match="keys are UUIDs"):
            await repo.get(bad)
    with pytest.raises(InvalidRequestError, match="keys are UUIDs"):
        await repo.get_many([uuid.uuid4(), "nope"])
    with pytest.raises(InvalidRequestError, match="sequence of ids"):
        await repo.get_many("abc")
    with pytest.raises(InvalidRequestError, match="keys are integers"):
        await Calls(engine).get("1")
    assert statements == []


async def test_get_many_keeps_the_order_of_ids_skips_missing_and_repeats(
    engine: AsyncEngine, repo: Verifications, statements: list[str], block: Callable[[], Any]
) -> None:
    await insert_rows(engine, FIVE)
    statements.clear()
    ids = [row["id"] for row in FIVE]
    async with block():
        got = await repo.get_many([ids[3], uuid.UUID(int=42), str(ids[0]), ids[4], ids[3], ids[1]])
        assert [item.claim_id for item in got] == ["c3", "c0", "c4", "c1"]
        assert await repo.get_many([]) == []
        assert await repo.get_many([uuid.UUID(int=42)]) == []
    assert len(statements) == 2  # one `= ANY(:ids)` query per call; none for an empty list
    assert "= ANY" in statements[0]


async def test_get_many_chunks_long_id_lists_in_one_transaction(
    engine: AsyncEngine, statements: list[str]
) -> None:
    class SmallChunks(Verifications):
        max_ids_per_query = 2

    await insert_rows(engine, FIVE)
    statements.clear()
    ids = [row["id"] for row in reversed(FIVE)]
    got = await SmallChunks(engine).get_many(ids)
    assert [item.claim_id for item in got] == ["c4", "c3", "c2", "c1", "c0"]
    assert len(statements) == 3


# -- list, count, exists -----------------------------------------------------------------------------


async def test_every_lookup_in_list_count_and_exists(
    engine: AsyncEngine, repo: Verifications, block: Callable[[], Any]
) -> None:
    await insert_rows(engine, FIVE)
    async with block():
        for lookups, expected in LOOKUPS:
            got = {item.claim_id for item in await repo.list(**lookups)}
            assert got == expected, lookups
            assert await repo.count(**lookups) == len(expected), lookups
            assert await repo.exists(**lookups) is bool(expected), lookups


async def test_expression_filters_alone_and_with_lookups(
    engine: AsyncEngine, repo: Verifications, block: Callable[[], Any]
) -> None:
    await insert_rows(engine, FIVE)
    v = VerificationResult
    async with block():
        got = await repo.list(v.confidence.between(0.4, 0.95), order_by="claim_id")
        assert [item.claim_id for item in got] == ["c1", "c2", "c3"]
        got = await repo.list(or_(v.framework == "gamma", v.model_version.is_(None)), order_by="-claim_id")
        assert [item.claim_id for item in got] == ["c4", "c0"]
        got = await repo.list(v.result["valid"].as_boolean(), framework__in=["alpha", "beta"])
        assert {item.claim_id for item in got} == {"c0", "c2"}
        assert await repo.count(v.confidence > 0.5, framework="beta") == 1
        assert await repo.exists(v.confidence > 1.0) is False


async def test_list_order_limit_offset_with_a_primary_key_tiebreaker(
    engine: AsyncEngine, repo: Verifications, block: Callable[[], Any]
) -> None:
    rows = [row(i, confidence=[0.2, 0.4][i % 2]) for i in range(9)]
    await insert_rows(engine, rows)
    # The primary key breaks ties in the direction of the last field.
    expected = [r["claim_id"] for r in sorted(rows, key=lambda r: (r["confidence"], r["id"]), reverse=True)]
    async with block():
        assert [item.claim_id for item in await repo.list(order_by="-confidence")] == expected
        window = await repo.list(order_by=["-confidence"], limit=4, offset=3)
        assert [item.claim_id for item in window] == expected[3:7]
        by_time = await repo.list(order_by=("+created_at",), limit=2)
        assert [item.claim_id for item in by_time] == ["c0", "c1"]
        assert len(await repo.list(limit=MAX_LIMIT)) == 9
        assert await repo.list(offset=20, order_by="claim_id") == []


async def test_count_and_exists(engine: AsyncEngine, repo: Verifications, statements: list[str]) -> None:
    assert await repo.count() == 0
    assert await repo.exists() is False
    await insert_rows(engine, FIVE)
    assert await repo.count() == 5
    assert await repo.exists() is True
    assert await repo.count(framework="alpha") == 2
    assert await repo.exists(framework="delta") is False
    exists_sql = [sql for sql in statements if "EXISTS" in sql]
    assert len(exists_sql) == 3
    assert all("count" not in sql.lower() for sql in exists_sql)


async def test_bad_names_and_arguments_raise_before_any_sql(
    engine: AsyncEngine, repo: Verifications, statements: list[str]
) -> None:
    bad_calls: list[Callable[[], Any]] = [
        lambda: repo.list(nope=1),
        lambda: repo.list(metadata_={"a": 1}),  # a field of Claim, not of VerificationResult
        lambda: repo.list(framework__like="a%"),
        lambda: repo.list(framework__contains="a"),
        lambda: repo.list("confidence > 0"),  # type: ignore[arg-type]
        lambda: repo.list(order_by="nope"),
        lambda: repo.list(order_by=["-confidence", "claim_id; DROP TABLE claims"]),
        lambda: repo.list(order_by=["confidence", "-confidence"]),
        lambda: repo.list(order_by=[1]),  # type: ignore[list-item]
        lambda: repo.list(limit=0),
        lambda: repo.list(limit=MAX_LIMIT + 1),
        lambda: repo.list(limit=True),
        lambda: repo.list(limit=2.5),  # type: ignore[arg-type]
        lambda: repo.list(offset=-1),
        lambda: repo.page(order_by="nope"),
        lambda: repo.page(nope=1),
        lambda: repo.page(limit=0),
        lambda: repo.page(order_by="result"),  # JSONB values cannot go in a cursor
        lambda: repo.count(nope=1),
        lambda: repo.exists(framework__nope=1),
        lambda: repo.get_many(5),  # type: ignore[arg-type]
    ]
    for call in bad_calls:
        with pytest.raises(InvalidRequestError):
            await call()
    bad_values: list[Callable[[], Any]] = [
        lambda: repo.list(framework__in="alpha"),
        lambda: repo.list(framework__in=5),
        lambda: repo.list(processing_time_ms__isnull="yes"),
    ]
    for call in bad_values:
        with pytest.raises(ValidationError):
            await call()
    with pytest.raises(InvalidRequestError, match="has no field 'nope'"):
        repo.stream(order_by="-nope")  # checked when called, before iterating
    with pytest.raises(InvalidRequestError, match="batch_size"):
        repo.stream(batch_size=0)
    with pytest.raises(InvalidRequestError, match="batch_size"):
        repo.stream(batch_size=MAX_LIMIT + 1)
    assert statements == []


async def test_sql_text_as_a_value_is_just_data(
    engine: AsyncEngine, repo: Verifications, block: Callable[[], Any]
) -> None:
    await insert_rows(engine, FIVE)
    async with block():
        assert await repo.list(claim_id=INJECTION) == []
        assert await repo.count(framework__in=[INJECTION, "' OR 1=1 --"]) == 0
        assert (
            await repo.exists(result__contains={"valid": "'; DROP TABLE verification_results; --"}) is False
        )
    await insert_rows(engine, [row(9, claim_id=INJECTION, model_version="'); --")])
    [found] = await repo.list(claim_id=INJECTION)
    assert found.claim_id == INJECTION
    async with engine.connect() as conn:
        tables = await conn.scalars(
            text("SELECT to_regclass(t) FROM unnest(ARRAY['claims', 'verification_results']) t")
        )
        assert all(tables)
    assert await repo.count() == 6


# -- keyset pages ------------------------------------------------------------------------------------


def many_rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """`n` rows with heavy duplication in every sort field, NULLs in the nullable ones."""
    rng = random.Random(seed)
    return [
        row(
            i,
            id=uuid.UUID(int=rng.getrandbits(128)),
            framework=rng.choice(["alpha", "beta", "gamma"]),
            confidence=rng.choice([0.1, 0.25, 0.5, 0.75]),
            processing_time_ms=rng.choice([None, 5, 10]),
            model_version=rng.choice([None, "v1", "v2"]),
            created_at=BASE_TIME + timedelta(seconds=rng.randrange(4), microseconds=123_457),
        )
        for i in range(n)
    ]


def expected_order(rows: Sequence[dict[str, Any]], order_by: Sequence[str]) -> list[uuid.UUID]:
    """The order PostgreSQL must produce: NULL above every value, then the primary key in the
    direction of the last field."""
    terms = [(name.lstrip("-"), name.startswith("-")) for name in order_by]
    terms.append(("id", terms[-1][1] if terms else False))

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for name, descending in terms:
            x, y = a.get(name), b.get(name)
            if x == y:
                continue
            result = 1 if x is None else -1 if y is None else (-1 if x < y else 1)
            return -result if descending else result
        return 0

    return [r["id"] for r in sorted(rows, key=functools.cmp_to_key(compare))]


async def all_pages(
    repo: Verifications, order_by: Sequence[str], limit: int, **lookups: Any
) -> list[Page[VerificationResult]]:
    pages = [await repo.page(order_by=order_by, limit=limit, **lookups)]
    while pages[-1].next_cursor is not None:
        pages.append(await repo.page(order_by=order_by, limit=limit, after=pages[-1].next_cursor, **lookups))
        assert len(pages) < 1000
    return pages


ORDERS = [
    ["confidence"],  # ascending, many ties: (confidence, id) > (:c, :id)
    ["-created_at"],  # descending, many ties
    ["framework", "-confidence"],  # mixed directions: expanded OR form
    ["-framework", "confidence", "created_at"],
    ["processing_time_ms"],  # nullable, ascending: NULLs last
    ["-processing_time_ms", "framework"],  # nullable, descending: NULLs first
    ["model_version", "-processing_time_ms"],  # two nullable fields
    ["-id"],  # the primary key alone
    ["id", "confidence"],  # fields after the primary key are redundant
]


@pytest.mark.parametrize("order_by", ORDERS, ids=",".join)
async def test_keyset_pages_return_every_row_once_in_order(
    engine: AsyncEngine, repo: Verifications, order_by: list[str], statements: list[str]
) -> None:
    rows = many_rows(250)
    await insert_rows(engine, rows)
    statements.clear()
    pages = await all_pages(repo, order_by, limit=7)
    seen = [item.id for page in pages for item in page.items]
    assert seen == expected_order(
        rows, order_by[: order_by.index("id") + 1] if "id" in order_by else order_by
    )
    assert len(set(seen)) == 250
    assert [len(page.items) for page in pages] == [7] * 35 + [5]
    assert len(statements) == 36  # one query per page, no COUNT


async def test_keyset_pages_with_filters_inside_a_block_see_its_writes(
    engine: AsyncEngine, repo: Verifications
) -> None:
    rows = many_rows(120)
    await insert_rows(engine, rows)
    extra = [row(1000 + i, confidence=0.25, framework="beta") for i in range(10)]
    async with transaction():
        async with session_scope(engine) as session:
            await session.execute(insert(VerificationResult), extra)
        pages = await all_pages(repo, ["-confidence", "created_at"], limit=9, framework="beta")
        seen = [item.id for page in pages for item in page.items]
        expected_rows = [r for r in [*rows, *extra] if r["framework"] == "beta"]
        assert seen == expected_order(expected_rows, ["-confidence", "created_at"])
        # The last page exactly full: no empty page after it.
        exact = await repo.page(order_by="claim_id", limit=len(expected_rows), framework="beta")
        assert exact.next_cursor is None


async def test_an_empty_table_has_one_empty_page(repo: Verifications) -> None:
    assert await repo.page() == Page([], None)


async def test_cursor_values_round_trip_their_types(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(AICall),
            [
                {
                    "provider": "p",
                    "model": "m",
                    "input_tokens": 1,
                    "output_tokens": 1,
                    "cost_usd": Decimal("0.000123") * (i % 3),
                    "created_at": BASE_TIME + timedelta(microseconds=i % 2),
                }
                for i in range(12)
            ],
        )
    calls = Calls(engine)
    order = ("-cost_usd", "created_at")
    page = await calls.page(order_by=order, limit=5)
    assert page.next_cursor is not None
    cursor = page.next_cursor
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    cost, created, pk = _sort_plan(AICall, order).decode(cursor)
    last = page.items[-1]
    assert (type(cost), cost) == (Decimal, last.cost_usd)
    assert (type(created), created, created.tzinfo is not None) == (datetime, last.created_at, True)
    assert (type(pk), pk) == (int, last.id)
    seen = [*page.items]
    next_cursor: str | None = cursor
    while next_cursor is not None:
        page = await calls.page(order_by=order, limit=5, after=next_cursor)
        seen.extend(page.items)
        next_cursor = page.next_cursor
    assert len({item.id for item in seen}) == 12


async def test_uuid_and_float_cursor_values_round_trip(engine: AsyncEngine, repo: Verifications) -> None:
    await insert_rows(engine, many_rows(3))
    page = await repo.page(order_by=["-confidence", "created_at"], limit=1)
    assert page.next_cursor is not None
    confidence, created, pk = _sort_plan(VerificationResult, ("-confidence", "created_at")).decode(
        page.next_cursor
    )
    [item] = page.items
    assert (confidence, created, pk) == (item.confidence, item.created_at, item.id)
    assert isinstance(pk, uuid.UUID)
    assert isinstance(confidence, float)


def _reencode(cursor: str, edit: Callable[[list[Any]], Any], *, fix_checksum: bool) -> str:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    body = json.loads(raw[8:])
    edit(body)
    data = json.dumps(body, separators=(",", ":")).encode()
    check = _checksum(data) if fix_checksum else raw[:8]
    return base64.urlsafe_b64encode(check + data).rstrip(b"=").decode()


async def test_tampered_or_foreign_cursors_are_invalid_requests(
    engine: AsyncEngine, repo: Verifications, statements: list[str]
) -> None:
    await insert_rows(engine, many_rows(30))
    page = await repo.page(order_by="-created_at", limit=10)
    cursor = page.next_cursor
    assert cursor is not None
    other_order = (await repo.page(order_by="created_at", limit=10)).next_cursor
    assert other_order is not None
    async with engine.begin() as conn:
        await conn.execute(
            insert(AICall),
            [
                {"provider": "p", "model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": 1}
                for _ in range(3)
            ],
        )
    other_model = (await Calls(engine).page(order_by="-created_at", limit=1)).next_cursor
    assert other_model is not None

    def set_value(index: int, value: Any) -> Callable[[list[Any]], None]:
        def edit(body: list[Any]) -> None:
            body[2][index] = value

        return edit

    flipped = cursor[:20] + ("A" if cursor[20] != "A" else "B") + cursor[21:]
    tampered = [
        flipped,
        cursor[:-3],
        cursor + "AAAA",
        "",
        "!!!!",
        "not base64 at all",
        "é" * 10,
        "A" * 5000,
        base64.urlsafe_b64encode(b"\x00" * 40).decode(),
        other_order,  # another order_by
        other_model,  # another model
        _reencode(cursor, set_value(0, "2024-05-01T12:00:00"), fix_checksum=False),
        # Well-formed checksum, but values that do not fit the columns:
        _reencode(cursor, set_value(0, "2024-05-01T12:00:00"), fix_checksum=True),  # naive datetime
        _reencode(cursor, set_value(0, 17), fix_checksum=True),
        # datetime.max: asyncpg would bind 'infinity' (the column's range check refuses it)
        _reencode(cursor, set_value(0, "9999-12-31T23:59:59.999999+00:00"), fix_checksum=True),
        _reencode(cursor, set_value(1, "not-a-uuid"), fix_checksum=True),
        _reencode(cursor, set_value(1, None), fix_checksum=True),  # NULL in a NOT NULL field
        _reencode(cursor, lambda body: body[2].append(1), fix_checksum=True),
        _reencode(cursor, lambda body: body.__setitem__(0, 2), fix_checksum=True),  # version
        _reencode(cursor, lambda body: body.__setitem__(2, {"a": 1}), fix_checksum=True),
    ]
    statements.clear()
    for bad in tampered:
        with pytest.raises(InvalidRequestError, match="invalid cursor"):
            await repo.page(order_by="-created_at", limit=10, after=bad)
    with pytest.raises(InvalidRequestError, match="invalid cursor"):
        await repo.page(order_by="-created_at", after=123)  # type: ignore[arg-type]
    assert statements == []
    # The untouched cursor still works.
    assert len((await repo.page(order_by="-created_at", limit=10, after=cursor)).items) == 10


# -- stream ------------------------------------------------------------------------------------------


async def test_stream_yields_every_row_in_order_in_batches(
    engine: AsyncEngine, repo: Verifications, statements: list[str], block: Callable[[], Any]
) -> None:
    rows = many_rows(2500, seed=11)
    await insert_rows(engine, rows)
    statements.clear()
    async with block():
        seen = [item.id async for item in repo.stream(order_by=["framework", "-created_at"], batch_size=97)]
    assert seen == expected_order(rows, ["framework", "-created_at"])
    assert len([sql for sql in statements if sql.lstrip().startswith("SELECT")]) == 26  # ceil(2500 / 97)
    by_key = [item.id async for item in repo.stream(framework="beta", batch_size=1000)]
    assert by_key == sorted(r["id"] for r in rows if r["framework"] == "beta")


@pytest.mark.commits
async def test_stream_stopped_early_holds_no_connection(engine: AsyncEngine, repo: Verifications) -> None:
    await insert_rows(engine, many_rows(300))
    assert checked_out(engine) == 0
    taken = []
    async for item in repo.stream(order_by="-created_at", batch_size=50):
        taken.append(item)
        assert checked_out(engine) == 0  # nothing held while the caller works
        if len(taken) == 120:
            break
    assert checked_out(engine) == 0
    stream = repo.stream(batch_size=10)
    first = await anext(stream)
    assert isinstance(first, VerificationResult)
    assert checked_out(engine) == 0
    await stream.aclose()
    with pytest.raises(Boom):
        async for _ in repo.stream(batch_size=10):
            raise Boom
    assert checked_out(engine) == 0


@pytest.mark.commits
async def test_stream_inside_a_block_sees_its_writes_and_releases_with_it(
    engine: AsyncEngine, repo: Verifications
) -> None:
    await insert_rows(engine, many_rows(40))
    async with transaction():
        async with session_scope(engine) as session:
            await session.execute(
                insert(VerificationResult), [row(5000 + i, framework="zeta") for i in range(25)]
            )
        got = [
            item.claim_id async for item in repo.stream(framework="zeta", order_by="claim_id", batch_size=4)
        ]
        assert got == sorted(f"c{5000 + i}" for i in range(25))
        assert checked_out(engine) == 1  # the block's own connection
    assert checked_out(engine) == 0
    assert await repo.count(framework="zeta") == 25


# -- inside a transaction block ------------------------------------------------------------------------


@pytest.mark.commits
async def test_reads_in_a_block_see_its_uncommitted_writes_and_fresh_values(
    engine: AsyncEngine, repo: Verifications
) -> None:
    await insert_rows(engine, FIVE)
    new = row(77, framework="omega", confidence=0.3)
    with pytest.raises(Boom):
        async with transaction():
            before = await repo.get(FIVE[1]["id"])
            async with session_scope(engine) as session:
                await session.execute(insert(VerificationResult).values(new))
                await session.execute(
                    update(VerificationResult)
                    .where(VerificationResult.id == FIVE[1]["id"])
                    .values(confidence=0.99)
                )
            assert (await repo.get(new["id"])).framework == "omega"
            assert [item.claim_id for item in await repo.get_many([new["id"], FIVE[0]["id"]])] == [
                "c77",
                "c0",
            ]
            assert await repo.count() == 6
            assert await repo.exists(framework="omega") is True
            assert [item.claim_id for item in await repo.list(framework="omega")] == ["c77"]
            again = await repo.get(FIVE[1]["id"])
            assert again is before  # the block's identity map, refreshed from the database
            assert again.confidence == 0.99
            async with engine.connect() as other:  # not visible to others yet
                assert (
                    await other.scalar(
                        select(VerificationResult.id).where(VerificationResult.framework == "omega")
                    )
                    is None
                )
            raise Boom
    assert await repo.get_or_none(new["id"]) is None
    assert (await repo.get(FIVE[1]["id"])).confidence == 0.5
    assert await repo.count() == 5


async def test_repository_works_for_another_model(engine: AsyncEngine) -> None:
    class Claims(Repository[Claim]):
        model = Claim

    async with engine.begin() as conn:
        await conn.execute(
            insert(Claim),
            [{"external_id": f"e{i}", "content": "x", "metadata": {"topic": f"t{i % 2}"}} for i in range(4)],
        )
    claims = Claims(engine)
    got = await claims.list(metadata___contains={"topic": "t1"}, order_by="external_id")
    assert [c.external_id for c in got] == ["e1", "e3"]
    assert await claims.count(metadata___isnull=False) == 4


async def test_reads_in_a_block_see_the_repositorys_own_writes(
    engine: AsyncEngine, repo: Verifications
) -> None:
    await insert_rows(engine, FIVE)
    with pytest.raises(Boom):
        async with transaction():
            loaded = await repo.get(FIVE[2]["id"])
            added = await repo.add(
                claim_id="fresh", framework="omega", result={"valid": True}, confidence=0.3
            )
            await repo.update(FIVE[2]["id"], confidence=0.11)
            assert (await repo.get(added.id)).claim_id == "fresh"
            assert (await repo.get(FIVE[2]["id"])).confidence == 0.11
            assert loaded.confidence == 0.11  # the instance in the block's session is refreshed too
            assert [item.claim_id for item in await repo.list(confidence__lt=0.2, order_by="confidence")] == [
                "c0",
                "c2",
            ]
            assert (await repo.page(framework="omega")).items[0].id == added.id
            assert [item.id async for item in repo.stream(framework="omega")] == [added.id]
            assert await repo.count() == 6
            raise Boom
    assert await repo.get_or_none(added.id) is None
    assert (await repo.get(FIVE[2]["id"])).confidence == 0.5
