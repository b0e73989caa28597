"""A ``gregor serve`` killed with SIGKILL and restarted on the same address: the client
retries through the restart, and every acknowledged write is there afterwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gregor_client import Client, ConnectionFailed, Put

from .conftest import Server, start_gregor, stop


def test_acknowledged_writes_survive_sigkill_and_the_client_retries_through_the_restart(
    tmp_path: Path,
) -> None:
    srv = start_gregor(tmp_path, ["serve"])
    addr = srv.base_url.removeprefix("http://")
    restarted: list[Server] = []
    try:
        keys = [f"k{i:04d}" for i in range(500)]
        with Client(srv.base_url, retries=40, backoff=0.05, max_backoff=0.5) as kv:
            assert kv.batch(Put(k, f"v-{k}") for k in keys) == len(keys)
            kv.put("last", "acknowledged")
            srv.process.kill()
            srv.process.wait()
            with pytest.raises(ConnectionFailed):
                kv.get("last", retries=0)

            # The read runs in another thread while this one restarts the server (from the
            # main thread: the server dies with the thread that started it, see conftest.py).
            answers: list[object] = []

            def read() -> None:
                try:
                    answers.append(kv.get("last"))
                except Exception as e:  # reported below
                    answers.append(e)

            reader = threading.Thread(target=read)
            start = time.monotonic()
            reader.start()
            time.sleep(0.5)
            restarted.append(start_gregor(tmp_path, ["serve"], addr=addr))
            reader.join(timeout=60)
            # Connection refused (and 503 while the tasks restore) were retried.
            assert answers == ["acknowledged"]
            assert time.monotonic() - start >= 0.5
            assert restarted, "gregor serve did not restart (see the failure above)"
            got = [(e.key, e.value) for e in kv.range(page_size=128).entries()]
            assert got == [(k, f"v-{k}") for k in keys] + [("last", "acknowledged")]
    finally:
        stop(srv)
        for s in restarted:
            stop(s)
