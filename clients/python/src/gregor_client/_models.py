"""The values the client returns (entries, pages, routing metadata, job state, health) and the
batch operations it takes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Union

from ._errors import ProtocolError
from ._serde import Serde, key_from_json, value_wire_bytes, value_wire_json, value_wire_text

__all__ = [
    "Delete",
    "Entry",
    "Health",
    "JobInfo",
    "KeyMeta",
    "Op",
    "Page",
    "Put",
    "PutJson",
    "RestoreProgress",
    "StoreInfo",
    "TaskInfo",
]


@dataclass(frozen=True)
class Entry:
    """One key and its value from a range.

    ``key`` is decoded through the store's key serde (``str``, ``bytes``, ``int`` or a JSON
    value). The value reads like :meth:`Client.get` and friends: ``value`` (text),
    ``value_bytes``, ``value_json()``.
    """

    key: Any
    wire: Any = field(repr=False)
    """The value as the server rendered it in JSON."""
    value_serde: Serde = field(repr=False)

    @property
    def value(self) -> str:
        """The value as text (UTF-8 decoded for a ``bytes`` value serde)."""
        return value_wire_text(self.value_serde, self.wire)

    @property
    def value_bytes(self) -> bytes:
        """The value's bytes (the stored bytes for a ``bytes`` value serde)."""
        return value_wire_bytes(self.value_serde, self.wire)

    def value_json(self) -> Any:
        """The value parsed as JSON."""
        return value_wire_json(self.value_serde, self.wire)

    def __repr__(self) -> str:
        try:
            shown: object = self.value
        except (UnicodeDecodeError, ValueError):
            shown = self.value_bytes
        return f"Entry(key={self.key!r}, value={shown!r})"


@dataclass(frozen=True)
class Page:
    """One page of a range: its entries (ascending by serialized key) and the cursor of the
    next page (``None`` on the last page). Iterating a page iterates its entries."""

    entries: list[Entry]
    cursor: str | None

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class Put:
    """A batch op: set ``key`` to ``value`` (str as UTF-8 or bytes, as a ``put`` body);
    ``ttl_ms``: expire it that many milliseconds after the write (a store with
    ``stores.<name>.ttl.ms`` only)."""

    key: Any
    value: str | bytes
    ttl_ms: int | None = None


@dataclass(frozen=True)
class PutJson:
    """A batch op: set ``key`` to ``value`` serialized as JSON (like ``put_json``);
    ``ttl_ms`` as for :class:`Put`."""

    key: Any
    value: Any
    ttl_ms: int | None = None


@dataclass(frozen=True)
class Delete:
    """A batch op: delete ``key`` (nothing happens when it does not exist)."""

    key: Any


Op = Union[Put, PutJson, Delete]


@dataclass(frozen=True)
class KeyMeta:
    """Where a key lives (``GET .../keys/{key}/meta``), whether or not it exists."""

    store: str
    partition: int
    task: str
    process_id: int
    process_http: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class StoreInfo:
    """A store of the job, with its serdes."""

    name: str
    key_serde: str
    value_serde: str


@dataclass(frozen=True)
class RestoreProgress:
    records: int
    total: int


@dataclass(frozen=True)
class TaskInfo:
    """A task of the process: ``state`` is ``"restoring"`` (with ``restore`` progress) or
    ``"running"``; ``checkpoint`` is the task's last checkpoint as the server reports it."""

    task: str
    partition: int
    state: str
    restore: RestoreProgress | None
    checkpoint: dict[str, Any] | None


@dataclass(frozen=True)
class JobInfo:
    """``GET /v1/job``: the job, this process, its tasks and the job's stores."""

    job: str
    process_id: int
    processes: int
    tasks: list[TaskInfo]
    stores: list[StoreInfo]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def store(self, name: str) -> StoreInfo | None:
        """The store called ``name``, or ``None``."""
        return next((s for s in self.stores if s.name == name), None)


@dataclass(frozen=True)
class Health:
    """``GET /health``: ``ready`` when every task of the process has restored and runs."""

    ready: bool
    status: str
    retry_after: float | None
    raw: dict[str, Any] = field(repr=False, compare=False)


# ---- parsing replies ---------------------------------------------------------------------


def _field(obj: Any, name: str, typ: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise ProtocolError(f"{what}: field `{name}` missing in {obj!r:.200}")
    v = obj[name]
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is int):
        raise ProtocolError(f"{what}: field `{name}` has an unexpected type: {v!r:.200}")
    return v


def parse_entries(body: Any, key_serde: Serde, value_serde: Serde) -> Page:
    what = "range reply"
    entries_json = _field(body, "entries", list, what)
    cursor = body.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise ProtocolError(f"{what}: `cursor` is not a string or null: {cursor!r:.200}")
    entries = []
    for e in entries_json:
        if not isinstance(e, dict) or "key" not in e or "value" not in e:
            raise ProtocolError(f"{what}: entry without `key` and `value`: {e!r:.200}")
        try:
            key = key_from_json(key_serde, e["key"])
        except ValueError as err:
            raise ProtocolError(f"{what}: {err}") from err
        entries.append(Entry(key=key, wire=e["value"], value_serde=value_serde))
    return Page(entries=entries, cursor=cursor)


def parse_meta(body: Any) -> KeyMeta:
    what = "meta reply"
    process = _field(body, "process", dict, what)
    http = process.get("http")
    return KeyMeta(
        store=_field(body, "store", str, what),
        partition=_field(body, "partition", int, what),
        task=_field(body, "task", str, what),
        process_id=_field(process, "id", int, what),
        process_http=http if isinstance(http, str) else None,
        raw=body,
    )


def parse_job(body: Any) -> JobInfo:
    what = "job reply"
    process = _field(body, "process", dict, what)
    tasks = []
    for t in _field(body, "tasks", list, what):
        restore = t.get("restore") if isinstance(t, dict) else None
        checkpoint = t.get("checkpoint") if isinstance(t, dict) else None
        tasks.append(
            TaskInfo(
                task=_field(t, "task", str, what),
                partition=_field(t, "partition", int, what),
                state=_field(t, "state", str, what),
                restore=RestoreProgress(
                    records=_field(restore, "records", int, what),
                    total=_field(restore, "total", int, what),
                )
                if isinstance(restore, dict)
                else None,
                checkpoint=checkpoint if isinstance(checkpoint, dict) else None,
            )
        )
    stores = [
        StoreInfo(
            name=_field(s, "name", str, what),
            key_serde=_field(s, "key_serde", str, what),
            value_serde=_field(s, "value_serde", str, what),
        )
        for s in _field(body, "stores", list, what)
    ]
    return JobInfo(
        job=_field(body, "job", str, what),
        process_id=_field(process, "id", int, what),
        processes=_field(process, "processes", int, what),
        tasks=tasks,
        stores=stores,
        raw=body,
    )
