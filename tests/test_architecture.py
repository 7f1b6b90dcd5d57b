"""The layers hold: import-linter's contracts (pyproject.toml) pass, and no module imports itself in a circle.

Layers: the Prefect + Ray runner (flows/) -> the stages (semlic.pipeline, which import neither
Prefect nor Ray) -> the rest of the library, which imports no stage; in the library the method packages are peers on
the core (semlic.layered_codec, semlic.entropy, semlic.registry, format, codecs, ...), which imports
none of them. Type-checking imports are left out: they do not run.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("semlic", "flows")


def import_cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                    cycles.append(sorted(component))
    return cycles


@pytest.fixture(scope="module")
def graph():
    sys.path.insert(0, str(ROOT))
    try:
        return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))


def test_no_import_cycles(graph):
    assert import_cycles(graph) == []


def test_cycle_finder_finds_a_circle():
    toy = grimp.ImportGraph()
    for importer, imported in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.d", "p.e")):
        toy.add_import(importer=importer, imported=imported)
    assert import_cycles(toy) == [["p.a", "p.b", "p.c"]]


def test_contracts_name_every_method_package():
    """A new method folder is covered by the peers and core contracts, or this fails."""
    import semlic.methods

    packages = {f"semlic.methods.{info.name}" for info in pkgutil.iter_modules(semlic.methods.__path__) if info.ispkg}
    contracts = {c["name"]: c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
                 ["contracts"]}
    assert set(contracts["Method packages are peers"]["modules"]) == packages
    assert set(contracts["The core imports no method"]["forbidden_modules"]) == packages
    core = contracts["The core imports no method"]["source_modules"]
    assert not any(module.startswith(tuple(packages)) for module in core)


def test_contracts_name_every_module_below_the_stages():
    """A new module of semlic is covered by the contract that keeps the stages above the library."""
    import semlic

    below = {f"semlic.{info.name}" for info in pkgutil.iter_modules(semlic.__path__)} - \
        {"semlic.pipeline", "semlic.cli", "semlic.__main__"}
    contracts = {c["name"]: c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
                 ["contracts"]}
    assert set(contracts["The library below the stages imports no stage"]["source_modules"]) == below


def test_import_linter_contracts_pass():
    command = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([str(command), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
