"""Every ```python block in README.md and docs/*.md runs as written (the blocks of one file run
in order, in one namespace, as a reader would paste them)."""

from __future__ import annotations

import pathlib
import re
import shlex

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


def flowsolve_commands(path: pathlib.Path) -> list[str]:
    """The `flowsolve ...` lines of the ```sh blocks."""
    blocks = re.findall(r"^```sh\n(.*?)^```", path.read_text(), flags=re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("flowsolve")]


def _marks(command: str):
    args = shlex.split(command)
    # the default suite and the wide worked example take 10-45 s: run with `pytest -m slow`
    slow = args[1:2] == ["bench"] and (len(args) == 2 or len(args[args.index("--solvers") + 1].split(",")) > 5
                                       if "--solvers" in args else len(args) == 2)
    return [pytest.mark.slow] if slow else []


COMMANDS = [pytest.param(p, c, id=f"{p.name}: {c[:60]}", marks=_marks(c)) for p in FILES for c in flowsolve_commands(p)]


@pytest.mark.parametrize("path, command", COMMANDS)
def test_flowsolve_commands_run(path, command, tmp_path, monkeypatch, capsys):
    from flowsolve import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWSOLVE_CACHE", str(tmp_path / "cache"))
    code = cli.main(shlex.split(command)[1:])
    assert code == 0, f"{path.name}: `{command}` exited {code}: {capsys.readouterr().err}"


def test_the_docs_show_the_commands():
    assert any("flowsolve bench" in c for c in flowsolve_commands(ROOT / "docs" / "bench.md"))
