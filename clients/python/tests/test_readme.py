"""The README's Python examples run against the real server (``http://127.0.0.1:8080`` in
them is replaced by the test server's address)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gregor_client import Client

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5
    assert 'kv.put("key1", "value1"); assert kv.get("key1") == "value1"; kv.delete("key1")' in BLOCKS[0]


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_readme_example_runs(n: int, base_url: str) -> None:
    code = BLOCKS[n].replace("http://127.0.0.1:8080", base_url)
    with Client(base_url, store="kv") as kv:
        kv.put("key1", "value1")  # what the examples after the first one read
        scope: dict[str, Any] = {"kv": kv, "url": base_url, "__name__": f"readme_{n}"}
        exec(compile(code, f"README.md python block {n}", "exec"), scope)
