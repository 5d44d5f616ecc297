"""The rooms stay rooms: no import circle between files, unlearning never imports the recovery experiment,
experiment scripts build on the pipeline only, every module imports on its own, and no file refers to a document
that is not in the repository.

Imports are read from the source (``ast``): module-level, inside functions and under ``TYPE_CHECKING`` alike — a
type-only import between two files is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "unpact_mech"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` gives ``a.b.c`` and ``a.b``)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def file_of(imported: str) -> str | None:
    """The package file an imported name resolves to (the longest module prefix), or None outside the package."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = {file_of(i) for i in imported_names(path, name)} - {None, name}
        graph[name] = {t for t in targets if not name.startswith(t + ".")}  # a module's own package is implied
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_files():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_unlearning_never_imports_the_recovery_experiment():
    graph = import_graph()
    offenders = {
        m: sorted(t for t in targets if t.startswith("unpact_mech.recovery"))
        for m, targets in graph.items()
        if m.startswith("unpact_mech.unlearning")
    }
    assert {m: t for m, t in offenders.items() if t} == {}
    assert any(
        t.startswith("unpact_mech.attacks")
        for m, ts in graph.items()
        if m.startswith("unpact_mech.unlearning")
        for t in ts
    )  # keyguard does train against the attack registry


def test_experiment_scripts_import_the_pipeline_not_the_demo_or_each_other():
    scripts = sorted((ROOT / "experiments").rglob("*.py"))
    stems = {p.stem for p in scripts}
    assert len(scripts) >= 9
    for path in scripts:
        names = imported_names(path, path.stem)
        assert not any(n == "unpact_mech.demo" or n.startswith("unpact_mech.demo.") for n in names), path
        assert not names & stems, f"{path.name} imports another experiment script: {sorted(names & stems)}"
        assert "sys.path" not in path.read_text(), f"{path.name} edits sys.path"


def test_every_module_imports_on_its_own():
    """Importing any one module first (a fresh ``unpact_mech``) works: no hidden import-order dependence."""
    saved = {k: v for k, v in sys.modules.items() if k == "unpact_mech" or k.startswith("unpact_mech.")}
    try:
        for name in MODULES:
            for k in [k for k in sys.modules if k == "unpact_mech" or k.startswith("unpact_mech.")]:
                del sys.modules[k]
            importlib.import_module(name)
    finally:
        for k in [k for k in sys.modules if k == "unpact_mech" or k.startswith("unpact_mech.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.mark.parametrize("folder", ["unpact_mech", "docs", "experiments", "tests", "scripts", ".ci"])
def test_no_file_refers_to_a_document_outside_the_repository(folder):
    outside = re.compile(r"DESIGN\.md|ENV\.md|PAPER\.md")
    hits = [
        str(p.relative_to(ROOT))
        for p in (ROOT / folder).rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".md", ".txt", ".toml", "")
        and p != Path(__file__)
        and outside.search(p.read_text(errors="ignore"))
    ]
    assert hits == []
    for top in ("README.md", "Makefile", "pyproject.toml"):
        assert not outside.search((ROOT / top).read_text()), top
