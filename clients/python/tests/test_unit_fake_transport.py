"""Unit tests against a FAKE server (``httpx.MockTransport``): request rendering, error mapping,
retries and backoff, without a gregor process. The behaviour against the real server is
tested in ``test_server_*.py``."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import gregor_client._async
import gregor_client._sync
from gregor_client import (
    AsyncClient,
    BadRequest,
    Client,
    ConnectionFailed,
    Delete,
    GregorError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    Put,
    PutJson,
    ServerError,
    Timeout,
    Unavailable,
)
from gregor_client._errors import parse_retry_after

Handler = Callable[[httpx.Request], httpx.Response]

JOB = {
    "job": "kv",
    "process": {"id": 0, "processes": 1},
    "tasks": [{"task": "kv-0", "partition": 0, "state": "running", "restore": None, "checkpoint": None}],
    "stores": [
        {"name": "kv", "key_serde": "string", "value_serde": "bytes"},
        {"name": "nums", "key_serde": "u64", "value_serde": "json"},
        {"name": "blobs", "key_serde": "bytes", "value_serde": "string"},
    ],
}


class FakeServer:
    """A fake gregor HTTP server: records requests, answers through ``handler`` (after serving
    ``GET /v1/job`` itself)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/job":
            return httpx.Response(200, json=JOB)
        return self.handler(request)

    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path != "/v1/job"]

    def client(self, **kw: Any) -> Client:
        kw.setdefault("backoff", 0.1)
        return Client("http://fake", transport=httpx.MockTransport(self), **kw)

    def async_client(self, **kw: Any) -> AsyncClient:
        kw.setdefault("backoff", 0.1)
        return AsyncClient("http://fake", transport=httpx.MockTransport(self), **kw)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits between retries, recorded instead of slept."""
    recorded: list[float] = []

    async def async_sleep(s: float) -> None:
        recorded.append(s)

    monkeypatch.setattr(gregor_client._sync, "_sleep", recorded.append)
    monkeypatch.setattr(gregor_client._async, "_sleep", async_sleep)
    return recorded


# ---- rendering ---------------------------------------------------------------------------


def test_string_key_is_one_percent_encoded_path_segment() -> None:
    fake = FakeServer(
        lambda r: httpx.Response(200, json={"key": "k", "value": base64.b64encode(b"v").decode()})
    )
    with fake.client() as c:
        assert c.get("a/b c%é?#") == "v"
    assert fake.api_requests()[0].url.raw_path == b"/v1/stores/kv/keys/a%2Fb%20c%25%C3%A9%3F%23"


def test_serdes_are_looked_up_once() -> None:
    fake = FakeServer(lambda r: httpx.Response(204))
    with fake.client() as c:
        c.put("a", "1")
        c.delete("a")
        c.put("b", b"2")
    assert [r.url.path for r in fake.requests].count("/v1/job") == 1
    put = fake.api_requests()[0]
    assert put.method == "PUT" and put.content == b"1"


def test_given_serdes_skip_the_lookup() -> None:
    fake = FakeServer(lambda r: httpx.Response(204))
    with fake.client(key_serde="string", value_serde="bytes") as c:
        c.put("a", "1")
    assert [r.url.path for r in fake.requests] == ["/v1/stores/kv/keys/a"]


def test_bytes_and_int_keys() -> None:
    fake = FakeServer(lambda r: httpx.Response(204))
    with fake.client(store="blobs") as c:
        c.delete(b"\xfb\xff\x00")
    with fake.client(store="nums") as c:
        c.delete(18446744073709551615)
        with pytest.raises(ValueError):
            c.delete(-1)
        with pytest.raises(TypeError):
            c.delete(b"x")
    paths = [r.url.raw_path for r in fake.api_requests()]
    # base64url without padding
    assert paths == [b"/v1/stores/blobs/keys/-_8A", b"/v1/stores/nums/keys/18446744073709551615"]


def test_batch_body_renders_keys_and_values_through_the_serdes() -> None:
    fake = FakeServer(lambda r: httpx.Response(200, json={"applied": 3}))
    with fake.client() as c:  # string keys, bytes values
        assert c.batch([Put("a", "é"), PutJson("b", {"x": 1}), Delete("c")]) == 3
    with fake.client(store="nums") as c:  # u64 keys, json values
        c.batch([Put(1, '{"y": 2}'), PutJson(2, [1, 2])])
    with fake.client(store="blobs") as c:  # bytes keys, string values
        c.batch([Put(b"\x00", "text")])
    bodies = [json.loads(r.content) for r in fake.api_requests()]
    assert bodies[0] == {
        "ops": [
            {"op": "put", "key": "a", "value": base64.b64encode("é".encode()).decode()},
            {"op": "put", "key": "b", "value": base64.b64encode(b'{"x": 1}').decode()},
            {"op": "delete", "key": "c"},
        ]
    }
    assert bodies[1] == {
        "ops": [{"op": "put", "key": 1, "value": {"y": 2}}, {"op": "put", "key": 2, "value": [1, 2]}]
    }
    assert bodies[2] == {"ops": [{"op": "put", "key": "AA==", "value": "text"}]}
    assert all(r.method == "POST" and r.url.path.endswith("/batch") for r in fake.api_requests())


def test_ttl_ms_travels_in_the_query_and_the_batch() -> None:
    fake = FakeServer(lambda r: httpx.Response(204) if r.method == "PUT" else httpx.Response(200, json={"applied": 2}))
    with fake.client() as c:
        c.put("a", "x", ttl_ms=5000)
        c.put_json("b", {"y": 1}, ttl_ms=1)
        c.put("c", "z")
        assert c.batch([Put("d", "v", ttl_ms=60_000), PutJson("e", 1), Delete("f")]) == 2
        for bad, err in [(0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError)]:
            with pytest.raises(err):
                c.put("g", "x", ttl_ms=bad)  # type: ignore[arg-type]
    reqs = fake.api_requests()
    assert [r.url.raw_path for r in reqs[:3]] == [
        b"/v1/stores/kv/keys/a?ttl_ms=5000",
        b"/v1/stores/kv/keys/b?ttl_ms=1",
        b"/v1/stores/kv/keys/c",
    ]
    ops = json.loads(reqs[3].content)["ops"]
    assert ops[0]["ttl_ms"] == 60_000 and "ttl_ms" not in ops[1] and "ttl_ms" not in ops[2]
    assert len(reqs) == 4, "a refused ttl_ms sends nothing"


def test_max_lag_travels_in_the_query_and_the_lag_comes_back() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.params.get("max_lag") is not None:
            return httpx.Response(200, json={"key": "a", "value": "c3RhbGU="}, headers={"Gregor-Standby-Lag": "12"})
        return httpx.Response(200, json={"key": "a", "value": "ZnJlc2g="})

    fake = FakeServer(handler)
    with fake.client() as c:
        assert c.get("a", max_lag=100) == "stale"
        assert c.get_bytes("a", max_lag=0) == b"stale"
        assert c.get("a") == "fresh"
        assert c.get_with_lag("a", max_lag=100) == ("stale", 12)
        for bad, err in [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)]:
            with pytest.raises(err):
                c.get("a", max_lag=bad)  # type: ignore[arg-type]
    assert [r.url.raw_path for r in fake.api_requests()] == [
        b"/v1/stores/kv/keys/a?max_lag=100",
        b"/v1/stores/kv/keys/a?max_lag=0",
        b"/v1/stores/kv/keys/a",
        b"/v1/stores/kv/keys/a?max_lag=100",
    ]

    async def run() -> None:
        async with fake.async_client() as c:
            assert await c.get_with_lag("a", max_lag=5) == ("stale", 12)
            assert await c.get_bytes("a", max_lag=5) == b"stale"

    fake2 = FakeServer(lambda r: httpx.Response(200, json={"key": "a", "value": "eA=="}))
    with fake2.client() as c:
        assert c.get_with_lag("a", max_lag=5) == ("x", None), "an active task answered: no lag"
    asyncio.run(run())


def test_values_by_serde() -> None:
    replies = {
        "/v1/stores/kv/keys/k": {"key": "k", "value": base64.b64encode(b'{"a": 1}').decode()},
        "/v1/stores/nums/keys/7": {"key": 7, "value": {"a": 1}},
        "/v1/stores/blobs/keys/aw": {"key": "aw==", "value": "[1,2]"},
    }
    fake = FakeServer(lambda r: httpx.Response(200, json=replies[r.url.path]))
    with fake.client() as c:
        assert c.get("k") == '{"a": 1}'
        assert c.get_json("k") == {"a": 1}
    with fake.client(store="nums") as c:
        assert c.get_json(7) == {"a": 1}
        assert c.get(7) == '{"a":1}'
    with fake.client(store="blobs") as c:
        assert c.get(b"k") == "[1,2]"
        assert c.get_bytes(b"k") == b"[1,2]"
        assert c.get_json(b"k") == [1, 2]


def test_range_follows_the_cursor_lazily() -> None:
    pages = {
        None: ({"entries": [{"key": "p1", "value": "MQ=="}], "cursor": "c/1+"}),
        "c/1+": ({"entries": [{"key": "p2", "value": "Mg=="}], "cursor": "c2"}),
        "c2": ({"entries": [{"key": "p3", "value": "Mw=="}], "cursor": None}),
    }
    fake = FakeServer(lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))
    with fake.client() as c:
        r = c.range(prefix="p", page_size=1)
        assert fake.requests == []  # lazy
        it = iter(r)
        first = next(it)
        assert [e.key for e in first] == ["p1"] and first.cursor == "c/1+"
        assert len(fake.api_requests()) == 1
        rest = list(it)
        assert [e.value for p in rest for e in p] == ["2", "3"]
    queries = [r.url.query for r in fake.api_requests()]
    assert queries == [
        b"prefix=p&limit=1",
        b"prefix=p&limit=1&cursor=c%2F1%2B",
        b"prefix=p&limit=1&cursor=c2",
    ]


def test_range_arguments() -> None:
    fake = FakeServer(lambda r: httpx.Response(200, json={"entries": [], "cursor": None}))
    with fake.client() as c:
        list(c.range(from_="a b", to="z"))
        with pytest.raises(ValueError):
            c.range(prefix="a", from_="b")
    with fake.client(store="nums") as c:
        list(c.range(from_=1, to=2**64 - 1))
    with fake.client(store="blobs") as c:
        list(c.range(prefix=b"\xfb\xff"))
    assert [r.url.query for r in fake.api_requests()] == [
        b"from=a%20b&to=z",
        b"from=1&to=18446744073709551615",
        b"prefix=-_8",
    ]


def test_range_refuses_a_cursor_that_does_not_move() -> None:
    fake = FakeServer(lambda r: httpx.Response(200, json={"entries": [], "cursor": "same"}))
    with fake.client() as c, pytest.raises(ProtocolError):
        list(c.range())


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad_request", BadRequest),
        (413, "bad_request", PayloadTooLarge),
        (404, "not_found", NotFound),
        (405, "method_not_allowed", MethodNotAllowed),
        (500, "internal", ServerError),
        (502, "whatever", ServerError),
        (418, "teapot", GregorError),
    ],
)
def test_errors_from_the_json_body(status: int, code: str, cls: type[GregorError]) -> None:
    fake = FakeServer(lambda r: error(status, code, f"the message {status}"))
    with fake.client() as c, pytest.raises(cls) as e:
        c.get("k")
    assert type(e.value) is cls
    assert (e.value.status, e.value.code, e.value.message) == (status, code, f"the message {status}")
    assert f"HTTP {status}" in str(e.value)
    assert len(fake.api_requests()) == 1  # not retried


def test_payload_too_large_is_a_bad_request() -> None:
    assert issubclass(PayloadTooLarge, BadRequest)


def test_error_without_a_json_body() -> None:
    fake = FakeServer(lambda r: httpx.Response(413, text="length limit exceeded"))
    with fake.client() as c, pytest.raises(PayloadTooLarge) as e:
        c.put("k", "v")
    assert e.value.message == "length limit exceeded" and e.value.code is None
    fake = FakeServer(lambda r: httpx.Response(500))
    with fake.client() as c, pytest.raises(ServerError) as e2:
        c.get("k")
    assert e2.value.message == "Internal Server Error"


def test_reply_that_is_not_json_is_a_protocol_error() -> None:
    fake = FakeServer(lambda r: httpx.Response(200, text="<html>"))
    with fake.client() as c, pytest.raises(ProtocolError):
        c.get("k")


def test_unknown_store_from_the_job() -> None:
    fake = FakeServer(lambda r: httpx.Response(204))
    with fake.client(store="nope") as c, pytest.raises(NotFound) as e:
        c.put("k", "v")
    assert "nope" in e.value.message and "`kv`" in e.value.message


# ---- retries -----------------------------------------------------------------------------


def flaky(failures: list[httpx.Response | Exception], then: httpx.Response) -> Handler:
    """Fails with each of ``failures`` in turn (a response, or an exception raised), then
    answers ``then``."""
    queue = list(failures)

    def handler(request: httpx.Request) -> httpx.Response:
        if queue:
            f = queue.pop(0)
            if isinstance(f, Exception):
                raise f
            return f
        return then

    return handler


def test_503_is_retried_after_retry_after(sleeps: list[float]) -> None:
    busy = error(503, "unavailable", "restoring", {"Retry-After": "2"})
    fake = FakeServer(flaky([busy, busy], httpx.Response(204)))
    with fake.client() as c:
        c.put("k", "v")
    assert sleeps == [2.0, 2.0]
    assert len(fake.api_requests()) == 3


def test_503_without_retry_after_backs_off_exponentially_with_jitter(sleeps: list[float]) -> None:
    busy = error(503, "unavailable", "restoring")
    fake = FakeServer(flaky([busy] * 5, httpx.Response(204)))
    with fake.client(retries=5, backoff=0.1, max_backoff=0.5) as c:
        c.delete("k")
    assert len(sleeps) == 5
    for s, base in zip(sleeps, [0.1, 0.2, 0.4, 0.5, 0.5]):
        assert base / 2 <= s <= base


def test_503_retries_exhausted_raise_unavailable(sleeps: list[float]) -> None:
    fake = FakeServer(lambda r: error(503, "unavailable", "task kv-0 is restoring", {"Retry-After": "1"}))
    with fake.client(retries=2) as c, pytest.raises(Unavailable) as e:
        c.get("k")
    assert e.value.retry_after == 1.0 and e.value.status == 503 and "restoring" in e.value.message
    assert len(fake.api_requests()) == 3
    assert sleeps == [1.0, 1.0]


def test_per_call_retries(sleeps: list[float]) -> None:
    fake = FakeServer(lambda r: error(503, "unavailable", "restoring"))
    with fake.client(retries=5) as c:
        with pytest.raises(Unavailable):
            c.get("k", retries=0)
        assert len(fake.api_requests()) == 1
        with pytest.raises(Unavailable):
            c.get("k", retries=1)
        assert len(fake.api_requests()) == 3


def test_connect_errors_are_retried_for_every_method(sleeps: list[float]) -> None:
    refused = httpx.ConnectError("connection refused")
    fake = FakeServer(flaky([refused, refused], httpx.Response(200, json={"applied": 1})))
    with fake.client() as c:
        assert c.batch([Put("k", "v")]) == 1
    assert len(sleeps) == 2
    fake = FakeServer(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")))
    with fake.client(retries=2) as c, pytest.raises(ConnectionFailed):
        c.put("k", "v")
    assert len(fake.api_requests()) == 3


def test_batch_is_retried_on_503(sleeps: list[float]) -> None:
    busy = error(503, "unavailable", "restoring", {"Retry-After": "0"})
    fake = FakeServer(flaky([busy], httpx.Response(200, json={"applied": 1})))
    with fake.client() as c:
        assert c.batch([Delete("k")]) == 1
    assert sleeps == [0.0]


def test_broken_connection_is_retried(sleeps: list[float]) -> None:
    fake = FakeServer(flaky([httpx.RemoteProtocolError("Server disconnected")], httpx.Response(204)))
    with fake.client() as c:
        c.put("k", "v")
    assert len(fake.api_requests()) == 2


def test_timeouts_are_not_retried(sleeps: list[float]) -> None:
    fake = FakeServer(lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("timed out")))
    with fake.client(retries=3) as c, pytest.raises(Timeout):
        c.get("k")
    assert len(fake.api_requests()) == 1 and sleeps == []
    assert issubclass(Timeout, gregor_client.TransportError)


def test_per_call_timeout_reaches_httpx() -> None:
    seen: list[Any] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r.extensions["timeout"])
        return httpx.Response(204)

    fake = FakeServer(handler)
    with fake.client(timeout=7.0) as c:
        c.put("k", "v")
        c.put("k", "v", timeout=0.5)
        c.put("k", "v", timeout=None)
    assert [t["read"] for t in seen] == [7.0, 0.5, None]


def test_health_503_is_an_answer_not_retried(sleeps: list[float]) -> None:
    fake = FakeServer(
        lambda r: httpx.Response(503, json={"status": "restoring", "tasks": 2}, headers={"Retry-After": "3"})
    )
    with fake.client() as c:
        h = c.health()
    assert not h.ready and h.status == "restoring" and h.retry_after == 3.0
    assert sleeps == [] and len(fake.api_requests()) == 1


def test_retry_after_as_http_date() -> None:
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(
        30, abs=1
    )
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0


# ---- async -------------------------------------------------------------------------------


def test_async_client_retries_and_errors(sleeps: list[float]) -> None:
    busy = error(503, "unavailable", "restoring", {"Retry-After": "1"})
    reply = httpx.Response(200, json={"key": "k", "value": base64.b64encode(b"v").decode()})
    fake = FakeServer(flaky([busy, httpx.ConnectError("refused")], reply))

    async def main() -> None:
        async with fake.async_client() as c:
            assert await c.get("k") == "v"
            assert len(sleeps) == 2 and sleeps[0] == 1.0

    asyncio.run(main())

    fake2 = FakeServer(lambda r: error(404, "not_found", "no key"))

    async def main2() -> None:
        async with fake2.async_client() as c:
            with pytest.raises(NotFound):
                await c.get("k")

    asyncio.run(main2())


def test_async_range() -> None:
    pages = {
        None: {"entries": [{"key": "a", "value": "MQ=="}], "cursor": "x"},
        "x": {"entries": [{"key": "b", "value": "Mg=="}], "cursor": None},
    }
    fake = FakeServer(lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))

    async def main() -> list[tuple[str, str]]:
        async with fake.async_client() as c:
            return [(e.key, e.value) async for e in c.range(page_size=1).entries()]

    assert asyncio.run(main()) == [("a", "1"), ("b", "2")]


def test_empty_key_is_refused_before_sending() -> None:
    fake = FakeServer(lambda r: httpx.Response(204))
    with fake.client() as c:
        with pytest.raises(ValueError):
            c.put("", "v")
        with pytest.raises(ValueError):
            c.get("")
    assert fake.api_requests() == []


def test_base64_without_padding_is_accepted() -> None:
    fake = FakeServer(lambda r: httpx.Response(200, json={"key": "k", "value": "YQ"}))
    with fake.client() as c:
        assert c.get_bytes("k") == b"a"


def test_base_url_without_scheme_is_http() -> None:
    seen: list[str] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(str(r.url))
        return httpx.Response(204)

    with Client(
        "127.0.0.1:8080", key_serde="string", value_serde="bytes", transport=httpx.MockTransport(handler)
    ) as c:
        c.delete("k")
    assert seen == ["http://127.0.0.1:8080/v1/stores/kv/keys/k"]


def test_async_serdes_are_looked_up_once_by_concurrent_calls() -> None:
    fake = FakeServer(lambda r: httpx.Response(204))

    async def main() -> None:
        async with fake.async_client() as c:
            await asyncio.gather(*(c.put(f"k{i}", "v") for i in range(10)))

    asyncio.run(main())
    assert [r.url.path for r in fake.requests].count("/v1/job") == 1
