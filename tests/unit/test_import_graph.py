"""The import graph of memring's source packages, read with `ast` (nothing is imported).

Every import counts: at module level, under `if TYPE_CHECKING:`, and inside functions (a lazy
import still makes the importer depend on the module). Relative imports are resolved, and
`from memring.x import y` is an arrow to `memring.x.y` when that is a module, else to
`memring.x`. Asserted: no cycle among modules (the message gives each cycle's path, every
arrow with its line and kind); the package arrows of docs (protocol and netio import nothing
of the project, cluster only those two, backend and proxy only those three and never each
other); no import of a bare top-level `proxy`, `backend`, ... (always `memring.`); and no
test module imports another test module (shared code lives in tests/helpers/).
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ROOT = "memring"
PACKAGES = ("protocol", "netio", "cluster", "backend", "proxy")
# What each package may import of the project besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "netio": frozenset(),
    "cluster": frozenset({"protocol", "netio"}),
    "backend": frozenset({"protocol", "netio", "cluster"}),
    "proxy": frozenset({"protocol", "netio", "cluster"}),
}


@dataclass(frozen=True)
class Arrow:
    """`source` imports `target` (both dotted module names) on `line`."""

    source: str
    target: str
    line: int
    kind: str  # "module level", "TYPE_CHECKING" or "in a function"

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line}, {self.kind})"


@dataclass(frozen=True)
class Statement:
    """One import as written: the absolute dotted name it names, and the names it takes."""

    module: str
    names: tuple[str, ...]  # from-import names; () for `import x.y`
    line: int
    kind: str


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([ROOT, *parts])


def source_modules(root: Path = REPO / ROOT) -> dict[str, Path]:
    """Dotted name -> file, for every module of the five packages (memring/<pkg> links to the
    top-level folder, so the names are the installed ones)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path, root)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.kinds = ["module level"]
        self.found: list[Statement] = []

    def _absolute(self, node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        parts = self.package.split(".")
        base = parts[:len(parts) - (node.level - 1)]
        return ".".join([*base, node.module] if node.module else base)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(Statement(alias.name, (), node.lineno, self.kinds[-1]))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = tuple(alias.name for alias in node.names)
        self.found.append(Statement(self._absolute(node), names, node.lineno, self.kinds[-1]))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.kinds.append("TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self.kinds.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.kinds.append("in a function")
        self.generic_visit(node)
        self.kinds.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function


def imports_of(module: str, path: Path) -> list[Statement]:
    visitor = _Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def arrows(modules: dict[str, Path]) -> list[Arrow]:
    """Every import of one project module by another (itself excluded)."""
    out = []
    for source, path in modules.items():
        for statement in imports_of(source, path):
            targets = [f"{statement.module}.{name}" for name in statement.names
                       if f"{statement.module}.{name}" in modules]
            if len(targets) < len(statement.names) or not statement.names:
                targets.append(statement.module)  # an attribute of it, or `import x.y`
            for target in targets:
                if target in modules and target != source:
                    out.append(Arrow(source, target, statement.line, statement.kind))
    return out


def package_of(module: str) -> str:
    return module.split(".")[1]


# --- cycles -----------------------------------------------------------------------------------


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components (iterative), each sorted; only those that hold a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def shortest_cycle_through(node: str, graph: dict[str, set[str]], within: set[str]
                           ) -> list[str]:
    """[node, ..., node]: a shortest way back to `node` inside its component (BFS)."""
    previous: dict[str, str] = {}
    queue = deque([node])
    while queue:
        current = queue.popleft()
        for successor in sorted(graph[current] & within):
            if successor == node:
                path = [current]
                while path[-1] != node:
                    path.append(previous[path[-1]])
                return [node, *reversed(path[:-1]), node]
            if successor not in previous:
                previous[successor] = current
                queue.append(successor)
    raise AssertionError(f"{node} is in a component but on no cycle")


def cycles(found: list[Arrow]) -> list[list[Arrow]]:
    """For every component with a cycle, a shortest cycle through each of its members
    (rotations of the same cycle reported once), as the arrows that make it."""
    graph: dict[str, set[str]] = {}
    first: dict[tuple[str, str], Arrow] = {}
    for arrow in found:
        graph.setdefault(arrow.source, set()).add(arrow.target)
        graph.setdefault(arrow.target, set())
        first.setdefault((arrow.source, arrow.target), arrow)
    out: list[list[Arrow]] = []
    seen: set[tuple[str, ...]] = set()
    for component in strongly_connected(graph):
        for node in component:
            path = shortest_cycle_through(node, graph, set(component))
            ring = path[:-1]
            turn = ring.index(min(ring))
            key = tuple(ring[turn:] + ring[:turn])
            if key not in seen:
                seen.add(key)
                out.append([first[pair] for pair in itertools.pairwise(path)])
    return out


def describe(cycle: list[Arrow]) -> str:
    names = " -> ".join([cycle[0].source, *(arrow.target for arrow in cycle)])
    return names + "\n" + "\n".join(f"    {arrow}" for arrow in cycle)


# --- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return source_modules()


@pytest.fixture(scope="module")
def graph(modules: dict[str, Path]) -> list[Arrow]:
    return arrows(modules)


def test_every_package_is_read(modules: dict[str, Path], graph: list[Arrow]) -> None:
    """The walk finds the packages (through the memring/ links) and their imports, so the
    checks below cannot pass on an empty graph."""
    for package in PACKAGES:
        assert f"{ROOT}.{package}" in modules, package
        assert sum(package_of(m) == package for m in modules) > 1, package
    # (the source has no TYPE_CHECKING import left; the fake package below checks they count)
    assert any(a.kind == "in a function" for a in graph)
    assert any(package_of(a.source) != package_of(a.target) for a in graph)


def test_the_reader_resolves_what_python_would(tmp_path: Path) -> None:
    package = tmp_path / ROOT / "proxy"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__", "a", "b", "c", "sub/__init__", "sub/d"):
        (package / f"{name}.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"                      # a sibling module
        "from .sub import d, helper\n"           # a submodule, and an attribute of sub
        "from memring.proxy import c as see\n"   # a submodule by its absolute name
        "if TYPE_CHECKING:\n"
        "    from memring.proxy.sub.d import Thing\n"
        "def later():\n"
        "    import memring.proxy.b\n")
    (package / "sub" / "d.py").write_text("from ..a import x\nfrom ... import proxy\n")
    read = arrows(source_modules(tmp_path / ROOT))
    found = {(a.source, a.target, a.kind) for a in read}
    p = f"{ROOT}.proxy"
    assert found == {
        (f"{p}.a", f"{p}.b", "module level"),
        (f"{p}.a", f"{p}.sub.d", "module level"),
        (f"{p}.a", f"{p}.sub", "module level"),
        (f"{p}.a", f"{p}.c", "module level"),
        (f"{p}.a", f"{p}.sub.d", "TYPE_CHECKING"),
        (f"{p}.a", f"{p}.b", "in a function"),
        (f"{p}.sub.d", f"{p}.a", "module level"),
        (f"{p}.sub.d", p, "module level"),
    }
    assert [[a.source for a in c] for c in cycles(read)] == [
        [f"{p}.a", f"{p}.sub.d"]]


def test_package_arrows(graph: list[Arrow]) -> None:
    wrong = [f"{package_of(a.source)} may not import {package_of(a.target)}: {a}"
             for a in graph
             if package_of(a.target) != package_of(a.source)
             and package_of(a.target) not in ALLOWED[package_of(a.source)]]
    assert not wrong, "\n" + "\n".join(wrong)


def test_project_imports_go_through_memring(modules: dict[str, Path]) -> None:
    bare = [f"{module} (line {s.line}): {s.module}"
            for module, path in modules.items() for s in imports_of(module, path)
            if s.module.split(".")[0] in PACKAGES]
    assert not bare, "import memring.<package>, not a bare top-level name:\n" + "\n".join(bare)


def test_no_import_cycles(graph: list[Arrow]) -> None:
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(map(describe, found))


def test_no_module_imports_a_test_module() -> None:
    """Neither tests nor bench scripts import a test module: shared test code lives in
    tests/helpers/."""
    test_modules = {".".join(p.relative_to(REPO).with_suffix("").parts)
                    for p in (REPO / "tests").rglob("test_*.py")}
    wrong = []
    for path in sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for s in imports_of(name, path):
            named = {s.module, *(f"{s.module}.{n}" for n in s.names)} & test_modules
            wrong += [f"{path.relative_to(REPO)} (line {s.line}): {t}" for t in sorted(named)]
    assert test_modules and not wrong, "\n".join(wrong)
