"""Keys and values rendered through a store's serdes, as docs/http-api.md specifies.

=============  =====================================  ==========================================
serde          key in a URL path or query             key / value in JSON
=============  =====================================  ==========================================
``string``     the string, percent-encoded            JSON string
``bytes``      base64url without padding              standard base64 with padding
``u64/i64``    decimal                                JSON number
``json``       the JSON text, percent-encoded         the JSON value itself
``postcard``   base64url without padding (raw bytes)  standard base64 (raw bytes)
=============  =====================================  ==========================================

Python types of keys, by key serde (what methods accept and what :class:`Entry.key` holds):
``string`` -> ``str``; ``bytes``/``postcard`` -> ``bytes`` (a ``str`` argument is taken as its
UTF-8); ``u64``/``i64`` -> ``int``; ``json`` -> any JSON-serializable value.

Values: a value's *bytes* are what a ``PUT`` body carries (raw bytes for ``bytes``/``postcard``,
UTF-8 text for ``string``, JSON text for ``json``, decimal text for ``u64``/``i64``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal, Union, cast, get_args
from urllib.parse import quote

Serde = Literal["string", "bytes", "u64", "i64", "json", "postcard"]
SERDES: tuple[str, ...] = get_args(Serde)

Key = Union[str, bytes, int, float, bool, None, list[Any], dict[str, Any]]
"""A key: ``str`` for ``string`` keys, ``bytes`` for ``bytes``/``postcard``, ``int`` for
``u64``/``i64``, any JSON value for ``json`` (see the module docs)."""

_U64 = (0, 2**64 - 1)
_I64 = (-(2**63), 2**63 - 1)


def check_serde(name: str, what: str) -> Serde:
    if name not in SERDES:
        raise ValueError(f"unknown {what} serde {name!r} (one of {', '.join(SERDES)})")
    return cast(Serde, name)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _as_bytes(key: object, serde: str) -> bytes:
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, str):
        return key.encode("utf-8")
    raise TypeError(f"a `{serde}` key is bytes (or str, taken as UTF-8), not {type(key).__name__}")


def _as_int(key: object, serde: str) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"a `{serde}` key is an int, not {type(key).__name__}")
    n = int(key)
    lo, hi = _U64 if serde == "u64" else _I64
    if not lo <= n <= hi:
        raise ValueError(f"key {n} is out of range for `{serde}` ({lo}..={hi})")
    return n


def key_text(serde: Serde, key: object) -> str:
    """The key as it goes in a URL path segment or query value, before percent-encoding."""
    if serde == "string":
        if isinstance(key, str):
            return key
        if isinstance(key, (bytes, bytearray)):
            return bytes(key).decode("utf-8")
        raise TypeError(f"a `string` key is a str, not {type(key).__name__}")
    if serde in ("bytes", "postcard"):
        return base64.urlsafe_b64encode(_as_bytes(key, serde)).rstrip(b"=").decode("ascii")
    if serde in ("u64", "i64"):
        return str(_as_int(key, serde))
    return _compact_json(key)  # json


def key_segment(serde: Serde, key: object) -> str:
    """The key as one percent-encoded URL path segment (``/`` included is encoded).

    An empty key (``""``, ``b""``) renders as an empty segment, which the API cannot route
    (``/keys/`` is another path): refused with ``ValueError``."""
    text = key_text(serde, key)
    if not text:
        raise ValueError("an empty key cannot be addressed in a URL path (GET/PUT/DELETE .../keys/{key})")
    if text in (".", ".."):
        # Dot segments would be removed from the path (RFC 3986 §5.2.4) before sending.
        return text.replace(".", "%2E")
    return quote(text, safe="")


def prefix_text(serde: Serde, prefix: object) -> str:
    """A range ``prefix`` as its query value: rendered like a key. It selects the keys whose
    serialized bytes start with the prefix's serialized bytes: a true prefix for ``string``
    and ``bytes`` keys; for ``u64``/``i64`` (fixed 8 bytes) and ``json`` keys (a whole JSON
    value) it selects only keys serializing to the same bytes, so use ``from_``/``to`` there."""
    return key_text(serde, prefix)


def key_to_json(serde: Serde, key: object) -> Any:
    """The key as it goes in a JSON body (batch ops)."""
    if serde == "string":
        return key_text(serde, key)
    if serde in ("bytes", "postcard"):
        return base64.b64encode(_as_bytes(key, serde)).decode("ascii")
    if serde in ("u64", "i64"):
        return _as_int(key, serde)
    return key


def _b64decode(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected a base64 string, got {type(text).__name__}")
    try:
        # Lenient about missing padding; strict about the alphabet.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{what}: not standard base64 ({e})") from e


def key_from_json(serde: Serde, wire: Any) -> Any:
    """A key from a JSON reply (range entries)."""
    if serde == "string":
        if not isinstance(wire, str):
            raise ValueError(f"a `string` key in JSON is a string, got {wire!r}")
        return wire
    if serde in ("bytes", "postcard"):
        return _b64decode(wire, f"a `{serde}` key")
    if serde in ("u64", "i64"):
        if isinstance(wire, bool) or not isinstance(wire, int):
            raise ValueError(f"a `{serde}` key in JSON is a number, got {wire!r}")
        return wire
    return wire


def value_to_bytes(value: str | bytes | bytearray | memoryview) -> bytes:
    """A ``put`` value as the request body: str as UTF-8, bytes as they are."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a value is str or bytes (put_json for other types), not {type(value).__name__}")


def value_to_json(serde: Serde, raw: bytes) -> Any:
    """A value given as its bytes (a PUT body) rendered for a JSON body (batch ops)."""
    if serde in ("bytes", "postcard"):
        return base64.b64encode(raw).decode("ascii")
    text = raw.decode("utf-8")
    if serde == "string":
        return text
    if serde == "json":
        return json.loads(text)
    try:
        return _as_int(text.strip(), serde)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a `{serde}` value is a decimal integer, got {text!r}") from e


def value_wire_bytes(serde: Serde, wire: Any) -> bytes:
    """A JSON-rendered value as bytes: the stored bytes for ``bytes``/``postcard``, the UTF-8
    of the text form (:func:`value_wire_text`) for the others."""
    if serde in ("bytes", "postcard"):
        return _b64decode(wire, f"a `{serde}` value")
    return value_wire_text(serde, wire).encode("utf-8")


def value_wire_text(serde: Serde, wire: Any) -> str:
    """A JSON-rendered value as text: UTF-8 decoded for ``bytes``/``postcard`` (a
    ``UnicodeDecodeError`` when it is not UTF-8), the string for ``string``, the compact JSON
    text for ``json``, decimal for ``u64``/``i64``."""
    if serde in ("bytes", "postcard"):
        return value_wire_bytes(serde, wire).decode("utf-8")
    if serde == "string":
        if not isinstance(wire, str):
            raise ValueError(f"a `string` value in JSON is a string, got {wire!r}")
        return wire
    if serde == "json":
        return _compact_json(wire)
    return str(wire)


def value_wire_json(serde: Serde, wire: Any) -> Any:
    """A JSON-rendered value parsed as JSON: the value itself for ``json`` and the integer
    serdes, ``json.loads`` of the text for ``string``/``bytes``/``postcard``."""
    if serde in ("json", "u64", "i64"):
        return wire
    return json.loads(value_wire_text(serde, wire))
