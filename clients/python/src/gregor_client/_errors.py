"""The exception tree.

Every error a client method raises is a :class:`GregorError`::

    GregorError
    ├── BadRequest            400 bad_request (malformed key, body, parameter, batch; oversized)
    │   └── PayloadTooLarge   413 (a key, value or body over a size limit)
    ├── NotFound              404 not_found (no such key, store or route)
    ├── MethodNotAllowed      405 method_not_allowed (a write to a job that is not `gregor serve`)
    ├── Unavailable           503 unavailable (restoring; ``retry_after`` from Retry-After)
    ├── ServerError           500 internal, and any other 5xx
    ├── ProtocolError         a reply that does not follow the HTTP API (not JSON, fields missing)
    └── TransportError        no HTTP reply at all
        ├── ConnectionFailed  could not connect, or the connection broke before the reply
        └── Timeout           the request's timeout expired

HTTP errors are built from the server's JSON error body,
``{"error": {"code": "...", "message": "..."}}``: ``code`` and ``message`` are kept on the
exception, with the HTTP ``status``.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from typing import Any

import httpx

__all__ = [
    "BadRequest",
    "ConnectionFailed",
    "GregorError",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "ServerError",
    "Timeout",
    "TransportError",
    "Unavailable",
]


class GregorError(Exception):
    """Base of every error raised by the client.

    Attributes:
        message: what went wrong (the server's ``error.message`` for HTTP errors).
        status: the HTTP status, or ``None`` when there was no HTTP reply.
        code: the server's ``error.code`` (``"not_found"``, ``"bad_request"``, ...), or ``None``.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status}{code}: {self.message}"


class BadRequest(GregorError):
    """400: the server refused the request (malformed key, body, parameter or batch, or a key or
    value over the store's limits). Nothing was written."""


class PayloadTooLarge(BadRequest):
    """413: a key, value or request body over a size limit. Nothing was written."""


class NotFound(GregorError):
    """404: no such key (``get``), no such store, or no such route."""


class MethodNotAllowed(GregorError):
    """405: a write to a job that is not a key-value service (``gregor run`` of an ordinary job)."""


class Unavailable(GregorError):
    """503: the task owning the key (or any task, for a range) is restoring or not open here.

    Raised once the client's retries are used up. ``retry_after`` is the server's
    ``Retry-After`` in seconds (``None`` when absent)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 503,
        code: str | None = "unavailable",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class ServerError(GregorError):
    """500 (``internal``: a store or log error) or any other 5xx except 503."""


class ProtocolError(GregorError):
    """A reply that does not follow the HTTP API (not JSON, a field missing or mistyped)."""


class TransportError(GregorError):
    """No HTTP reply: the request failed at the connection level."""


class ConnectionFailed(TransportError):
    """Could not connect to the server, or the connection broke before the reply came."""


class Timeout(TransportError):
    """The request's timeout expired (connecting, sending or waiting for the reply)."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; ``None`` if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


_BY_STATUS: dict[int, type[GregorError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    503: Unavailable,
}

_BY_CODE: dict[str, type[GregorError]] = {
    "bad_request": BadRequest,
    "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "unavailable": Unavailable,
    "internal": ServerError,
}


def error_from_response(response: httpx.Response) -> GregorError:
    """The exception for an error reply, from its status and its JSON error body.

    A body that is not the API's error object (a proxy's HTML page, an empty body) still gives
    the exception of the status, with the body's start (or the reason phrase) as the message.
    """
    status = response.status_code
    code: str | None = None
    message: str | None = None
    try:
        body: Any = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        if isinstance(err.get("code"), str):
            code = err["code"]
        if isinstance(err.get("message"), str):
            message = err["message"]
    if message is None:
        text = response.text.strip() if response.content else ""
        message = text[:500] if text else (response.reason_phrase or f"HTTP {status}")
    cls = _BY_STATUS.get(status)
    if cls is None:
        if 500 <= status < 600:
            cls = ServerError
        elif code is not None and code in _BY_CODE:
            cls = _BY_CODE[code]
        else:
            cls = GregorError
    if cls is Unavailable:
        return Unavailable(
            message,
            status=status,
            code=code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    return cls(message, status=status, code=code)
