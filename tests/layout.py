"""How a package's modules import each other, read from the source (for the layout tests
of ``supervisors/`` and of meterd's packages).

Every import counts: at module level, under ``TYPE_CHECKING`` and inside functions (an
import moved into a function still ties the two modules together, only later).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(package: str) -> dict[str, ast.Module]:
    """Module name (``_actor``) -> its syntax tree, for the dotted ``package``'s own
    modules (not its subpackages); ``__init__`` left out."""
    folder = ROOT.joinpath(*package.split("."))
    return {
        path.stem: ast.parse(path.read_text(), filename=str(path))
        for path in sorted(folder.glob("*.py"))
        if path.stem != "__init__"
    }


def imported(package: str, tree: ast.Module, known: set[str]) -> Iterator[tuple[str, int]]:
    """``(module, line)`` of every sibling module ``tree`` imports, wherever the import
    is; ``__init__`` for an import of the package itself."""
    prefix = package.split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[: len(prefix)] != prefix:
                    continue
                parts = parts[len(prefix) :]
            elif node.level == 1:
                parts = (node.module or "").split(".") if node.module else []
            else:
                continue
            if parts:
                yield (parts[0] if parts[0] in known else "__init__"), node.lineno
            else:  # from . import x
                for alias in node.names:
                    yield (alias.name if alias.name in known else "__init__"), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[: len(prefix)] == prefix:
                    rest = parts[len(prefix) :]
                    yield (rest[0] if rest and rest[0] in known else "__init__"), node.lineno


def import_graph(package: str, trees: dict[str, ast.Module]) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: the line of the first such import}."""
    known = set(trees)
    graph: dict[str, dict[str, int]] = {}
    for name, tree in trees.items():
        graph[name] = {}
        for target, line in imported(package, tree, known):
            if target != name:
                graph[name].setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each strongly connected part of ``graph`` that has one."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def described(graph: dict[str, dict[str, int]], found: list[list[str]]) -> str:
    """The cycles, each import with its line."""
    return "\n".join(
        " -> ".join(
            f"{a} (line {graph[a][b]})" if b else a
            for a, b in zip(cycle, [*cycle[1:], ""], strict=True)
        )
        for cycle in found
    )
