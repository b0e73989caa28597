"""Python client for gregor's HTTP API.

Reads of any store of a running gregor job (``gregor run --http``) and the key-value service
(``gregor serve``: reads and writes), as specified in the repository's ``docs/http-api.md``::

    from gregor_client import Client

    with Client("http://127.0.0.1:8080", store="kv") as kv:
        kv.put("key1", "value1")
        assert kv.get("key1") == "value1"
        kv.delete("key1")

:class:`AsyncClient` has the same API for asyncio. Errors are :class:`GregorError`
subclasses (:class:`NotFound`, :class:`Unavailable`, :class:`BadRequest`, ...).
"""

from ._async import AsyncClient, AsyncRangePages
from ._core import TimeoutArg
from ._errors import (
    BadRequest,
    ConnectionFailed,
    GregorError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    ServerError,
    Timeout,
    TransportError,
    Unavailable,
)
from ._models import (
    Delete,
    Entry,
    Health,
    JobInfo,
    KeyMeta,
    Op,
    Page,
    Put,
    PutJson,
    RestoreProgress,
    StoreInfo,
    TaskInfo,
)
from ._serde import Key, Serde
from ._sync import Client, RangePages

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncRangePages",
    "BadRequest",
    "Client",
    "ConnectionFailed",
    "Delete",
    "Entry",
    "GregorError",
    "Health",
    "JobInfo",
    "Key",
    "KeyMeta",
    "MethodNotAllowed",
    "NotFound",
    "Op",
    "Page",
    "PayloadTooLarge",
    "ProtocolError",
    "Put",
    "PutJson",
    "RangePages",
    "RestoreProgress",
    "Serde",
    "ServerError",
    "StoreInfo",
    "TaskInfo",
    "Timeout",
    "TimeoutArg",
    "TransportError",
    "Unavailable",
]
