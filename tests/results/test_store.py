"""The result store: round trips inline and chunked, idempotent writes, all-or-nothing streamed
writes, digest checks, and seed 001's `results` / `binary_results` names."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.errors import InvalidRequestError, NotFoundError
from persistence.results import (
    STREAMED,
    DigestMismatchError,
    ResultConflictError,
    ResultStore,
    canonical_json,
    inline_content,
)

README = Path(__file__).resolve().parents[2] / "README.md"
CHUNK = 1024
INLINE = 100


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[ResultStore]:
    """A store with small limits, so "large" content is a few KiB."""
    async with ResultStore(engine, inline_limit=INLINE, chunk_size=CHUNK) as s:
        yield s


async def rows(engine: AsyncEngine, query: str) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(query))).all()]


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# -- round trips -----------------------------------------------------------------------------------


async def test_text_round_trips_inline_and_chunked(store: ResultStore, engine: AsyncEngine) -> None:
    short, long = "Le texte traduit en français…", "é" * 3000 + "fin"
    a = await store.put_text("acme", short)
    b = await store.put_text("acme", long)
    assert (a.kind, a.chunked, a.size_bytes, a.created) == ("text", False, len(short.encode()), True)
    assert (b.chunked, b.size_bytes) == (True, len(long.encode()))
    assert a.sha256 == hashlib.sha256(short.encode()).digest()
    assert b.sha256 == hashlib.sha256(long.encode()).digest()
    assert await store.read_text("acme", a.sha256) == short
    assert await store.read_text("acme", b.hex) == long
    # 6,003 bytes in 1 KiB chunks: 6 chunks, cut inside two-byte characters and still whole text
    assert await rows(engine, "SELECT count(*) FROM result_chunks") == [(6,)]
    stored = await rows(engine, "SELECT kind, inline_text IS NULL, chunks FROM results ORDER BY chunks")
    assert stored == [("text", False, 0), ("text", True, 6)]


async def test_json_is_stored_canonically_and_returned_parsed(store: ResultStore) -> None:
    value = {"b": [1, 2.5, None], "a": {"z": "ü", "y": True}}
    same = {"a": {"y": True, "z": "ü"}, "b": [1, 2.5, None]}
    first = await store.put_json("acme", value)
    second = await store.put_json("acme", same)
    assert first.sha256 == second.sha256 and (first.created, second.created) == (True, False)
    assert canonical_json(value) == '{"a":{"y":true,"z":"ü"},"b":[1,2.5,null]}'
    assert await store.read_text("acme", first.sha256) == canonical_json(value)
    assert await store.read_json("acme", first.sha256) == value
    big = {"rows": [{"i": i, "name": f"row {i}"} for i in range(200)]}
    large = await store.put_json("acme", big)
    assert large.chunked and large.mime_type == "application/json"
    assert await store.read_json("acme", large.sha256) == big


async def test_json_refuses_what_is_not_json(store: ResultStore) -> None:
    with pytest.raises(InvalidRequestError):
        await store.put_json("acme", {"x": float("nan")})
    with pytest.raises(InvalidRequestError):
        await store.put_json("acme", {"x": object()})


async def test_binary_round_trips_inline_and_chunked_from_every_source_kind(
    store: ResultStore, engine: AsyncEngine
) -> None:
    small, large = blob(INLINE), blob(10 * CHUNK + 7, seed=1)
    inline = await store.put("acme", small, mime_type="image/png")
    assert (inline.kind, inline.chunked, inline.size_bytes) == (
        "binary",
        False,
        INLINE,
    )  # the limit is inclusive
    assert await store.read_bytes("acme", inline.sha256) == small
    for source in (large, io.BytesIO(large), pieces(large, 333), [large[:5000], large[5000:]]):
        stored = await store.put("acme", source, mime_type="image/png")
        assert (stored.chunked, stored.size_bytes) == (True, len(large))
        assert stored.sha256 == hashlib.sha256(large).digest()
    streamed = [part async for part in store.stream("acme", hashlib.sha256(large).digest())]
    assert [len(p) for p in streamed] == [CHUNK] * 10 + [7]
    assert b"".join(streamed) == large
    assert await rows(engine, "SELECT count(*) FROM results") == [(2,)]
    assert await rows(engine, "SELECT count(*) FROM result_chunks") == [(11,)]


async def test_empty_content_is_a_result(store: ResultStore) -> None:
    empty = await store.put("acme", b"", mime_type="application/octet-stream")
    assert (empty.size_bytes, empty.chunked) == (0, False)
    assert await store.read_bytes("acme", empty.sha256) == b""
    assert await store.read_text("globex", (await store.put_text("globex", "")).sha256) == ""


# -- idempotence ----------------------------------------------------------------------------------


async def test_storing_the_same_content_twice_is_one_row(store: ResultStore, engine: AsyncEngine) -> None:
    large = blob(5 * CHUNK, seed=2)
    first = await store.put("acme", large, mime_type="audio/wav")
    again = await store.put("acme", pieces(large, 100), mime_type="audio/wav")
    small = [await store.put_text("acme", "same") for _ in range(3)]
    assert (first.created, again.created) == (True, False)
    assert [s.created for s in small] == [True, False, False]
    assert again.sha256 == first.sha256 and again.created_at == first.created_at
    assert await rows(engine, "SELECT count(*) FROM results") == [(2,)]
    assert await rows(engine, "SELECT count(*) FROM result_chunks") == [(5,)]  # the second copy rolled back


async def test_same_bytes_under_another_type_is_a_conflict(store: ResultStore) -> None:
    await store.put("acme", b"GIF89a", mime_type="image/gif")
    with pytest.raises(ResultConflictError) as caught:
        await store.put("acme", b"GIF89a", mime_type="application/octet-stream")
    assert caught.value.stored == ("binary", "image/gif")
    with pytest.raises(ResultConflictError):
        await store.put_text("acme", "GIF89a")
    large = blob(3 * CHUNK)
    await store.put("acme", large, mime_type="image/gif")
    with pytest.raises(ResultConflictError):
        await store.put("acme", pieces(large, 700), mime_type="image/png")
    assert await store.read_bytes("acme", hashlib.sha256(large).digest()) == large


async def test_companies_never_share_a_result(store: ResultStore, engine: AsyncEngine) -> None:
    a = await store.put_text("acme", "hello")
    b = await store.put_text("globex", "hello")
    assert a.sha256 == b.sha256 and (a.created, b.created) == (True, True)
    assert await store.delete("acme", a.sha256)
    assert await store.read_text("globex", b.sha256) == "hello"
    with pytest.raises(NotFoundError):
        await store.read_text("acme", a.sha256)
    assert await rows(engine, "SELECT company_id FROM results") == [("globex",)]


# -- failures leave nothing -------------------------------------------------------------------------


async def test_a_failed_streamed_write_leaves_nothing(store: ResultStore, engine: AsyncEngine) -> None:
    class SourceBroke(Exception):
        pass

    async def breaks_after_five_chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield blob(CHUNK, seed=i)
        raise SourceBroke

    with pytest.raises(SourceBroke):
        await store.put("acme", breaks_after_five_chunks(), mime_type="video/mp4")
    assert await rows(engine, "SELECT count(*) FROM result_chunks") == [(0,)]
    assert await rows(engine, "SELECT count(*) FROM results") == [(0,)]
    ok = await store.put("acme", blob(3 * CHUNK), mime_type="video/mp4")  # the store still works
    assert await store.read_bytes("acme", ok.sha256) == blob(3 * CHUNK)


@pytest.mark.parametrize("size", [INLINE, 4 * CHUNK], ids=["inline", "chunked"])
async def test_a_digest_mismatch_is_refused_and_writes_nothing(
    store: ResultStore, engine: AsyncEngine, size: int
) -> None:
    data = blob(size, seed=3)
    wrong = hashlib.sha256(b"something else").digest()
    with pytest.raises(DigestMismatchError) as caught:
        await store.put("acme", pieces(data, 500), mime_type="image/png", expected_sha256=wrong)
    assert (caught.value.expected, caught.value.actual) == (wrong, hashlib.sha256(data).digest())
    assert await rows(
        engine, "SELECT (SELECT count(*) FROM results), (SELECT count(*) FROM result_chunks)"
    ) == [(0, 0)]
    right = hashlib.sha256(data).hexdigest()
    stored = await store.put("acme", pieces(data, 500), mime_type="image/png", expected_sha256=right)
    assert stored.created and stored.hex == right


async def test_a_known_digest_is_not_read_again(store: ResultStore) -> None:
    data = blob(3 * CHUNK, seed=4)
    await store.put("acme", data, mime_type="image/png")
    read: list[int] = []

    async def counted() -> AsyncIterator[bytes]:
        read.append(1)
        yield data

    again = await store.put(
        "acme", counted(), mime_type="image/png", expected_sha256=hashlib.sha256(data).digest()
    )
    assert (again.created, read) == (False, [])


async def test_text_must_be_utf8_even_when_streamed(store: ResultStore, engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError):
        await store.put("acme", b"ok" * 2000 + b"\xff", kind="text", mime_type="text/plain")
    with pytest.raises(InvalidRequestError):
        await store.put("acme", b"\xc3", kind="text", mime_type="text/plain")
    assert await rows(engine, "SELECT count(*) FROM results") == [(0,)]


async def test_a_damaged_chunk_is_never_served_as_the_result(store: ResultStore, engine: AsyncEngine) -> None:
    stored = await store.put("acme", blob(3 * CHUNK), mime_type="image/png")
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE result_chunks SET data = '\\x00'::bytea || data WHERE seq = 1"))
    with pytest.raises(DigestMismatchError):
        await store.read_bytes("acme", stored.sha256)


async def test_unknown_results_and_wrong_readers(store: ResultStore) -> None:
    with pytest.raises(NotFoundError):
        await store.read_bytes("acme", b"\x01" * 32)
    assert await store.get("acme", "01" * 32) is None
    with pytest.raises(InvalidRequestError):
        await store.get("acme", b"short")
    png = await store.put("acme", b"\x89PNG", mime_type="image/png")
    with pytest.raises(InvalidRequestError):
        await store.read_text("acme", png.sha256)
    with pytest.raises(InvalidRequestError):
        await store.read_json("acme", (await store.put_text("acme", "[1]")).sha256)


# -- seed 001's names --------------------------------------------------------------------------------


async def test_seed_names_find_the_data(store: ResultStore, engine: AsyncEngine) -> None:
    png, large = blob(50, seed=5), blob(3 * CHUNK + 1, seed=6)
    await store.put("acme", png, mime_type="image/png")
    await store.put("acme", large, mime_type="image/webp")
    await store.put_text("acme", "not binary")
    found = await rows(
        engine, "SELECT mime_type, size_bytes, content, result_id FROM binary_results ORDER BY size_bytes"
    )
    assert found == [
        ("image/png", 50, png, hashlib.sha256(png).digest()),
        ("image/webp", len(large), large, hashlib.sha256(large).digest()),
    ]
    texts = await rows(engine, "SELECT kind, inline_text FROM results WHERE kind = 'text'")
    assert texts == [("text", "not binary")]


async def test_deleting_a_result_removes_its_chunks(store: ResultStore, engine: AsyncEngine) -> None:
    stored = await store.put("acme", blob(4 * CHUNK), mime_type="image/png")
    assert await store.delete("acme", stored.sha256)
    assert not await store.delete("acme", stored.sha256)
    assert await rows(engine, "SELECT count(*) FROM result_chunks") == [(0,)]


# -- real commits: concurrent writers and readers ------------------------------------------------------


@pytest.mark.commits
async def test_a_reader_never_sees_a_write_in_progress_and_concurrent_writers_store_once(
    engine: AsyncEngine,
) -> None:
    data = blob(8 * CHUNK, seed=7)
    digest = hashlib.sha256(data).digest()
    halfway = asyncio.Event()
    go_on = asyncio.Event()

    async def paused() -> AsyncIterator[bytes]:
        yield data[: 4 * CHUNK]
        halfway.set()
        await go_on.wait()
        yield data[4 * CHUNK :]

    async with ResultStore(engine, inline_limit=INLINE, chunk_size=CHUNK, connections=4) as store:
        writing = asyncio.create_task(store.put("acme", paused(), mime_type="image/png"))
        await halfway.wait()
        await asyncio.sleep(0.05)  # let the first chunks reach the server
        assert await store.get("acme", digest) is None
        with pytest.raises(NotFoundError):
            await store.read_bytes("acme", digest)
        assert await rows(engine, "SELECT count(*) FROM result_chunks") == [(0,)]  # not committed
        twin = asyncio.create_task(store.put("acme", pieces(data, 3000), mime_type="image/png"))
        go_on.set()
        first, second = await asyncio.gather(writing, twin)
        assert sorted([first.created, second.created]) == [False, True]
        assert await store.read_bytes("acme", digest) == data
    assert await rows(engine, "SELECT count(*), sum(chunks) FROM results") == [(1, 8)]
    assert await rows(engine, "SELECT count(*) FROM result_chunks") == [(8,)]


async def test_the_readme_example_runs_as_written(engine: AsyncEngine) -> None:
    """README's "Results" block, as written (its top-level awaits inside a coroutine)."""
    section = README.read_text().split("## Results\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec("async def snippet(engine):\n" + "".join(f"    {line}\n" for line in code.splitlines()), namespace)  # noqa: S102 (our README)
    await namespace["snippet"](engine)
    found = await rows(engine, "SELECT kind, mime_type, chunks FROM results ORDER BY kind, mime_type")
    assert found == [
        ("binary", "video/mp4", 3),
        ("json", "application/json", 0),
        ("text", "text/plain; charset=utf-8", 0),
        ("text", "text/plain; charset=utf-8", 0),
    ]
    assert await rows(engine, "SELECT count(*) FROM result_cache WHERE result_sha256 IS NOT NULL") == [(1,)]


async def test_a_status_join_reads_the_result_from_the_row(store: ResultStore, engine: AsyncEngine) -> None:
    """What the status query's LEFT JOIN returns becomes the result with `inline_content`."""
    stored = [
        await store.put_text("acme", "done"),
        await store.put_json("acme", {"ok": True}),
        await store.put("acme", b"\x89PNG", mime_type="image/png"),
        await store.put("acme", blob(2 * CHUNK), mime_type="image/png"),
    ]
    async with engine.connect() as conn:
        found = []
        for s in stored:
            row = (
                await conn.execute(
                    text(
                        "SELECT res.kind, res.inline_text, res.inline_bytes FROM (SELECT :c AS company_id, "
                        "CAST(:h AS bytea) AS result_sha256) r LEFT JOIN results res "
                        "ON res.company_id = r.company_id AND res.sha256 = r.result_sha256"
                    ),
                    {"c": "acme", "h": s.sha256},
                )
            ).one()
            found.append(inline_content(row.kind, row.inline_text, row.inline_bytes))
    assert found == ["done", {"ok": True}, b"\x89PNG", STREAMED]
