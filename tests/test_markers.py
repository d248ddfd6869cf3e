"""The pytest markers say the truth: every test that runs on CUDA is marked `gpu` (skipped without a GPU by
tests/conftest.py, selected with `-m gpu` on a GPU host), and every declared marker is used."""
from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _decorator_names(fn: ast.FunctionDef) -> set[str]:
    return {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in fn.decorator_list}


def _uses_cuda(node: ast.AST) -> bool:
    """A CUDA device named in the code: the string "cuda" (or "cuda:N") as a value, or `.cuda()`."""
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"cuda(:\d+)?", n.value):
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "cuda":
            return True
    return False


def _module_marks(tree: ast.Module) -> str:
    marks = [ast.unparse(n.value) for n in tree.body if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)]
    return " ".join(marks)


def test_every_test_that_uses_cuda_is_marked_gpu():
    unmarked = []
    for path in sorted(p for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name):
        tree = ast.parse(path.read_text())
        module_gpu = "pytest.mark.gpu" in _module_marks(tree)
        helpers = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("test_")
                   and _uses_cuda(n)}
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")):
            calls = {c.func.id for c in ast.walk(fn) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
            if (_uses_cuda(fn) or calls & helpers) and not module_gpu and "pytest.mark.gpu" not in _decorator_names(fn):
                unmarked.append(f"{path.name}::{fn.name}")
    assert not unmarked, "tests that use CUDA without @pytest.mark.gpu:\n" + "\n".join(unmarked)


def test_the_gpu_marker_is_declared_and_used():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"gpu: [^"]+"', pyproject)
    used = [p.name for p in TESTS.glob("test_*.py") if "pytest.mark.gpu" in p.read_text() and p.name != Path(__file__).name]
    assert len(used) >= 3, used


def test_the_marker_finder_is_not_vacuous():
    tree = ast.parse('def test_x():\n    torch.zeros(1).to("cuda")\n')
    assert _uses_cuda(tree.body[0]) and not _uses_cuda(ast.parse("def test_y():\n    torch.cuda.is_available()\n"))
