"""The layout stays as docs/ARCHITECTURE.md draws it: no import cycles between the
package's modules, and no module of the package past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "rollout"
PACKAGES = {"rollout": SRC, "conformance": SRC.parents[1] / "conformance" / "src" / "conformance"}
MAX_LINES = 420


def _module_name(root: str, base: Path, path: Path) -> str:
    parts = [root, *path.relative_to(base).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(root: str, base: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports at import time (imports inside
    functions are left out: they do not make cycles at import time)."""
    graph: dict[str, set[str]] = {}
    for path in base.rglob("*.py"):
        name = _module_name(root, base, path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    target = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if target.startswith(root):
                    found.add(target)
                    found.update(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith(root))
        graph[name] = found
    return {
        name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return [*stack[stack.index(child) :], child]
            if child not in state and (found := visit(child)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    for root, base in PACKAGES.items():
        graph = _imports(root, base)
        # A package's __init__ re-exports its submodules: edges from it are not cycles.
        for name in graph:
            graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
        assert _cycle(graph) is None, f"{root}: {' -> '.join(_cycle(graph) or [])}"


def test_no_module_is_too_long() -> None:
    long = [
        f"{path.relative_to(base.parent)}: {count} lines"
        for base in PACKAGES.values()
        for path in base.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert long == []
