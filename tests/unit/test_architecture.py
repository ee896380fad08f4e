"""The package's shape: no import cycles among its modules, and the layers of pyproject.toml's
import-linter contract (command line > study runner > analysis and teaching > training > models and
data > base) kept. Both count imports inside functions too. And ruff's checks pass (``make lint`` runs
the same two tools)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(imports.get(v, ())):
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

    for v in sorted(imports):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles_among_the_package_modules():
    graph = grimp.build_graph("medssl_utils")
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    # a package imports its own submodules to re-export them: an edge from the package to its
    # children is its face, not a dependency, so only edges that leave the importer's package count
    found = cycles({m: {d for d in deps if not d.startswith(m + ".")} for m, deps in imports.items()})
    assert found == [], f"import cycles: {found}"


def test_the_layers_contract_is_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "1 kept, 0 broken" in r.stdout, r.stdout[-3000:]


def test_ruff_finds_nothing():
    """Style and the errors pyflakes finds (pyproject.toml [tool.ruff]): the package, tests, benchmarks, notebooks."""
    exe = Path(sys.executable).with_name("ruff")
    r = subprocess.run([str(exe), "check", "--no-cache", "medssl_utils", "tests", "benchmarks", "notebooks"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
