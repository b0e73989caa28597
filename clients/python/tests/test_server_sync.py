"""The synchronous client against a real ``gregor serve`` (the ``server`` fixture)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from gregor_client import (
    BadRequest,
    Client,
    ConnectionFailed,
    Delete,
    NotFound,
    Put,
    PutJson,
    Timeout,
)

from .conftest import free_port

MIB = 1024 * 1024


@pytest.fixture
def kv(base_url: str) -> Iterator[Client]:
    with Client(base_url, store="kv") as c:
        yield c


def test_readme_example(base_url: str) -> None:
    # The README's example, verbatim but for the address.
    with Client(base_url, store="kv") as kv:
        kv.put("key1", "value1")
        assert kv.get("key1") == "value1"
        kv.delete("key1")
    with Client(base_url, store="kv") as kv, pytest.raises(NotFound):
        kv.get("key1")


def test_serdes_are_read_from_the_job(kv: Client) -> None:
    assert kv.serdes() == ("string", "bytes")


def test_str_round_trip(kv: Client, unique: str) -> None:
    for key, value in [
        (unique + "plain", "value"),
        (unique + "unicode-ключ-🔑", "значение ✓ 🎉"),
        (unique + "a/b c%d?e#f+g&h=i", "slashes, spaces & friends"),
        (unique + "empty-value", ""),
        (unique + "multi\nline", "line 1\nline 2\n"),
    ]:
        kv.put(key, value)
        assert kv.get(key) == value, key
        assert kv.get_bytes(key) == value.encode("utf-8")
    got = {e.key: e.value for e in kv.range(prefix=unique).entries()}
    assert got[unique + "a/b c%d?e#f+g&h=i"] == "slashes, spaces & friends"
    assert got[unique + "unicode-ключ-🔑"] == "значение ✓ 🎉"


def test_overwrite_then_delete(kv: Client, unique: str) -> None:
    k = unique + "k"
    kv.put(k, "one")
    kv.put(k, "two")
    assert kv.get(k) == "two"
    kv.delete(k)
    with pytest.raises(NotFound):
        kv.get(k)
    kv.delete(k)  # deleting a missing key is not an error


def test_ttl_ms_needs_a_store_with_expiry_times(kv: Client, unique: str) -> None:
    # The ready-made job's store has no stores.kv.ttl.ms: a per-write TTL is refused, and
    # nothing is written (tests/serve_ttl.rs in the Rust suite covers a store with it).
    with pytest.raises(BadRequest) as e:
        kv.put(unique + "ttl", "x", ttl_ms=1000)
    assert "stores.kv.ttl.ms" in str(e.value)
    with pytest.raises(BadRequest):
        kv.batch([Put(unique + "ttl", "x", ttl_ms=1000)])
    with pytest.raises(NotFound):
        kv.get(unique + "ttl")


def test_bytes_round_trip(kv: Client, unique: str) -> None:
    k = unique + "bin"
    value = bytes(range(256)) * 4 + b"\xff\xfe\x00"
    kv.put(k, value)
    assert kv.get_bytes(k) == value
    with pytest.raises(UnicodeDecodeError):
        kv.get(k)
    [entry] = list(kv.range(prefix=k).entries())
    assert entry.key == k and entry.value_bytes == value


def test_json_round_trip(kv: Client, unique: str) -> None:
    k = unique + "doc"
    doc = {"name": "gregor", "n": 3, "tags": ["a", "b"], "nested": {"ok": True, "x": None}, "f": 1.5}
    kv.put_json(k, doc)
    assert kv.get_json(k) == doc
    assert json.loads(kv.get(k)) == doc
    [entry] = list(kv.range(prefix=k).entries())
    assert entry.value_json() == doc


def test_missing_key_is_not_found(kv: Client, unique: str) -> None:
    with pytest.raises(NotFound) as e:
        kv.get(unique + "never-written")
    assert e.value.status == 404
    assert e.value.code == "not_found"
    assert e.value.message
    for call in (kv.get_bytes, kv.get_json):
        with pytest.raises(NotFound):
            call(unique + "never-written")


def test_range_pages_return_every_key_once_in_order(kv: Client, unique: str) -> None:
    n, page_size = 30, 7
    keys = [f"{unique}{i:03d}" for i in range(n)]
    assert kv.batch(Put(k, f"v{i}") for i, k in enumerate(keys)) == n
    # A key just outside the prefix on either side.
    kv.put(unique[:-1], "before")
    kv.put(unique[:-1] + "~", "after")

    pages = list(kv.range(prefix=unique, page_size=page_size))
    assert len(pages) > 3
    assert all(len(p) <= page_size for p in pages)
    assert pages[-1].cursor is None
    assert all(p.cursor is not None for p in pages[:-1])
    got = [e.key for p in pages for e in p]
    assert got == keys
    assert [e.value for p in pages for e in p] == [f"v{i}" for i in range(n)]

    # Bounds: [from, to).
    between = [e.key for e in kv.range(from_=keys[5], to=keys[17], page_size=4).entries()]
    assert between == keys[5:17]
    # Lazy: nothing is fetched before iterating; iterating again scans again.
    r = kv.range(prefix=unique, page_size=page_size)
    assert [e.key for e in r.entries()] == keys
    assert [e.key for e in r.entries()] == keys


def test_range_of_nothing(kv: Client, unique: str) -> None:
    pages = list(kv.range(prefix=unique + "none"))
    assert len(pages) == 1 and pages[0].entries == [] and pages[0].cursor is None


def test_range_limit_over_1000_is_bad_request(kv: Client, unique: str) -> None:
    with pytest.raises(BadRequest):
        list(kv.range(prefix=unique, page_size=1001))


def test_batch(kv: Client, unique: str) -> None:
    a, b, c, d = (unique + x for x in "abcd")
    kv.put(d, "to be deleted")
    applied = kv.batch(
        [
            Put(a, "first"),
            Put(a, "second"),  # ops on one key apply in order
            Put(b, b"\x00\x01"),
            Delete(b),
            PutJson(c, {"x": [1, 2]}),
            Delete(d),
        ]
    )
    assert applied == 6
    assert kv.get(a) == "second"
    with pytest.raises(NotFound):
        kv.get(b)
    assert kv.get_json(c) == {"x": [1, 2]}
    with pytest.raises(NotFound):
        kv.get(d)
    assert kv.batch([]) == 0


def test_oversized_value_is_bad_request_and_nothing_is_written(kv: Client, unique: str) -> None:
    k = unique + "big"
    with pytest.raises(BadRequest) as e:
        kv.put(k, b"x" * (MIB + 1))
    assert e.value.status in (400, 413)
    assert "limit" in e.value.message.lower()
    with pytest.raises(NotFound):
        kv.get(k)
    # A batch with one oversized value writes nothing at all.
    ok = unique + "ok"
    with pytest.raises(BadRequest):
        kv.batch([Put(ok, "small"), Put(k, b"x" * (MIB + 1))])
    with pytest.raises(NotFound):
        kv.get(ok)
    # The largest allowed value goes through, byte for byte.
    value = bytes(range(256)) * (MIB // 256)
    kv.put(k, value)
    assert kv.get_bytes(k) == value


def test_meta(kv: Client, unique: str) -> None:
    m = kv.meta(unique + "anything")  # whether or not the key exists
    assert m.store == "kv"
    assert m.partition >= 0
    assert m.task.endswith(f"-{m.partition}")
    assert m.process_id == 0


def test_job_and_health(kv: Client) -> None:
    job = kv.job()
    assert job.processes >= 1
    kv_store = job.store("kv")
    assert kv_store is not None
    assert (kv_store.key_serde, kv_store.value_serde) == ("string", "bytes")
    assert job.tasks and all(t.state == "running" for t in job.tasks)
    h = kv.health()
    assert h.ready and h.status == "ready"


def test_unknown_store_is_not_found(base_url: str) -> None:
    # Serdes looked up in GET /v1/job: the client says which store is missing.
    with Client(base_url, store="no-such-store") as c, pytest.raises(NotFound) as e:
        c.get("k")
    assert "no-such-store" in e.value.message
    # Serdes given: the server's 404.
    with Client(base_url, store="no-such-store", key_serde="string", value_serde="bytes") as c:
        with pytest.raises(NotFound) as e:
            c.get("k")
        assert e.value.status == 404 and "no-such-store" in e.value.message
        with pytest.raises(NotFound):
            c.put("k", "v")


def test_per_call_timeout_and_retries_against_the_server(kv: Client, unique: str) -> None:
    kv.put(unique + "t", "v", timeout=5.0, retries=0)
    assert kv.get(unique + "t", timeout=5.0, retries=0) == "v"


def test_timeout_is_raised_and_not_retried() -> None:
    # A socket that accepts connections and never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        with Client(url, key_serde="string", value_serde="bytes", timeout=10.0, retries=3) as c:
            start = time.monotonic()
            with pytest.raises(Timeout):
                c.get("k", timeout=0.3)
            elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 1.2, elapsed  # one attempt of 0.3 s, not four


def test_connection_refused_is_retried_then_connection_failed() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, key_serde="string", value_serde="bytes", retries=3, backoff=0.1) as c:
        start = time.monotonic()
        with pytest.raises(ConnectionFailed):
            c.get("k")
        elapsed = time.monotonic() - start
    # Three waits of at least half of 0.1, 0.2, 0.4 s.
    assert elapsed >= 0.35, elapsed


def test_server_still_serves(kv: Client, unique: str) -> None:
    kv.put(unique + "last", "still here")
    assert kv.get(unique + "last") == "still here"


def test_dot_keys_and_odd_characters(kv: Client, unique: str) -> None:
    # "." and ".." alone would be dot segments of the URL path.
    for key in [".", "..", "...", unique + "\x00nul", unique + "tab\there", unique + "😀"]:
        kv.put(key, f"value of {key!r}")
        assert kv.get(key) == f"value of {key!r}"
        kv.delete(key)
        with pytest.raises(NotFound):
            kv.get(key)


def test_a_key_too_long_for_a_url_is_a_value_error(kv: Client) -> None:
    with pytest.raises(ValueError):
        kv.put("k" * 70_000, "v")


def test_key_over_the_store_limit_is_bad_request_in_a_batch(kv: Client, unique: str) -> None:
    # 64 KiB keys do not fit a URL; a batch carries them in JSON.
    with pytest.raises(BadRequest) as e:
        kv.batch([Put(unique + "k" * 70_000, "v")])
    assert "limit" in e.value.message.lower()


def test_large_batch(kv: Client, unique: str) -> None:
    n = 2000
    assert kv.batch(Put(f"{unique}{i:05d}", str(i)) for i in range(n)) == n
    got = [(e.key, e.value) for e in kv.range(prefix=unique, page_size=1000).entries()]
    assert got == [(f"{unique}{i:05d}", str(i)) for i in range(n)]
