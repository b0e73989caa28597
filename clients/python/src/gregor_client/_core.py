"""What the sync and async clients share: building requests, the retry policy, turning
replies into values or exceptions. No I/O here."""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Union
from urllib.parse import quote

import httpx

from . import _errors as errors
from ._models import Delete, Health, Op, Put, PutJson, parse_job
from ._serde import (
    Serde,
    check_serde,
    key_segment,
    key_text,
    key_to_json,
    prefix_text,
    value_to_bytes,
    value_to_json,
)


class _Unset(enum.Enum):
    UNSET = 0


UNSET = _Unset.UNSET
"""Sentinel of per-call ``timeout=``: use the client's timeout."""

TimeoutArg = Union[float, httpx.Timeout, None]
"""A timeout: seconds (float) for every phase, an ``httpx.Timeout``, or ``None`` for none."""

CallTimeout = Union[float, httpx.Timeout, None, _Unset]


def base_url(url: str) -> str:
    """``url`` with ``http://`` when it has no scheme (``127.0.0.1:8080``)."""
    return url if "://" in url else f"http://{url}"


def to_httpx_timeout(t: CallTimeout, default: httpx.Timeout) -> httpx.Timeout:
    if t is UNSET:
        return default
    if isinstance(t, httpx.Timeout):
        return t
    return httpx.Timeout(t)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter.

    Attempt ``n`` (0 for the first retry) waits ``Retry-After`` when a 503 carries it, else a
    random time between half and all of ``min(max_backoff, backoff * 2**n)``.
    """

    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self.max_backoff, self.backoff * (2.0**attempt))
        return base / 2 + random.random() * base / 2


@dataclass(frozen=True)
class Request:
    """One API request, before sending.

    ``idempotent``: sending it twice leaves the same state as sending it once, so it may be
    sent again after a connection broke with the request possibly delivered. ``retry_503``: a
    503 is retried (not for ``/health``, whose 503 is an answer).
    """

    method: str
    path: str
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True
    retry_503: bool = True
    ok: frozenset[int] = frozenset()


# Connection-level failures: the request never reached the server, so any request may be sent
# again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# The connection broke after the request may have been sent: only idempotent requests again.
_MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.CloseError)


def retry_delay(
    req: Request,
    outcome: httpx.Response | httpx.TransportError,
    attempt: int,
    retries: int,
    policy: RetryPolicy,
) -> float | None:
    """How long to wait before sending ``req`` again, or ``None`` to stop with ``outcome``.

    Retried: connect errors (any request: nothing was sent); a connection broken before the
    reply (idempotent requests only); 503 (when ``req.retry_503``), after ``Retry-After`` when
    given. Never retried: timeouts (the caller's deadline), any other status.
    """
    if attempt >= retries:
        return None
    if isinstance(outcome, httpx.Response):
        if outcome.status_code == 503 and req.retry_503:
            return policy.delay(attempt, errors.parse_retry_after(outcome.headers.get("retry-after")))
        return None
    if isinstance(outcome, _NOT_SENT):
        return policy.delay(attempt)
    if isinstance(outcome, _MAYBE_SENT) and req.idempotent:
        return policy.delay(attempt)
    return None


def finish(req: Request, outcome: httpx.Response | httpx.TransportError) -> httpx.Response:
    """The successful reply, or the exception for ``outcome``."""
    if isinstance(outcome, httpx.Response):
        if outcome.is_success or outcome.status_code in req.ok:
            return outcome
        raise errors.error_from_response(outcome)
    where = f"{req.method} {req.path}"
    if isinstance(outcome, httpx.TimeoutException):
        raise errors.Timeout(f"{where}: timed out ({type(outcome).__name__}: {outcome})") from outcome
    raise errors.ConnectionFailed(f"{where}: {type(outcome).__name__}: {outcome}") from outcome


def json_body(resp: httpx.Response) -> Any:
    try:
        return json.loads(resp.content)
    except ValueError as e:
        raise errors.ProtocolError(
            f"{resp.request.method} {resp.request.url.path}: reply is not JSON: {resp.text[:200]!r}",
            status=resp.status_code,
        ) from e


def reply_value(resp: httpx.Response) -> Any:
    body = json_body(resp)
    if not isinstance(body, dict) or "value" not in body:
        raise errors.ProtocolError(f"GET key reply without `value`: {body!r:.200}", status=resp.status_code)
    return body["value"]


def parse_health(resp: httpx.Response) -> Health:
    try:
        body: Any = json.loads(resp.content) if resp.content else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    status = body.get("status")
    ready = resp.status_code == 200
    return Health(
        ready=ready,
        status=status if isinstance(status, str) else ("ready" if ready else "unavailable"),
        retry_after=errors.parse_retry_after(resp.headers.get("retry-after")),
        raw=body,
    )


def parse_applied(resp: httpx.Response) -> int:
    body = json_body(resp)
    n = body.get("applied") if isinstance(body, dict) else None
    if not isinstance(n, int) or isinstance(n, bool):
        raise errors.ProtocolError(f"batch reply without `applied`: {body!r:.200}", status=resp.status_code)
    return n


class Core:
    """Per-client state and request builders shared by :class:`Client` and
    :class:`AsyncClient`."""

    def __init__(
        self,
        store: str,
        key_serde: str | None,
        value_serde: str | None,
        retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        if not store:
            raise ValueError("store must be a non-empty name")
        self.store = store
        self.key_serde: Serde | None = check_serde(key_serde, "key") if key_serde else None
        self.value_serde: Serde | None = check_serde(value_serde, "value") if value_serde else None
        self.policy = RetryPolicy(retries=retries, backoff=backoff, max_backoff=max_backoff)

    def retries(self, per_call: int | None) -> int:
        if per_call is None:
            return self.policy.retries
        if per_call < 0:
            raise ValueError("retries must be >= 0")
        return per_call

    def learn_serdes(self, body: Any) -> tuple[Serde, Serde]:
        """Takes this client's store serdes from a ``GET /v1/job`` reply (keeping any given to
        the constructor)."""
        job = parse_job(body)
        info = job.store(self.store)
        if info is None:
            names = ", ".join(f"`{s.name}`" for s in job.stores) or "none"
            raise errors.NotFound(
                f"no store `{self.store}` in job `{job.job}` (its stores: {names})",
                status=None,
                code="not_found",
            )
        try:
            ks = self.key_serde or check_serde(info.key_serde, "key")
            vs = self.value_serde or check_serde(info.value_serde, "value")
        except ValueError as e:
            raise errors.ProtocolError(
                f"store `{self.store}`: {e}; pass key_serde= and value_serde= to the client"
            ) from e
        self.key_serde, self.value_serde = ks, vs
        return ks, vs

    # ---- requests --------------------------------------------------------------------------

    def _store_path(self) -> str:
        return f"/v1/stores/{quote(self.store, safe='')}"

    def key_path(self, ks: Serde, key: object) -> str:
        return f"{self._store_path()}/keys/{key_segment(ks, key)}"

    def get(self, ks: Serde, key: object, max_lag: int | None = None) -> Request:
        path = self.key_path(ks, key)
        if max_lag is not None:
            path += f"?max_lag={check_max_lag(max_lag)}"
        return Request("GET", path)

    def meta(self, ks: Serde, key: object) -> Request:
        return Request("GET", self.key_path(ks, key) + "/meta")

    def put(
        self, ks: Serde, key: object, body: bytes, content_type: str, ttl_ms: int | None = None
    ) -> Request:
        path = self.key_path(ks, key)
        if ttl_ms is not None:
            path += f"?ttl_ms={check_ttl_ms(ttl_ms)}"
        return Request("PUT", path, content=body, headers={"content-type": content_type})

    def delete(self, ks: Serde, key: object) -> Request:
        return Request("DELETE", self.key_path(ks, key))

    def range_page(
        self,
        ks: Serde,
        from_: object,
        to: object,
        prefix: object,
        page_size: int | None,
        cursor: str | None,
    ) -> Request:
        params: list[tuple[str, str]] = []
        if from_ is not None:
            params.append(("from", key_text(ks, from_)))
        if to is not None:
            params.append(("to", key_text(ks, to)))
        if prefix is not None:
            params.append(("prefix", prefix_text(ks, prefix)))
        if page_size is not None:
            params.append(("limit", str(page_size)))
        if cursor is not None:
            params.append(("cursor", cursor))
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
        return Request("GET", f"{self._store_path()}/range" + (f"?{query}" if query else ""))

    def batch(self, ks: Serde, vs: Serde, ops: Iterable[Op]) -> tuple[Request, int]:
        rendered: list[dict[str, Any]] = []
        for op in ops:
            if isinstance(op, Put):
                put: dict[str, Any] = {
                    "op": "put",
                    "key": key_to_json(ks, op.key),
                    "value": value_to_json(vs, value_to_bytes(op.value)),
                }
                if op.ttl_ms is not None:
                    put["ttl_ms"] = check_ttl_ms(op.ttl_ms)
                rendered.append(put)
            elif isinstance(op, PutJson):
                value = op.value if vs == "json" else value_to_json(vs, json.dumps(op.value).encode("utf-8"))
                put = {"op": "put", "key": key_to_json(ks, op.key), "value": value}
                if op.ttl_ms is not None:
                    put["ttl_ms"] = check_ttl_ms(op.ttl_ms)
                rendered.append(put)
            elif isinstance(op, Delete):
                rendered.append({"op": "delete", "key": key_to_json(ks, op.key)})
            else:
                raise TypeError(f"a batch op is Put, PutJson or Delete, not {type(op).__name__}")
        body = json.dumps({"ops": rendered}, ensure_ascii=False).encode("utf-8")
        # A batch is a list of puts and deletes of whole values: sending it twice leaves the
        # store as sending it once, so it is retried like PUT and DELETE (see the README).
        req = Request(
            "POST",
            f"{self._store_path()}/batch",
            content=body,
            headers={"content-type": "application/json"},
            idempotent=True,
        )
        return req, len(rendered)


def check_ttl_ms(ttl_ms: object) -> int:
    """A per-write TTL in milliseconds: a positive int (the server also bounds it)."""
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int):
        raise TypeError(f"ttl_ms is an int of milliseconds, not {type(ttl_ms).__name__}")
    if ttl_ms < 1:
        raise ValueError(f"ttl_ms must be at least 1, not {ttl_ms}")
    return ttl_ms


def check_max_lag(max_lag: object) -> int:
    """A bounded-staleness read's ``max_lag``: an int of changelog records, 0 or more."""
    if isinstance(max_lag, bool) or not isinstance(max_lag, int):
        raise TypeError(f"max_lag is an int of changelog records, not {type(max_lag).__name__}")
    if max_lag < 0:
        raise ValueError(f"max_lag must be at least 0, not {max_lag}")
    return max_lag


STANDBY_LAG_HEADER = "gregor-standby-lag"


def standby_lag(resp: httpx.Response) -> int | None:
    """The ``Gregor-Standby-Lag`` of a GET answered by a standby, ``None`` when the task's
    active process answered."""
    v = resp.headers.get(STANDBY_LAG_HEADER)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise errors.ProtocolError(f"malformed {STANDBY_LAG_HEADER} header {v!r}", status=resp.status_code) from None


def check_range_args(from_: object, to: object, prefix: object, page_size: int | None) -> None:
    if prefix is not None and (from_ is not None or to is not None):
        raise ValueError("range: `prefix` cannot be combined with `from_`/`to`")
    if page_size is not None and page_size < 1:
        raise ValueError("range: page_size must be >= 1")


HEALTH = Request("GET", "/health", retry_503=False, ok=frozenset({503}))
JOB = Request("GET", "/v1/job")
