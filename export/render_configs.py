"""Write every Triton config.pbtxt from export/contract/spec.py (`python -m export.render_configs`).

`--check` renders without writing and exits 1 when a checked-in file differs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.contract.layout import MODEL_REPOSITORY
from export.toolchain.configs import rendered_configs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="model repository to write into")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    args = ap.parse_args(argv)
    stale = []
    for rel, text in rendered_configs().items():
        path = args.repository / rel
        if path.exists() and path.read_text() == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print("configs differ from export/contract/spec.py: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
