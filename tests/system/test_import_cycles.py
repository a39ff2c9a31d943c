"""No import cycle among the modules of any meterd package (issue 14: a newcomer reads a
package from its leaves up). Every import counts, at module level, under
``TYPE_CHECKING`` or inside a function (:mod:`tests.layout`); ``supervisors/`` has its own,
stricter layout tests (tests/supervisors/test_layout.py)."""

from __future__ import annotations

import pytest

from tests.layout import ROOT, cycles, described, import_graph, modules

PACKAGES = sorted(
    ".".join(path.parent.relative_to(ROOT).parts)
    for path in (ROOT / "meterd").rglob("__init__.py")
)


def test_every_package_is_checked() -> None:
    assert {"meterd", "meterd.accounts", "meterd.api", "meterd.store"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_the_modules_of_a_package_import_each_other_without_a_cycle(package: str) -> None:
    graph = import_graph(package, modules(package))
    found = cycles(graph)
    assert not found, f"import cycles in {package} (each import, with its line):\n" + described(
        graph, found
    )


def test_a_cycle_through_a_function_import_is_found() -> None:
    import ast

    trees = {
        "a": ast.parse("from meterd.pkg.b import B"),
        "b": ast.parse("def f():\n    from .a import A\n    return A"),
    }
    assert cycles(import_graph("meterd.pkg", trees)) == [["a", "b", "a"]]
