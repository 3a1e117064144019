"""The repository carries what its code and tests read: nothing is found beside the clone.

The thorough check is `.ci/run`, which runs `make test` from a fresh clone in a directory with
nothing else in it. These are the cheap, fast versions that fail in the unit suite already.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import openai_spec

REPO = Path(__file__).resolve().parent.parent
# Where code lives that runs during `make test`, `make dev` or a deployment.
CODE_DIRS = ("gateway", "tests", "bench", "deploy")


def test_openai_spec_is_read_from_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IRGW_OPENAI_SPEC", raising=False)
    path = openai_spec.spec_path().resolve()
    assert path.is_relative_to(REPO / "tests" / "data"), path
    assert path.is_file(), path


def test_the_spec_override_is_still_honoured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "spec.yaml"
    monkeypatch.setenv("IRGW_OPENAI_SPEC", str(elsewhere))
    assert openai_spec.spec_path() == elsewhere


def _python_files() -> Iterator[Path]:
    for top in CODE_DIRS:
        for path in sorted((REPO / top).rglob("*.py")):
            if not any(part.startswith(".") or part == "__pycache__" for part in path.parts):
                yield path


def _levels_up(node: ast.expr) -> int | None:
    """How many directories above the file an expression like
    ``Path(__file__).resolve().parent.parent`` or ``...parents[2]`` points; None otherwise."""
    ups = 0
    while True:
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            ups += 1
            node = node.value
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
        ):
            ups += node.slice.value + 1
            node = node.value.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"resolve", "absolute"}
        ):
            node = node.func.value
        else:
            break
    is_this_file = (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Path"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id == "__file__"
    )
    return ups if is_this_file and ups else None


def escaping_paths(path: Path, source: str) -> list[str]:
    """Each ``Path(__file__)`` ancestor in ``source`` that lies above the repository's root."""
    depth = len(path.relative_to(REPO).parts)  # a/b/c.py: three steps up is the root
    found = []
    for node in ast.walk(ast.parse(source)):
        ups = _levels_up(node) if isinstance(node, ast.expr) else None
        if ups is not None and ups > depth:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_check_sees_an_ancestor_above_the_repository() -> None:
    # The line the spec helper had before it carried its own copy of the spec.
    before = 'SPEC = Path(__file__).resolve().parents[2] / "shared" / "data"\n'
    assert escaping_paths(REPO / "tests" / "openai_spec.py", before)
    assert escaping_paths(REPO / "tests" / "x.py", "Path(__file__).parent.parent.parent\n")
    # The root itself and below are fine.
    assert not escaping_paths(REPO / "tests" / "x.py", "Path(__file__).resolve().parents[1]\n")
    assert not escaping_paths(REPO / "gateway" / "dev" / "x.py", "Path(__file__).parents[2]\n")


def test_no_code_reaches_above_the_repository_root() -> None:
    found = [
        hit for path in _python_files() for hit in escaping_paths(path, path.read_text())
    ]
    assert found == []
