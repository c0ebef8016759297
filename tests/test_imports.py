"""The import graph of swarmmesh has no circles, counting imports under `TYPE_CHECKING` and
inside functions: a part that needs its orchestrator gets a `component.Node`, never an import
of orchestrator.py, and lower modules never reach up."""

from __future__ import annotations

import ast
from pathlib import Path

import swarmmesh

PACKAGE = Path(swarmmesh.__file__).parent


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The swarmmesh modules `path` imports anywhere in its text."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):  # `import queue` is the standard library's, not ours
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("swarmmesh."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "swarmmesh":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("swarmmesh."):
                found.add(node.module.split(".")[1])
    return found & modules


def import_graph() -> dict[str, set[str]]:
    files = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (as a path that ends where it starts), or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        for dep in sorted(graph[name]):
            cycle = visit(dep, [*path, name])
            if cycle:
                return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name, [])
        if cycle:
            return cycle
    return None


def test_swarmmesh_has_no_import_circle():
    graph = import_graph()
    assert "orchestrator" in graph and "component" in graph["broker"]  # the walk sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_module_but_the_cli_imports_the_orchestrator():
    assert {name for name, deps in import_graph().items() if "orchestrator" in deps} == {"cli"}


def test_find_cycle_finds_one_through_type_checking(tmp_path):
    (tmp_path / "a.py").write_text("from typing import TYPE_CHECKING\n"
                                   "if TYPE_CHECKING:\n    from swarmmesh.b import X\n")
    (tmp_path / "b.py").write_text("import a\nfrom b import c\ndef f():\n    from swarmmesh import a\n")
    graph = {p.stem: imports_of(p, {"a", "b"}) for p in tmp_path.glob("*.py")}
    assert graph == {"a": {"b"}, "b": {"a"}}  # `import a`: not swarmmesh's
    assert find_cycle(graph) == ["a", "b", "a"]
