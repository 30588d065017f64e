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
