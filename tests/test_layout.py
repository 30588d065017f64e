"""The import rules of DESIGN.md, checked on the source tree.

Leaves (ingest, cacher, pruner) import neither stream_agent nor each other; ingest does not import
torch; only the model and memory modules of stream_agent import transformers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = ("ingest", "cacher", "pruner")
TRANSFORMERS_ALLOWED = ("stream_agent/models/", "stream_agent/memory/")


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_no_other_project_package(leaf: str) -> None:
    forbidden = {"stream_agent", "clients", *LEAVES} - {leaf}
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imported_roots(p) & forbidden) for p in _sources(leaf)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_ingest_does_not_import_torch() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in _sources("ingest") if "torch" in _imported_roots(p)
    ]
    assert offenders == []


def test_only_model_and_memory_modules_import_transformers() -> None:
    offenders = []
    for package in ("stream_agent", *LEAVES, "clients"):
        for p in _sources(package):
            rel = p.relative_to(ROOT).as_posix()
            if "transformers" in _imported_roots(p) and not rel.startswith(TRANSFORMERS_ALLOWED):
                offenders.append(rel)
    assert offenders == []


def test_rules_see_the_packages() -> None:
    """Guard against the checks above passing vacuously on an empty or moved tree."""
    for package in ("stream_agent", *LEAVES):
        assert _sources(package), f"{package}/ has no Python files"
    assert "stream_agent" in _imported_roots(ROOT / "stream_agent" / "cli.py")


# --- import cycles ---------------------------------------------------------------------------

PROJECT = ("stream_agent", *LEAVES, "clients")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PROJECT for p in _sources(package)}


def _imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, anywhere in the file (a function-level import
    closes a circle as surely as a top-level one). ``from pkg import mod`` counts as an import
    of ``pkg.mod`` when that is a module, else of ``pkg``."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*anchor, *(node.module or "").split(".")]).strip(".")
            else:
                module = node.module or ""
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                found.add(candidate if candidate in modules else module)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _project_modules()
    return {name: _imports_of(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles_among_our_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """Guard against the check above passing vacuously."""
    graph = _graph()
    assert "ingest.session" in graph["ingest.pyav_backend"]
    graph["ingest.session"] = {*graph["ingest.session"], "ingest.pyav_backend"}
    assert ["ingest.pyav_backend", "ingest.session"] in _cycles(graph)


def test_the_pipeline_does_not_import_the_server() -> None:
    graph = _graph()
    offenders = {
        name: sorted(m for m in imported if m.startswith("stream_agent.server"))
        for name, imported in graph.items()
        if name.startswith("stream_agent.pipeline")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
