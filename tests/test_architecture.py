"""The import graph of the package and of the studies beside it (docs/design.md §2): no circles, the library
never imports the experiments (they live in experiments/, outside the installed package), and no imports
inside functions except optional dependencies and the CLI's per-command imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "logitsam"
EXPERIMENTS = ROOT / "experiments"
# imported inside functions on purpose: optional or heavy third-party packages used by one feature
OPTIONAL = {"matplotlib", "datasets", "pyarrow", "deepspeed", "gguf", "vaderSentiment", "trl", "peft", "tensorboard"}
# the CLI imports each command's module when that command runs, so `logitsam --help` does not load torch
LAZY_FRONTS = {"logitsam.cli.commands", "logitsam.cli.parser", "logitsam.cli.checks"}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC if path.is_relative_to(SRC) else ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in [*PKG.rglob("*.py"), *EXPERIMENTS.rglob("*.py")]}


def _target(name: str, mods: dict[str, Path]) -> str | None:
    """The package module an absolute import name refers to (a module, or the package holding a name)."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path, mods: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported module, at module level?, line) for every import of a package module or third-party root."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    top = {id(n) for n in tree.body}
    for parent in ast.walk(tree):
        for node in ast.iter_child_nodes(parent):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            level = id(node) in top or (isinstance(parent, (ast.If, ast.Try)) and id(parent) in top)
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: relative import (the package uses absolute ones)"
                # `from pkg import sub` runs pkg/__init__.py too: an edge to the package as well
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                names = [a.name for a in node.names]
            for n in names:
                out.append((n, level, node.lineno))
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    inner = []
    for m, path in mods.items():
        for name, level, line in _imports(path, mods):
            t = _target(name, mods) if name.split(".")[0] in ("logitsam", "experiments") else None
            if t and t != m:
                graph[m].add(t)
            if not level and m not in LAZY_FRONTS and name.split(".")[0] not in OPTIONAL:
                inner.append(f"{path.relative_to(ROOT)}:{line} imports {name} inside a function")
    return graph, inner


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_the_library_never_imports_the_experiments():
    graph, _ = _graph()
    bad = [
        f"{m} -> {t}" for m, ts in graph.items() for t in ts if m.startswith("logitsam") and t.startswith("experiments")
    ]
    assert bad == []
    assert len([m for m in graph if m.startswith("experiments.")]) > 20  # the checker sees the studies


def test_the_installed_package_holds_no_experiment_code():
    """The wheel is built from src/ (pyproject: packages.find where = src): no study module, no study data."""
    import setuptools

    assert not (PKG / "experiments").exists()
    assert [p for p in setuptools.find_packages(str(SRC)) if "experiments" in p] == []
    assert not list(PKG.rglob("*.jsonl"))


def test_an_experiment_never_imports_another():
    """study/ and squeeze/ share only experiments/{stats, verdicts, records}, never each other's modules."""
    graph, _ = _graph()
    kinds = ("experiments.study", "experiments.squeeze")
    bad = [
        f"{m} -> {t}"
        for m, ts in graph.items()
        for t in ts
        for a in kinds
        for b in kinds
        if a != b and (m == a or m.startswith(a + ".")) and (t == b or t.startswith(b + "."))
    ]
    assert bad == []


def test_no_imports_inside_functions():
    _, inner = _graph()
    assert inner == []


def test_the_checker_sees_a_circle_and_an_inner_import(tmp_path):
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    import json\n    from logitsam.core import losses\n")
    got = [(n, lv) for n, lv, _ in _imports(f, {})]
    assert got == [("os", True), ("json", False), ("logitsam.core", False), ("logitsam.core.losses", False)]
    # `from pkg import sub` inside pkg/sub2.py, with pkg/__init__.py importing sub2: a circle through the package
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub2 import g\n")
    (pkg / "sub.py").write_text("x = 1\n")
    (pkg / "sub2.py").write_text("from pkg import sub\n\ndef g():\n    return sub.x\n")
    mods = {"pkg": pkg / "__init__.py", "pkg.sub": pkg / "sub.py", "pkg.sub2": pkg / "sub2.py"}
    graph = {m: {t for n, _, _ in _imports(p, mods) if (t := _target(n, mods)) and t != m} for m, p in mods.items()}
    assert _cycles(graph) == [["pkg", "pkg.sub2"]]
