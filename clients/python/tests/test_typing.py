"""``mypy --strict`` over the package and its tests (the package ships ``py.typed``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_mypy_strict() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "src", "tests"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"mypy --strict failed:\n{r.stdout}{r.stderr}"


def test_py_typed_is_shipped() -> None:
    import gregor_client

    assert (Path(gregor_client.__file__).parent / "py.typed").is_file()
