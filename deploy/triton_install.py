"""Where a tritonserver is (the nvidia-pytriton wheel's, or $TRITON_HOME's), and the backend folder the
embedded server assembles from Triton's Python backend and this project's Python-based backends."""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_BACKENDS = Path(__file__).resolve().parent / "backends"  # Python-based backends: <name>/model.py


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver, its Python backend (with a stub for this Python) and its libraries are."""

    binary: Path
    python_backend: Path  # holds libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this interpreter's Python version
    lib_dir: Path | None  # goes on LD_LIBRARY_PATH

    @classmethod
    def find(cls) -> "TritonInstall":
        """$TRITON_HOME (an unpacked bin/ backends/ lib/ tree, as on the GPU machine), else the pytriton wheel."""
        home = os.environ.get("TRITON_HOME")
        if home:
            root = Path(home)
            return cls(root / "bin" / "tritonserver", root / "backends" / "python",
                       root / "backends" / "python" / "triton_python_backend_stub", root / "lib")
        import pytriton

        ts = Path(pytriton.__file__).resolve().parent / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(ts / "bin" / "tritonserver", ts / "backends" / "python",
                      ts / "python_backend_stubs" / version / "triton_python_backend_stub",
                      ts.parent.parent / "nvidia_pytriton.libs")
        if not install.binary.exists():
            raise RuntimeError(f"nvidia-pytriton at {ts} has no bundled tritonserver")
        if not install.stub.exists():
            raise RuntimeError(f"the bundled Triton has no Python backend stub for Python {version}")
        return install


def assemble_backends(dest: Path, install: TritonInstall) -> Path:
    """A backend directory: Triton's `python` backend (+ the stub for this Python) and ours."""
    if dest.exists():
        shutil.rmtree(dest)
    python_dir = dest / "python"
    shutil.copytree(install.python_backend, python_dir, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, python_dir / "triton_python_backend_stub")
    for backend in sorted(PROJECT_BACKENDS.iterdir()):
        if (backend / "model.py").exists():
            shutil.copytree(backend, dest / backend.name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
