"""The layout's rules (docs/DESIGN.md, "Rooms"), read from the source: no import cycle among the project's
modules, no project import hidden inside a function, Core free of `azure.functions`, `scoring_job` free of
the rest of the project. Static (ast), so a rule is checked for every module whether or not a test imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PROJECT = ("fleetscore", "functions", "scoring_job", "function_app")
OUTER = ("fleetscore.cli", "fleetscore.host")
"""The outermost layer: the CLI and the local host may import `azure.functions` and `function_app`."""
LAZY_ALLOWED = {
    # the only place that loads the Functions app: importing it registers every blueprint
    ("fleetscore.host.functions", "function_app"),
}
"""(module, project module) pairs allowed as an import inside a function, each with its reason."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [REPO / "function_app.py"]
    for package in ("fleetscore", "functions", "scoring_job"):
        files += sorted((REPO / package).rglob("*.py"))
    return {_module_name(p): p for p in files}


MODULES = _sources()


def _resolve(name: str, importer: str, level: int, is_package: bool) -> str:
    if level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))
    return name


def _target(dotted: str) -> str | None:
    """The project module an import of `dotted` loads (the longest known prefix), or None if not ours."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _imports(module: str) -> list[tuple[str, bool, str]]:
    """(imported module, inside a function?, raw dotted name) for every import statement of `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(child.module or "", module, child.level, is_package)
                found.append((base, in_function, base))
                # `from package import submodule` imports the submodule
                found.extend((f"{base}.{alias.name}", in_function, base) for alias in child.names
                             if f"{base}.{alias.name}" in MODULES)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for dotted, _inner, _raw in _imports(module):
            target = _target(dotted)
            if target is not None and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_source_tree_is_read():
    assert "fleetscore.cli.main" in MODULES and "scoring_job.score" in MODULES and "function_app" in MODULES
    assert "fleetscore.db" in _graph()["fleetscore.runs.service"]


def test_no_import_cycle_among_the_projects_modules():
    assert _cycles(_graph()) == []


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_project_import_is_hidden_inside_a_function():
    hidden = sorted({(module, _target(dotted)) for module in MODULES for dotted, inner, _ in _imports(module)
                     if inner and _target(dotted) is not None} - LAZY_ALLOWED)
    assert hidden == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("fleetscore")
                                          and not m.startswith(OUTER)))
def test_core_never_imports_azure_functions_or_the_app(module):
    imported = {dotted for dotted, _, _ in _imports(module)}
    assert not {d for d in imported if d == "azure.functions" or d.startswith("azure.functions.")}
    assert not {d for d in imported if d.split(".")[0] in ("functions", "function_app")}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("scoring_job")))
def test_scoring_job_imports_nothing_else_of_the_project(module):
    imported = {_target(d) for d, _, _ in _imports(module)} - {None}
    assert {m for m in imported if not m.startswith("scoring_job")} == set()
