"""kronos_db's modules import each other without a cycle, function-level imports included.

A cycle hidden in a function-level import still makes two modules one: neither can be read,
tested or loaded without the other, and which one finishes initialising first depends on who
imported first. So every ``import`` in every kronos_db module counts, at module level, inside a
function or under ``if TYPE_CHECKING:``: a function-level import made for start-up speed is
fine, as long as it does not close a cycle.

How the graph is built (the decisions a reader needs to trust it):

* a node is a module; a package is the node of its ``__init__.py``;
* ``from kronos_db.a import b`` is an edge to ``kronos_db.a.b`` when that is a module, else to
  ``kronos_db.a`` (a name defined there); relative imports are resolved the same way;
* importing ``kronos_db.a.b`` also runs ``kronos_db/a/__init__.py`` first, but that implicit
  edge is *not* drawn: a package's ``__init__`` is the package itself, and one that re-exports
  its own submodules would otherwise make each of them a cycle with it, which is harmless at
  run time (the package is initialised before its submodules, which import their siblings by
  their full name). An explicit import of the package by one of its submodules
  (``from kronos_db.partitions import x`` inside ``kronos_db/partitions/y.py``) *is* drawn, and
  does make a cycle with an ``__init__`` that imports that submodule, because it is one;
* only kronos_db modules are nodes; an import of anything else is not an edge.

The test fails naming every strongly connected component of more than one module, with one
cycle through it spelled out and where each of its imports is.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

from conftest import REPO

PACKAGE = "kronos_db"
ROOT = REPO / PACKAGE

Edge = tuple[str, str, str]  # importer, imported, "path:line"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name ``from <…> import`` names, relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(known: dict[str, Path]) -> Iterator[Edge]:
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = resolve(name, is_package, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in known else source)
            for target in targets:
                # `import kronos_db.a.b` binds kronos_db but runs a.b: the deepest known module
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name and target != PACKAGE:
                    yield name, target, f"{where}:{node.lineno}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion limits are not)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component))
    return found


def a_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first module (breadth-first: a shortest one)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover: an SCC has one


def cycles() -> list[str]:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    where: dict[tuple[str, str], list[str]] = {}
    for importer, imported, place in edges(known):
        graph[importer].add(imported)
        places = where.setdefault((importer, imported), [])
        if place not in places:
            places.append(place)
    problems = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        path = a_cycle(component, graph)
        steps = "; ".join(
            f"{a} -> {b} ({', '.join(where[a, b])})" for a, b in itertools.pairwise(path)
        )
        problems.append(f"{len(component)} modules: {', '.join(component)}\n    e.g. {steps}")
    return problems


def test_no_import_cycle_among_kronos_db_modules() -> None:
    problems = cycles()
    assert not problems, "import cycles (function-level imports count):\n" + "\n".join(
        f"  {problem}" for problem in problems
    )


def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The detector itself: a cycle closed only inside a function, through a relative import,
    is found; a package __init__ re-exporting its submodule is not a cycle."""
    known = {
        "kronos_db.a": tmp_path / "a.py",
        "kronos_db.b": tmp_path / "b.py",
        "kronos_db.p": tmp_path / "p" / "__init__.py",
        "kronos_db.p.q": tmp_path / "p" / "q.py",
    }
    sources = {
        "kronos_db.a": "from kronos_db import b\n",
        "kronos_db.b": "def f():\n    from . import a\n",
        "kronos_db.p": "from kronos_db.p.q import x\n",
        "kronos_db.p.q": "import kronos_db.b\nx = 1\n",
    }
    for name, path in known.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sources[name])
    found = {(a, b) for a, b, _ in edges(known)}
    assert ("kronos_db.b", "kronos_db.a") in found
    assert ("kronos_db.p", "kronos_db.p.q") in found
    graph: dict[str, set[str]] = {name: set() for name in known}
    for a, b in found:
        graph[a].add(b)
    big = [c for c in strongly_connected(graph) if len(c) > 1]
    assert big == [["kronos_db.a", "kronos_db.b"]]
