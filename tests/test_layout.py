"""The package's shape: imports flow one way, modules stay small and say what they are."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vastrpc"
GENERATED = PACKAGE / "api"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if GENERATED in path.parents:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imported(name: str, path: Path) -> Iterator[str]:
    """Every vastrpc module ``name`` imports, wherever the import stands (TYPE_CHECKING and functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import module`` imports the module; ``from module import name`` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "vastrpc.api" or target.startswith("vastrpc.api."):
                continue  # generated stubs import nothing of ours
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: set(_imported(name, path)) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import circle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_walk_sees_type_only_and_local_imports() -> None:
    # _mode.py imports the definitions only under TYPE_CHECKING, and definition.py imports
    # client.output there and inside a method: the walk must see both.
    assert "vastrpc.definition" in GRAPH["vastrpc._mode"]
    assert "vastrpc.client.output" in GRAPH["vastrpc.definition"]


def test_no_import_circle_in_the_package() -> None:
    cycle = _cycle()
    assert cycle is None, "import circle: " + " → ".join(cycle or [])


@pytest.mark.parametrize("layer", ["vastrpc.deploy", "vastrpc.serve", "vastrpc.client", "vastrpc.control"])
def test_lower_layers_never_import_the_sdk_front(layer: str) -> None:
    front = {"vastrpc.deployment", "vastrpc.function", "vastrpc", "vastrpc.testing", "vastrpc.cli"}
    offenders = {
        name: sorted(GRAPH[name] & front)
        for name in GRAPH
        if (name == layer or name.startswith(layer + ".")) and GRAPH[name] & front
    }
    assert offenders == {}


def test_the_control_service_never_imports_deploy_mode() -> None:
    offenders = {
        name: sorted(t for t in GRAPH[name] if t.startswith(("vastrpc.deploy.", "vastrpc.client.")))
        for name in GRAPH
        if name.startswith("vastrpc.control")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_opens_with_a_docstring_and_stays_small(name: str) -> None:
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    docstring = ast.get_docstring(tree)
    assert docstring, f"{path.relative_to(ROOT)} has no module docstring"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by concern (limit {MAX_LINES})"


def test_no_asyncio_wait_for_in_the_package() -> None:
    # Python 3.11's wait_for can swallow a cancellation that lands as its awaitable finishes:
    # a watch task that missed its cancel kept a deploy waiting forever. asyncio.timeout cannot.
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "wait_for"
        and isinstance(node.value, ast.Name)
        and node.value.id == "asyncio"
    ]
    assert offenders == [], f"use `async with asyncio.timeout(...)` instead of asyncio.wait_for: {offenders}"
