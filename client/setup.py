"""Builds the talking-head-client wheel (see pyproject.toml beside this file).

Stages `talking_head/client` (this folder's modules) and `talking_head/contract` (the export/contract modules the
client imports) into client/build/dist-src (git-ignored), with their absolute imports rewritten to the namespace,
and checks that nothing outside the namespace is imported before setuptools packs them.
"""
from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGE = HERE / "build" / "dist-src"
# What client/ imports of export/contract, and what those import in turn (tests/test_client_dist.py checks the list).
CONTRACT = ("__init__", "events", "face", "layout", "media", "mouth", "presets", "spec", "spec_types")
NOT_SHIPPED = {"setup"}  # this file
_IMPORT = re.compile(r"^(?P<indent>[ \t]*)(?P<kw>from|import)[ \t]+(?P<mod>client|export\.contract)(?=[ \t.]|$)", re.M)
_NAMESPACE = {"client": "talking_head.client", "export.contract": "talking_head.contract"}


def rewrite(source: str) -> str:
    return _IMPORT.sub(lambda m: f"{m['indent']}{m['kw']} {_NAMESPACE[m['mod']]}", source)


def check(path: Path) -> None:
    """No absolute import of a first-party name outside the namespace may be left."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            if name.split(".")[0] in {"client", "export", "ensemble", "deploy", "loadtests"}:
                raise SystemExit(f"{path}: imports {name!r}, which the wheel does not ship")


def stage() -> Path:
    shutil.rmtree(STAGE, ignore_errors=True)
    root = STAGE / "talking_head"
    (root / "client").mkdir(parents=True)
    (root / "contract").mkdir()
    (root / "__init__.py").write_text('"""talking-head-client: talking_head.client (the SDK), talking_head.contract '
                                      '(the protocol it speaks)."""\n__version__ = "0.1.0"\n')
    (root / "py.typed").write_text("")
    sources = [(p, root / "client" / p.name) for p in sorted(HERE.glob("*.py")) if p.stem not in NOT_SHIPPED]
    sources += [(REPO / "export" / "contract" / f"{m}.py", root / "contract" / f"{m}.py") for m in CONTRACT]
    for src, dest in sources:
        dest.write_text(rewrite(src.read_text()))
        check(dest)
    return STAGE


setup(packages=["talking_head", "talking_head.client", "talking_head.contract"],
      package_dir={"": str(stage().relative_to(HERE))},
      package_data={"talking_head": ["py.typed"]})
