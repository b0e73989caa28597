"""The asyncio client against a real ``gregor serve`` (the ``server`` fixture). Each test runs
its coroutine with ``asyncio.run`` (no pytest plugin needed)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from gregor_client import (
    AsyncClient,
    BadRequest,
    Delete,
    NotFound,
    Page,
    Put,
    PutJson,
    Timeout,
)


def test_async_round_trips(base_url: str, unique: str) -> None:
    async def main() -> None:
        async with AsyncClient(base_url, store="kv") as kv:
            await kv.put(unique + "s", "value1")
            assert await kv.get(unique + "s") == "value1"
            await kv.put(unique + "b", b"\x00\xff\x10")
            assert await kv.get_bytes(unique + "b") == b"\x00\xff\x10"
            await kv.put_json(unique + "j", {"a": [1, "two", None]})
            assert await kv.get_json(unique + "j") == {"a": [1, "two", None]}
            await kv.delete(unique + "s")
            with pytest.raises(NotFound):
                await kv.get(unique + "s")
            m = await kv.meta(unique + "b")
            assert m.store == "kv"
            assert (await kv.health()).ready
            assert (await kv.job()).store("kv") is not None

    asyncio.run(main())


def test_async_concurrent_writes_and_reads(base_url: str, unique: str) -> None:
    async def main() -> None:
        async with AsyncClient(base_url, store="kv") as kv:
            keys = [f"{unique}{i:03d}" for i in range(40)]
            await asyncio.gather(*(kv.put(k, f"v-{k}") for k in keys))
            values = await asyncio.gather(*(kv.get(k) for k in keys))
            assert values == [f"v-{k}" for k in keys]

    asyncio.run(main())


def test_async_range_pages(base_url: str, unique: str) -> None:
    async def main() -> None:
        async with AsyncClient(base_url, store="kv") as kv:
            keys = [f"{unique}{i:03d}" for i in range(25)]
            assert await kv.batch(Put(k, k.upper()) for k in keys) == 25
            pages: list[Page] = [p async for p in kv.range(prefix=unique, page_size=6)]
            assert len(pages) > 3
            assert pages[-1].cursor is None
            assert [e.key for p in pages for e in p] == keys
            assert [e.value async for e in kv.range(prefix=unique, page_size=6).entries()] == [
                k.upper() for k in keys
            ]
            with pytest.raises(BadRequest):
                _ = [p async for p in kv.range(prefix=unique, page_size=1001)]

    asyncio.run(main())


def test_async_batch_and_bad_input(base_url: str, unique: str) -> None:
    async def main() -> None:
        async with AsyncClient(base_url, store="kv") as kv:
            applied = await kv.batch(
                [Put(unique + "a", "1"), PutJson(unique + "b", [1]), Delete(unique + "a")]
            )
            assert applied == 3
            with pytest.raises(NotFound):
                await kv.get(unique + "a")
            assert await kv.get_json(unique + "b") == [1]
            with pytest.raises(BadRequest):
                await kv.put(unique + "big", b"x" * (1024 * 1024 + 1))
            with pytest.raises(NotFound):
                await kv.get(unique + "big")

    asyncio.run(main())


def test_async_timeout_is_raised_and_not_retried() -> None:
    async def main(url: str) -> float:
        async with AsyncClient(url, key_serde="string", value_serde="bytes", retries=3) as c:
            start = time.monotonic()
            with pytest.raises(Timeout):
                await c.get("k", timeout=0.3)
            return time.monotonic() - start

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        elapsed = asyncio.run(main("http://127.0.0.1:%d" % silent.getsockname()[1]))
    assert 0.25 < elapsed < 1.2, elapsed
