"""The package's import graph: imports run from higher layers to lower ones only, and no modules import each other.

The layer order (lowest first) is the one docs/architecture.md describes. Every ``import`` counts, including
the ones inside functions (a lazy import is still a dependency). ``from package import name`` counts as an
import of ``package.name`` when that is a module, else of the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = ("kernels", "attention", "data", "models", "interop", "training", "recipes")
"""Subpackages of ``bridge``, lowest first: a module may import from its own layer and the ones before it."""

BASE_MODULES = ("console", "distributed", "failure_report")
"""Modules directly under ``bridge/`` (process groups, script output, how a failed script ends): below every subpackage, importing none."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / "bridge").rglob("*.py"))}


def _imports(path: Path, name: str, known: Set[str]) -> Set[str]:
    """Modules of ``bridge`` that the file imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2:  # bridge/__init__.py: imports nothing of the package
        return -2
    if len(parts) == 2 and parts[1] in BASE_MODULES:
        return -1
    assert parts[1] in LAYERS, f"{module}: subpackage {parts[1]!r} has no place in LAYERS; add it (and to the docs)"
    return LAYERS.index(parts[1])


def test_every_subpackage_has_a_layer():
    subpackages = {p.parent.name for p in (ROOT / "bridge").glob("*/__init__.py")}
    assert subpackages == set(LAYERS)


def test_no_import_runs_upward():
    upward = [f"{src} -> {dst}" for src, dsts in _graph().items() for dst in sorted(dsts)
              if _layer(dst) > _layer(src)]
    assert not upward, "imports from a higher layer: " + ", ".join(upward)


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
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


def test_no_import_circles():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_cycle_finder_finds_circles(graph, expected):
    assert _cycles(graph) == expected


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from bridge.models.gpt_builder import build_gpt_model\n")
    known = {"bridge.models.gpt_builder", "bridge.models.lazy"}
    assert _imports(source, "bridge.models.lazy", known) == {"bridge.models.gpt_builder"}


def test_docs_list_the_same_layers():
    """docs/architecture.md's layer table is the order this test enforces."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    documented = re.findall(r"^\| \d+ \| `bridge/(\w+)` \|", text, flags=re.M)
    assert tuple(documented) == LAYERS


def test_no_file_refers_to_documents_outside_the_repository():
    names = ("KERNEL" + ".md", "DESIGN" + ".md", "../" + "shared", "/work/" + "shared")
    files = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts
             and p.suffix in {".py", ".md", ".yaml", ".sh", ".toml", ".cpp", ".cu", ".cuh", ".h", ".txt"}]
    offenders = [f"{p.relative_to(ROOT)}: {n}" for p in files for n in names if n in p.read_text(errors="ignore")]
    assert not offenders
