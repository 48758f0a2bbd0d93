"""Imports point inward and never go round in a circle (issue 12 item 5).

Terms:
    module      a ``.py`` file of the project under its installed name: the folders
                ``domain/``, ``storage/``, ``projections/`` and ``ckpt/`` are installed
                as ``ckpt.domain``, ``ckpt.storage``, ``ckpt.projections`` and ``ckpt``
                (pyproject.toml's ``[tool.setuptools.package-dir]``, read here, so a
                new folder is checked as soon as it is installed).
    import      every ``import X`` and ``from X import Y`` in a module's source, read
                with ``ast``: at the top, inside a function, under
                ``if TYPE_CHECKING:``, relative or absolute. An import names the most
                specific project module it reaches: ``from ckpt.storage import chunks``
                is an edge to ``ckpt.storage.chunks`` (a module), ``from
                ckpt.storage.chunks import ChunkStore`` one to ``ckpt.storage.chunks``
                (its ``__init__``). Parent packages that Python runs on the way are not
                edges: every module would otherwise be in a cycle with its package.
    cycle       modules that import each other, directly or through others; reported
                as the list of names walked, first name repeated at the end.
    layer       ``domain`` (``ckpt.domain...``), ``storage``, ``projections`` and the
                application (``ckpt`` and its other modules). ``domain`` imports none of
                the others; ``storage`` neither ``projections`` nor the application;
                ``projections`` not the application, and not ``storage`` either (the
                two sit side by side on ``domain``: STYLE.md rule 2).

A function-local or ``TYPE_CHECKING`` import hides a cycle from Python, not from a
reader: both count here. The checker is plain functions over a folder, so the last
tests run it on a synthetic package with a planted cycle and a planted upward import.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (layer, layers it must not import). A module's layer is the longest prefix
# that matches its name; "ckpt" (the application) matches what no other does.
LAYERS: dict[str, str] = {
    "ckpt.domain": "domain",
    "ckpt.storage": "storage",
    "ckpt.projections": "projections",
    "ckpt": "application",
}
FORBIDDEN: dict[str, frozenset[str]] = {
    "domain": frozenset({"storage", "projections", "application"}),
    "storage": frozenset({"projections", "application"}),
    # storage is beside projections, not below it: a read model is built by
    # storage from what projections compute, never the other way (issue 12).
    "projections": frozenset({"storage", "application"}),
    "application": frozenset(),
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line})"


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """Installed package name -> folder, from ``[tool.setuptools.package-dir]``."""
    config = tomllib.loads(pyproject.read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: (pyproject.parent / folder).resolve() for name, folder in mapping.items()}


def project_modules(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Every module under ``roots`` (package name -> folder) by its installed name.
    A folder that is also below another root (none today) keeps the longer name."""
    modules: dict[str, Path] = {}
    for package, folder in sorted(roots.items(), key=lambda item: len(item[0])):
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if any(not part.isidentifier() for part in parts):
                continue  # not importable (e.g. a build folder): not a module
            modules[".".join([package, *parts])] = path
    return modules


def _resolve(name: str, known: Mapping[str, Path]) -> str | None:
    """The most specific project module ``name`` names (or lies in), if any."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: Mapping[str, Path]) -> list[Import]:
    """The project modules ``module`` imports anywhere in its source, by line."""
    found: set[Import] = set()
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise AssertionError(f"{path}:{node.lineno}: relative import above the top")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import sub` imports the module pkg.sub when there is one.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            resolved = _resolve(target, known)
            if resolved is not None and resolved != module:
                found.add(Import(module, resolved, node.lineno))
    return sorted(found, key=lambda i: (i.line, i.imported))


def import_graph(roots: Mapping[str, Path]) -> dict[str, list[Import]]:
    modules = project_modules(roots)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: Mapping[str, list[Import]]) -> list[list[str]]:
    """The cycles among modules: for every module in a strongly connected group
    (Tarjan's algorithm), the shortest walk from it back to itself, written from
    the walk's first module in sorted order: ``[a, b, a]``. A group of n modules
    gives between 1 and n cycles, so each module's part in it is seen."""
    edges = {name: sorted({i.imported for i in imports}) for name, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative: a recursive walk could exceed Python's limit on a long chain.
        work = [(start, iter(edges.get(start, [])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(edges.get(succ, []))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    cycles: set[tuple[str, ...]] = set()
    for group in groups:
        for member in group:
            cycle = _walk_back(member, set(group), edges)[:-1]
            first = cycle.index(min(cycle))  # one rotation: a -> b -> a, not b -> a -> b
            cycles.add((*cycle[first:], *cycle[:first], cycle[first]))
    return sorted(list(c) for c in cycles)


def _walk_back(start: str, members: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """The shortest path from ``start`` back to itself through ``members``."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in edges[node]:
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start]
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{start} is in no cycle within {sorted(members)}")


def layer_of(module: str, layers: Mapping[str, str] = LAYERS) -> str:
    prefix = _resolve(module, {name: Path() for name in layers})
    if prefix is None:
        raise AssertionError(f"{module} is in no layer")
    return layers[prefix]


def layer_violations(
    graph: Mapping[str, list[Import]],
    layers: Mapping[str, str] = LAYERS,
    forbidden: Mapping[str, frozenset[str]] = FORBIDDEN,
) -> list[str]:
    found = []
    for imports in graph.values():
        for imp in imports:
            importer, imported = layer_of(imp.importer, layers), layer_of(imp.imported, layers)
            if imported in forbidden[importer]:
                found.append(f"{importer} imports {imported}: {imp}")
    return sorted(found)


def _project_graph() -> dict[str, list[Import]]:
    return import_graph(package_dirs(ROOT / "pyproject.toml"))


# ---------------------------------------------------------------- the project


def test_the_project_has_no_import_cycle() -> None:
    cycles = find_cycles(_project_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_point_inward() -> None:
    violations = layer_violations(_project_graph())
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_the_checker_sees_every_layer_of_the_project() -> None:
    graph = _project_graph()
    seen = {layer_of(name) for name in graph}
    assert seen == set(FORBIDDEN)
    # Known edges, so that a checker that reads no import cannot pass.
    assert any(i.imported == "ckpt.domain.errors" for i in graph["ckpt.storage.locations"])
    assert "ckpt.domain.vm" in graph and "ckpt.cli" in graph


# ---------------------------------------------------------------- the checker


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _planted(tmp_path: Path) -> dict[str, Path]:
    """A package laid out like ours: app/ is ``app``, model/ is ``app.model``."""
    _write(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/service.py": "from app.model import rules\n",
            "app/facade.py": "import app.helpers\n",
            # A cycle held together by a function-local import, as store.py's are.
            "app/helpers.py": "def later():\n    from .facade import thing\n",
            "model/__init__.py": "from .rules import Rule\n",
            # An upward import hidden under TYPE_CHECKING.
            "model/rules.py": (
                "from typing import TYPE_CHECKING\n"
                "from . import values\n"
                "if TYPE_CHECKING:\n"
                "    from ..service import Service\n"
                "class Rule: ...\n"
            ),
            "model/values.py": "import os\n",
        },
    )
    return {"app": tmp_path / "app", "app.model": tmp_path / "model"}


def test_a_planted_cycle_is_reported_as_the_modules_it_walks(tmp_path: Path) -> None:
    graph = import_graph(_planted(tmp_path))
    assert find_cycles(graph) == [
        ["app.facade", "app.helpers", "app.facade"],
        ["app.model.rules", "app.service", "app.model.rules"],
    ]


def test_a_planted_upward_import_is_reported_with_its_line(tmp_path: Path) -> None:
    graph = import_graph(_planted(tmp_path))
    layers = {"app.model": "domain", "app": "application"}
    assert layer_violations(graph, layers) == [
        "domain imports application: app.model.rules -> app.service (line 4)"
    ]


def test_relative_imports_resolve_to_the_module_they_name(tmp_path: Path) -> None:
    graph = import_graph(_planted(tmp_path))
    assert [i.imported for i in graph["app.model"]] == ["app.model.rules"]
    assert sorted(i.imported for i in graph["app.model.rules"]) == [
        "app.model.values",
        "app.service",
    ]
    assert graph["app.model.values"] == []  # the stdlib is no project module


def test_a_clean_package_passes(tmp_path: Path) -> None:
    roots = _planted(tmp_path)
    (tmp_path / "app" / "helpers.py").write_text("import app.model.values\n")
    (tmp_path / "model" / "rules.py").write_text("from . import values\n")
    graph = import_graph(roots)
    assert find_cycles(graph) == []
    assert layer_violations(graph, {"app.model": "domain", "app": "application"}) == []
