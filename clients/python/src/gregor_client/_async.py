"""The asynchronous client: the same API as :class:`Client`, with coroutines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx

from . import _core
from ._core import UNSET, CallTimeout, Core, Request, TimeoutArg
from ._errors import ProtocolError
from ._models import Entry, Health, JobInfo, KeyMeta, Op, Page, parse_entries, parse_job, parse_meta
from ._serde import Key, Serde, value_to_bytes, value_wire_bytes, value_wire_json, value_wire_text

__all__ = ["AsyncClient", "AsyncRangePages"]

_sleep = asyncio.sleep  # replaced by the unit tests


class AsyncClient:
    """An asyncio client of one store of a gregor process, with the API of :class:`Client`
    (every method is a coroutine; :meth:`range` returns an async iterable).

    ::

        async with AsyncClient("http://127.0.0.1:8080", store="kv") as kv:
            await kv.put("key1", "value1")
            assert await kv.get("key1") == "value1"
            await kv.delete("key1")

    Args:
        base_url: the process's HTTP address, ``http://host:port`` (``host:port`` alone
            means ``http://host:port``).
        store: the store the key methods act on (``kv``, the store of ``gregor serve``, by
            default).
        key_serde, value_serde: the store's serdes (``string``, ``bytes``, ``u64``, ``i64``,
            ``json``, ``postcard``). When not given they are read once from ``GET /v1/job``
            (its ``stores`` list) on first use, and kept.
        timeout: seconds for each attempt of a request (connect, send, wait for the reply),
            an ``httpx.Timeout``, or ``None`` for no timeout. Every method also takes
            ``timeout=``.
        retries: how many times a failed request is sent again (connect errors, a connection
            broken before the reply, 503 Unavailable); ``0`` disables retries. Every method
            also takes ``retries=``.
        backoff, max_backoff: the first retry waits about ``backoff`` seconds, each next one
            twice as long (with random jitter), at most ``max_backoff``; a 503 with
            ``Retry-After`` waits what the server says.
        headers: extra headers sent with every request (for instance ``Authorization``).
        transport: an ``httpx`` transport (tests use ``httpx.MockTransport``).

    It wraps one ``httpx.AsyncClient`` connection pool, shared by concurrent tasks of one event
    loop. Close it with :meth:`aclose` or use it as an async context manager.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        store: str = "kv",
        key_serde: str | None = None,
        value_serde: str | None = None,
        timeout: TimeoutArg = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = Core(store, key_serde, value_serde, retries, backoff, max_backoff)
        self._timeout = _core.to_httpx_timeout(timeout, httpx.Timeout(None))
        self._serdes_lock = asyncio.Lock()
        self._http = httpx.AsyncClient(
            base_url=_core.base_url(base_url),
            timeout=self._timeout,
            headers=headers,
            transport=transport,
            # A key whose task runs in another process of the job is answered with a 307
            # to that process (one hop): follow it.
            follow_redirects=True,
        )

    @property
    def store(self) -> str:
        """The store this client acts on."""
        return self._core.store

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- sending ---------------------------------------------------------------------------

    async def _send(self, req: Request, timeout: CallTimeout, retries: int | None) -> httpx.Response:
        n = self._core.retries(retries)
        t = _core.to_httpx_timeout(timeout, self._timeout)
        attempt = 0
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(
                    req.method, req.path, content=req.content, headers=req.headers, timeout=t
                )
            except httpx.TransportError as e:
                outcome = e
            except httpx.InvalidURL as e:  # a key too long for a URL, for one
                raise ValueError(f"{req.method} {req.path[:100]}...: {e}") from e
            delay = _core.retry_delay(req, outcome, attempt, n, self._core.policy)
            if delay is None:
                return _core.finish(req, outcome)
            await _sleep(delay)
            attempt += 1

    async def serdes(
        self, *, timeout: CallTimeout = UNSET, retries: int | None = None
    ) -> tuple[Serde, Serde]:
        """The store's key and value serdes: as given to the constructor, else read once from
        ``GET /v1/job``. :class:`NotFound` when the job has no such store."""
        ks, vs = self._core.key_serde, self._core.value_serde
        if ks is not None and vs is not None:
            return ks, vs
        async with self._serdes_lock:  # one lookup, however many calls wait for it
            ks, vs = self._core.key_serde, self._core.value_serde
            if ks is not None and vs is not None:
                return ks, vs
            body = _core.json_body(await self._send(_core.JOB, timeout, retries))
            return self._core.learn_serdes(body)

    async def _key_serde(self, timeout: CallTimeout, retries: int | None) -> Serde:
        return self._core.key_serde or (await self.serdes(timeout=timeout, retries=retries))[0]

    # ---- reads -----------------------------------------------------------------------------

    async def _get_resp(
        self, key: Key, timeout: CallTimeout, retries: int | None, max_lag: int | None
    ) -> tuple[Serde, httpx.Response]:
        ks, vs = await self.serdes(timeout=timeout, retries=retries)
        return vs, await self._send(self._core.get(ks, key, max_lag), timeout, retries)

    async def _get_wire(
        self, key: Key, timeout: CallTimeout, retries: int | None, max_lag: int | None = None
    ) -> tuple[Serde, Any]:
        vs, resp = await self._get_resp(key, timeout, retries, max_lag)
        return vs, _core.reply_value(resp)

    async def get(
        self,
        key: Key,
        *,
        max_lag: int | None = None,
        timeout: CallTimeout = UNSET,
        retries: int | None = None,
    ) -> str:
        """The value of ``key`` as text (UTF-8 decoded for a ``bytes`` value serde; a
        ``UnicodeDecodeError`` when it is not UTF-8: use :meth:`get_bytes`).

        Raises :class:`NotFound` when the key does not exist.

        ``max_lag``: a bounded-staleness read (``?max_lag=``): a process that holds a standby
        copy of the key's task may answer from it when the standby is at most ``max_lag``
        changelog records behind (see :meth:`get_with_lag` for the lag)."""
        return value_wire_text(*(await self._get_wire(key, timeout, retries, max_lag)))

    async def get_bytes(
        self,
        key: Key,
        *,
        max_lag: int | None = None,
        timeout: CallTimeout = UNSET,
        retries: int | None = None,
    ) -> bytes:
        """The value of ``key`` as bytes (exactly as stored for a ``bytes`` value serde).
        Raises :class:`NotFound` when the key does not exist."""
        return value_wire_bytes(*(await self._get_wire(key, timeout, retries, max_lag)))

    async def get_json(
        self,
        key: Key,
        *,
        max_lag: int | None = None,
        timeout: CallTimeout = UNSET,
        retries: int | None = None,
    ) -> Any:
        """The value of ``key`` parsed as JSON. Raises :class:`NotFound` when the key does not
        exist, ``ValueError`` when the value is not JSON."""
        return value_wire_json(*(await self._get_wire(key, timeout, retries, max_lag)))

    async def get_with_lag(
        self,
        key: Key,
        *,
        max_lag: int,
        timeout: CallTimeout = UNSET,
        retries: int | None = None,
    ) -> tuple[str, int | None]:
        """A bounded-staleness read (as :meth:`get` with ``max_lag``): the value of ``key`` as
        text and the lag in changelog records of the standby that answered
        (``Gregor-Standby-Lag``), or ``None`` when the task's active process answered.
        Raises :class:`NotFound` when the key does not exist (in the copy that answered)."""
        vs, resp = await self._get_resp(key, timeout, retries, max_lag)
        return value_wire_text(vs, _core.reply_value(resp)), _core.standby_lag(resp)

    async def meta(self, key: Key, *, timeout: CallTimeout = UNSET, retries: int | None = None) -> KeyMeta:
        """Where ``key`` lives: its partition, task and owning process (whether or not the key
        exists)."""
        ks = await self._key_serde(timeout, retries)
        return parse_meta(_core.json_body(await self._send(self._core.meta(ks, key), timeout, retries)))

    def range(
        self,
        *,
        from_: Key | None = None,
        to: Key | None = None,
        prefix: Key | None = None,
        page_size: int | None = None,
        timeout: CallTimeout = UNSET,
        retries: int | None = None,
    ) -> AsyncRangePages:
        """The entries with keys in ``[from_, to)`` (either bound optional), or starting with
        ``prefix``, ascending by serialized key, as a lazy async iterable of :class:`Page` objects (``async for page in ...``).

        Nothing is requested until it is iterated; each page is fetched when the previous one
        has been consumed, following the server's cursor. ``page_size`` is the server's
        ``limit`` (server default 100, at most 1000). ``async for`` over ``.entries()`` for the entries
        across pages. Iterating it again starts a new scan."""
        _core.check_range_args(from_, to, prefix, page_size)
        return AsyncRangePages(self, from_, to, prefix, page_size, timeout, retries)

    async def job(self, *, timeout: CallTimeout = UNSET, retries: int | None = None) -> JobInfo:
        """``GET /v1/job``: the job, this process, its tasks (state, restore progress,
        checkpoints) and the job's stores."""
        return parse_job(_core.json_body(await self._send(_core.JOB, timeout, retries)))

    async def health(self, *, timeout: CallTimeout = UNSET, retries: int | None = None) -> Health:
        """``GET /health``: ``Health.ready`` is true when every task has restored and runs. A
        503 (restoring) is an answer here, not an error, and is not retried; connect errors
        are retried like for the other methods."""
        return _core.parse_health(await self._send(_core.HEALTH, timeout, retries))

    # ---- writes (gregor serve) -------------------------------------------------------------

    async def put(
        self,
        key: Key,
        value: str | bytes,
        *,
        ttl_ms: int | None = None,
        timeout: CallTimeout = UNSET,
        retries: int | None = None,
    ) -> None:
        """Sets ``key`` to ``value``: bytes as they are, str as UTF-8. The body is what the
        store's value serde reads: raw bytes for ``bytes``, UTF-8 text for ``string``, JSON
        text for ``json`` (see :meth:`put_json`). Returns once the write is durable in the log;
        every later read sees it. :class:`BadRequest` (or its :class:`PayloadTooLarge`) for a value the
        store refuses, e.g. over its size limit; nothing is written then. ``ttl_ms``: the
        entry expires that many milliseconds after the write instead of after the store's
        ``ttl.ms`` (a store with ``stores.<name>.ttl.ms`` only; others answer
        :class:`BadRequest`)."""
        ks = await self._key_serde(timeout, retries)
        req = self._core.put(ks, key, value_to_bytes(value), "application/octet-stream", ttl_ms)
        await self._send(req, timeout, retries)

    async def put_json(
        self,
        key: Key,
        value: Any,
        *,
        ttl_ms: int | None = None,
        timeout: CallTimeout = UNSET,
        retries: int | None = None,
    ) -> None:
        """Sets ``key`` to ``value`` serialized as JSON text (read it back with
        :meth:`get_json`); ``ttl_ms`` as for :meth:`put`."""
        ks = await self._key_serde(timeout, retries)
        req = self._core.put(ks, key, json.dumps(value).encode("utf-8"), "application/json", ttl_ms)
        await self._send(req, timeout, retries)

    async def delete(self, key: Key, *, timeout: CallTimeout = UNSET, retries: int | None = None) -> None:
        """Deletes ``key`` (no error when it does not exist)."""
        ks = await self._key_serde(timeout, retries)
        await self._send(self._core.delete(ks, key), timeout, retries)

    async def batch(
        self, ops: Iterable[Op], *, timeout: CallTimeout = UNSET, retries: int | None = None
    ) -> int:
        """Applies :class:`Put`, :class:`PutJson` and :class:`Delete` ops in one request; ops on
        one key apply in order. The server checks the whole batch before writing anything (a
        bad op is :class:`BadRequest` and nothing is written). Returns how many ops were
        applied. An empty batch sends nothing and returns 0."""
        ks, vs = await self.serdes(timeout=timeout, retries=retries)
        req, count = self._core.batch(ks, vs, ops)
        if count == 0:
            return 0
        return _core.parse_applied(await self._send(req, timeout, retries))

    # ---- for RangePages ----------------------------------------------------------------------

    async def _range_page(
        self,
        from_: Key | None,
        to: Key | None,
        prefix: Key | None,
        page_size: int | None,
        cursor: str | None,
        timeout: CallTimeout,
        retries: int | None,
    ) -> Page:
        ks, vs = await self.serdes(timeout=timeout, retries=retries)
        req = self._core.range_page(ks, from_, to, prefix, page_size, cursor)
        return parse_entries(_core.json_body(await self._send(req, timeout, retries)), ks, vs)


class AsyncRangePages:
    """The pages of a range (from :meth:`AsyncClient.range`): ``async for`` it for :class:`Page` objects,
    or :meth:`entries` for the entries. Lazy: a page is fetched when the iteration reaches
    it."""

    def __init__(
        self,
        client: AsyncClient,
        from_: Key | None,
        to: Key | None,
        prefix: Key | None,
        page_size: int | None,
        timeout: CallTimeout,
        retries: int | None,
    ) -> None:
        self._args = (from_, to, prefix, page_size)
        self._client = client
        self._timeout = timeout
        self._retries = retries

    async def _pages(self) -> AsyncIterator[Page]:
        cursor: str | None = None
        while True:
            page = await self._client._range_page(*self._args, cursor, self._timeout, self._retries)
            yield page
            if page.cursor is None:
                return
            if page.cursor == cursor:
                raise ProtocolError(f"range: the server returned the cursor it was given ({cursor!r})")
            cursor = page.cursor

    def __aiter__(self) -> AsyncIterator[Page]:
        return self._pages()

    async def entries(self) -> AsyncIterator[Entry]:
        """Every entry of the range, in order, fetching pages as needed (``async for``)."""
        async for page in self:
            for entry in page.entries:
                yield entry
