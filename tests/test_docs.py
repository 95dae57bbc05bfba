"""Every ```python block in README.md and docs/*.md runs as written (the blocks of one file run
in order, in one namespace, as a reader would paste them)."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_code_blocks_run(path, capsys):
    blocks = python_blocks(path)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for k, block in enumerate(blocks):
        try:
            exec(compile(block, f"{path.name}[block {k}]", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 -- report which block failed
            pytest.fail(f"{path.name}, python block {k} failed: {type(err).__name__}: {err}\n{block}")


def test_the_docs_have_code():
    assert sum(len(python_blocks(p)) for p in FILES) >= 8
