"""Reads of an ordinary job's store (``gregor run JOB --http``, not a key-value service): the
built-in ``count`` task counts messages per key into ``counts`` (string keys, ``u64``
values); writes are 405."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gregor_client import AsyncClient, Client, Delete, MethodNotAllowed, NotFound, Put

from .conftest import Server, run_gregor, start_gregor, stop

JOB = """
[job]
name = "counts"
task = "count"
inputs = ["in"]
commit.ms = 100

[stores.counts]
engine = "rocksdb"
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"""

MESSAGES = ["apple", "banana", "apple", "a/b c", "ключ", "apple", "banana"] + [f"k{i:02d}" for i in range(20)]
COUNTS = Counter(MESSAGES)


@pytest.fixture(scope="module")
def count_job() -> Iterator[Server]:
    tmp = Path(tempfile.mkdtemp(prefix="gregor-client-job-"))
    srv: Server | None = None
    try:
        job = tmp / "count.toml"
        job.write_text(JOB)
        run_gregor(tmp, ["topic", "create", "in", "--partitions", "4"])
        lines = "".join(f"{k}\tx\n" for k in MESSAGES).encode()
        run_gregor(tmp, ["topic", "produce", "in"], stdin=lines)
        srv = start_gregor(tmp, ["run", str(job)])
        # Ready means restored; wait until every message is counted.
        with Client(srv.base_url, store="counts") as c:
            deadline = time.monotonic() + 30
            while sum(e.value_json() for e in c.range().entries()) < len(MESSAGES):
                if time.monotonic() > deadline:
                    pytest.fail(f"the job did not count {len(MESSAGES)} messages in 30 s:\n{srv.log_tail()}")
                time.sleep(0.05)
        yield srv
    finally:
        if srv is not None:
            stop(srv)
        shutil.rmtree(tmp, ignore_errors=True)


def test_u64_values_read_as_numbers_and_text(count_job: Server) -> None:
    with Client(count_job.base_url, store="counts") as c:
        assert c.serdes() == ("string", "u64")
        assert c.get_json("apple") == 3
        assert c.get("apple") == "3"
        assert c.get_bytes("banana") == b"2"
        assert c.get_json("a/b c") == 1
        assert c.get_json("ключ") == 1
        with pytest.raises(NotFound):
            c.get("cherry")


def test_range_over_a_job_store(count_job: Server) -> None:
    with Client(count_job.base_url, store="counts") as c:
        pages = list(c.range(page_size=5))
        assert len(pages) > 3
        got = [(e.key, e.value_json()) for p in pages for e in p]
        assert got == sorted(COUNTS.items(), key=lambda kv: kv[0].encode())
        assert [e.key for e in c.range(prefix="k0").entries()] == [f"k{i:02d}" for i in range(10)]


def test_writes_to_an_ordinary_job_are_method_not_allowed(count_job: Server) -> None:
    with Client(count_job.base_url, store="counts") as c:
        for write in (
            lambda: c.put("apple", "9"),
            lambda: c.delete("apple"),
            lambda: c.batch([Put("x", "1")]),
        ):
            with pytest.raises(MethodNotAllowed) as e:
                write()
            assert e.value.status == 405 and e.value.code == "method_not_allowed"
        with pytest.raises(MethodNotAllowed):
            c.batch([Delete("x")])
        assert c.get_json("apple") == 3


def test_job_state_and_routing(count_job: Server) -> None:
    with Client(count_job.base_url, store="counts") as c:
        job = c.job()
        assert job.job == "counts"
        assert sorted(t.partition for t in job.tasks) == [0, 1, 2, 3]
        assert all(t.state == "running" for t in job.tasks)
        m = c.meta("apple")
        assert m.store == "counts" and 0 <= m.partition < 4
        assert m.task.startswith("counts") and m.task.endswith(f"-{m.partition}")
        assert m.process_http == count_job.base_url.removeprefix("http://")
    with Client(count_job.base_url, store="kv") as kv, pytest.raises(NotFound):
        kv.get("apple")  # no store `kv` in this job


def test_async_reads_of_a_job_store(count_job: Server) -> None:
    async def main() -> None:
        async with AsyncClient(count_job.base_url, store="counts") as c:
            values = await asyncio.gather(*(c.get_json(k) for k in COUNTS))
            assert dict(zip(COUNTS, values)) == COUNTS

    asyncio.run(main())
