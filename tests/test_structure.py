"""The house: imports run one way between the floors, no module imports itself round a circle, the client and
the orchestrator load without torch, and no source file grows past 500 lines (README, "Architecture")."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("export", "ensemble", "client", "deploy", "loadtests", "model_repository")

# room -> the rooms it may import (besides itself). A room is a top folder, or one floor of export/.
ALLOWED = {
    "export.contract": set(),
    "export.toolchain": {"export.contract"},
    "export.runtime": {"export.contract", "export.toolchain"},
    "export": {"export.contract", "export.toolchain", "export.runtime"},  # the command lines at export/'s top
    "ensemble": {"export.contract"},
    "client": {"export.contract"},
    "model_repository": {"ensemble", "export.contract"},
    "deploy": {"client", "ensemble", "export", "export.contract", "export.toolchain", "export.runtime"},
    "loadtests": {"client", "deploy", "ensemble", "export", "export.contract", "export.toolchain", "export.runtime"},
}
MAX_LINES = 500


def _sources() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        # not build outputs (git-ignored: e.g. client/build/, the SDK's wheel staging, made by tests/test_client_dist.py)
        files += [p for p in (ROOT / pkg).rglob("*.py")
                  if not {"__pycache__", "build"} & set(p.relative_to(ROOT).parts)]
    return sorted(files)


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "export" and len(parts) > 1 and parts[1] in ("contract", "toolchain", "runtime"):
        return f"export.{parts[1]}"
    return parts[0]


def _imports(path: Path) -> set[str]:
    """First-party modules `path` imports, at the top or inside functions (lazy imports count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in _sources()}
    graph = {}
    for mod, path in files.items():
        # "from export.contract import spec" names the module export.contract.spec: keep names that are modules
        graph[mod] = {n for n in _imports(path) if n in files and n != mod}
    return graph


def test_imports_run_down_the_floors():
    wrong = []
    for mod, deps in _graph().items():
        room = _room(mod)
        for dep in deps:
            target = _room(dep)
            if target != room and target not in ALLOWED[room]:
                wrong.append(f"{mod} -> {dep} ({room} may import {sorted(ALLOWED[room]) or 'nothing'})")
    assert not wrong, "imports that run the wrong way:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            # a package's __init__ importing its own submodules is no circle of ours
            if len(component) > 1 and not _package_and_its_members(component):
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _package_and_its_members(component: list[str]) -> bool:
    shortest = min(component, key=len)
    return all(m == shortest or m.startswith(shortest + ".") for m in component)


@pytest.mark.parametrize("module", ["client.sdk", "client.cli", "ensemble.service", "export.contract.spec",
                                    "deploy.server"])
def test_imports_without_torch(module):
    code = (f"import sys; import {module}; "
            "bad = sorted(m for m in ('torch', 'onnx', 'tensorrt_rtx_bindings') if m in sys.modules); "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{module} loads {r.stdout.strip() or r.stderr[-2000:]}"


def test_source_files_stay_small():
    big = []
    for path in _sources() + sorted((ROOT / "tests").glob("*.py")):
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            big.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not big, f"files over {MAX_LINES} lines (split them along their seams):\n" + "\n".join(big)
