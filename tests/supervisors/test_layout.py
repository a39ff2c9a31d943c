"""``supervisors/`` stands alone: how its modules depend on each other, read from the source.

* The import graph of its modules has no cycle, counting every import: at module
  level, under ``TYPE_CHECKING``, and inside functions (an import moved into a
  function still ties the two modules together, only later).
* No module imports the package itself (``supervisors/__init__.py`` is the facade
  for users) or the application built on it.
* No module uses another module's private names (``_name``) except the members of
  the declared protocols (the ``Protocol`` classes of ``_protocols`` and
  ``_dispatch``): an object's own members (``self._x``, ``super()._x``) and names
  defined in the module itself are its own business.
* Each module imports on its own, without the package's ``__init__`` run first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "supervisors"


def modules() -> dict[str, ast.Module]:
    """Module name (``_actor``) -> its syntax tree; ``__init__`` left out."""
    return {
        path.stem: ast.parse(path.read_text(), filename=str(path))
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__init__"
    }


def imported(name: str, tree: ast.Module, known: set[str]) -> Iterator[tuple[str, int]]:
    """``(module, line)`` of every sibling module ``tree`` imports, wherever the import
    is; ``__init__`` for an import of the package itself."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
                if base != "supervisors" and not base.startswith("supervisors."):
                    continue
                parts = base.split(".")[1:]
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
                if parts[0] == "supervisors":
                    yield (
                        (parts[1] if len(parts) > 1 and parts[1] in known else "__init__"),
                        (node.lineno),
                    )


def import_graph(trees: dict[str, ast.Module]) -> dict[str, dict[str, int]]:
    known = set(trees)
    graph: dict[str, dict[str, int]] = {}
    for name, tree in trees.items():
        graph[name] = {}
        for target, line in imported(name, tree, known):
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


def protocol_members(trees: dict[str, ast.Module]) -> set[str]:
    members: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                (isinstance(b, ast.Name) and b.id == "Protocol")
                or (isinstance(b, ast.Attribute) and b.attr == "Protocol")
                for b in node.bases
            ):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        members.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        members.add(item.target.id)
    return members


def defined_here(tree: ast.Module) -> set[str]:
    """Names a module defines: functions, classes, assignments (to names, and to
    attributes of anything), ``__slots__`` entries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
            and isinstance(node.value, ast.Tuple | ast.List)
        ):
            names.update(
                e.value
                for e in node.value.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            )
    return names


def _own(value: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: the object's own members."""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "super"
    )


def reach_ins(trees: dict[str, ast.Module]) -> list[str]:
    """``module:line: expression`` of every use of another module's private name."""
    allowed = protocol_members(trees)
    found: list[str] = []
    for name, tree in trees.items():
        mine = defined_here(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                attr = node.attr
                if not attr.startswith("_") or attr.startswith("__") or _own(node.value):
                    continue
                if attr not in mine and attr not in allowed:
                    found.append(f"{name}.py:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name not in allowed:
                        found.append(
                            f"{name}.py:{node.lineno}: from .{node.module} import {alias.name}"
                        )
    return found


# ---- the tests -------------------------------------------------------------------------


def test_the_import_graph_of_supervisors_has_no_cycle() -> None:
    graph = import_graph(modules())
    found = cycles(graph)
    assert not found, "import cycles in supervisors/ (each import, with its line):\n" + "\n".join(
        " -> ".join(
            f"{a} (line {graph[a][b]})" if b else a
            for a, b in zip(cycle, [*cycle[1:], ""], strict=True)
        )
        for cycle in found
    )


def test_no_module_imports_the_package_or_the_application() -> None:
    trees = modules()
    graph = import_graph(trees)
    into_package = [
        f"{m}.py:{line}" for m, deps in graph.items() for t, line in deps.items() if t == "__init__"
    ]
    assert not into_package, f"modules importing the supervisors package itself: {into_package}"
    application = [
        f"{name}.py:{node.lineno}"
        for name, tree in trees.items()
        for node in ast.walk(tree)
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("meterd")
        )
        or (isinstance(node, ast.Import) and any(a.name.startswith("meterd") for a in node.names))
    ]
    assert not application, f"supervisors/ imports meterd: {application}"


def test_no_module_uses_another_modules_private_names_outside_the_protocols() -> None:
    found = reach_ins(modules())
    assert not found, (
        "private names of another module (make them public, or declare them in a "
        "protocol of _protocols.py):\n" + "\n".join(found)
    )


def test_the_checks_see_what_they_look_for() -> None:
    """The checks above, on a made-up package: they find a cycle hidden in a function and
    under TYPE_CHECKING, and a private name reached into."""
    trees = {
        "_a": ast.parse(
            "from ._b import B\nclass A:\n    def f(self, b):\n        return b._secret"
        ),
        "_b": ast.parse(
            "from typing import TYPE_CHECKING, Protocol\n"
            "if TYPE_CHECKING:\n    from ._c import C\n"
            "class P(Protocol):\n    def _hook(self): ...\n"
            "class B:\n    _secret = 1\n    def g(self, x):\n        return x._hook()"
        ),
        "_c": ast.parse("def h():\n    from ._a import A\n    return A"),
    }
    assert cycles(import_graph(trees)) == [["_a", "_b", "_c", "_a"]]
    assert reach_ins(trees) == ["_a.py:4: b._secret"]


def test_each_module_imports_on_its_own() -> None:
    """Without the facade (``__init__``) run first, and with no other module of the
    package loaded before it, so that no import leans on another's having run."""
    script = (
        "import importlib, sys, traceback, types\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'supervisors']:\n"
        "        del sys.modules[loaded]\n"
        "    pkg = types.ModuleType('supervisors')\n"
        f"    pkg.__path__ = [{str(PACKAGE)!r}]\n"
        "    sys.modules['supervisors'] = pkg\n"
        "    try:\n"
        "        importlib.import_module('supervisors.' + name)\n"
        "    except Exception as error:\n"
        "        print(f'{name}: {error!r}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *modules()], capture_output=True, text=True, check=True
    )
    assert done.stdout == "", done.stdout
