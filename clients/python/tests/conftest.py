"""Fixtures: a real ``gregor serve`` process for the session.

The binary is ``$GREGOR_BIN``, else ``target/release/gregor`` under the repository root. It is
started on a free loopback port with a fresh state directory, and must answer ``GET /health``
with 200 before a deadline (``$GREGOR_SERVE_START_TIMEOUT`` seconds, 60 by default). A missing
binary or a server that does not come up FAILS the tests that use it (never skips them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Server:
    """A running ``gregor serve``."""

    base_url: str
    state_dir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])


def gregor_bin() -> Path:
    env = os.environ.get("GREGOR_BIN")
    path = Path(env) if env else REPO_ROOT / "target" / "release" / "gregor"
    if not path.is_file() or not os.access(path, os.X_OK):
        how = (
            "$GREGOR_BIN"
            if env
            else "target/release/gregor (set GREGOR_BIN, or build it: cargo build --release -p gregor-cli)"
        )
        pytest.fail(
            f"the gregor binary is missing: {path} does not exist or is not executable ({how})", pytrace=False
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), so no server outlives a killed test run. PR_SET_PDEATHSIG
    fires when the *thread* that started the child ends: start servers from the main
    thread."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _start(
    binary: Path, tmp: Path, attempt: int, deadline_s: float, args: list[str], addr: str | None
) -> tuple[Server | None, str]:
    """Starts ``gregor ARGS --http ADDR`` on a free port and waits for ``GET /health`` to be
    200: the server, or ``None`` and why not (the process is stopped then)."""
    state_dir = tmp / "state"
    log = tmp / f"gregor-{attempt}.log"
    addr = addr or f"127.0.0.1:{free_port()}"
    cmd = [str(binary), "--state-dir", str(state_dir), *args, "--http", addr]
    env = dict(os.environ)
    env.setdefault("GREGOR_LOG", "warn")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
    srv = Server(base_url=f"http://{addr}", state_dir=state_dir, log=log, process=proc)
    deadline = time.monotonic() + deadline_s
    last = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            return None, (
                f"`{' '.join(cmd)}` exited with status {code} before answering GET /health:\n{srv.log_tail()}"
            )
        try:
            r = httpx.get(f"{srv.base_url}/health", timeout=2.0)
            if r.status_code == 200:
                return srv, ""
            last = f"HTTP {r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            _stop(proc)
            return None, (
                f"`{' '.join(cmd)}` did not answer GET /health with 200 within {deadline_s:.0f}s "
                f"(last: {last}); its output:\n{srv.log_tail()}"
            )
        time.sleep(0.1)


def start_gregor(tmp: Path, args: list[str], addr: str | None = None) -> Server:
    """``gregor --state-dir TMP/state ARGS --http ADDR`` answering ``GET /health`` with 200;
    the test fails (never skips) when it does not come up. ``ADDR`` is ``addr``, else
    127.0.0.1 on a free port. Stop it with :func:`stop`."""
    binary = gregor_bin()
    deadline_s = float(os.environ.get("GREGOR_SERVE_START_TIMEOUT", "60"))
    why = ""
    for attempt in range(3):
        srv, why = _start(binary, tmp, attempt, deadline_s, args, addr)
        # Another process may take the free port between our probe and the server's bind:
        # try another port then.
        if srv is not None:
            return srv
        if addr is not None or "cannot listen" not in why:
            break
    pytest.fail(why, pytrace=False)


def run_gregor(tmp: Path, args: list[str], stdin: bytes = b"") -> None:
    """Runs ``gregor --state-dir TMP/state ARGS`` to completion; fails the test if it fails."""
    cmd = [str(gregor_bin()), "--state-dir", str(tmp / "state"), *args]
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)
    if r.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.decode(errors='replace')}")


def stop(srv: Server) -> None:
    _stop(srv.process)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """``gregor serve`` with a fresh state directory, for the whole session."""
    tmp = Path(tempfile.mkdtemp(prefix="gregor-client-tests-"))
    srv: Server | None = None
    try:
        srv = start_gregor(tmp, ["serve"])
        yield srv
    finally:
        if srv is not None:
            _stop(srv.process)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def base_url(server: Server) -> str:
    if server.process.poll() is not None:
        pytest.fail(
            f"gregor serve died (status {server.process.returncode}):\n{server.log_tail()}", pytrace=False
        )
    return server.base_url


@pytest.fixture
def unique() -> str:
    """A prefix no other test uses: the tests share one server."""
    return f"t-{uuid.uuid4().hex[:12]}-"
