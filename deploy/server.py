"""The embedded server: the `tritonserver` that the nvidia-pytriton wheel bundles, on this repository.

    python -m deploy.server                 # CPU variant, ports 8000/8001/8002, until Ctrl-C

It assembles a backend directory (the wheel's Python backend with the stub for
this interpreter, plus this repository's Python-based backends), starts
`tritonserver --model-config-name=cpu` in its own process group with this
environment's `bin/` first on PATH (the Python stub takes its site-packages from
there), waits until the server and every model are ready, and on stop sends
SIGTERM, waits for Triton's own drain, then ends anything left in the group so
that no stub process or shared-memory region outlives it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = REPO / "model_repository"
PROJECT_BACKENDS = Path(__file__).resolve().parent / "backends"  # Python-based backends: <name>/model.py
SHM_PREFIX = "triton_python_backend_shm_region"


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


@dataclass
class ServerOptions:
    repository: Path = DEFAULT_REPOSITORY  # the model repository to serve
    config_name: str = "cpu"  # --model-config-name: configs/<name>.pbtxt over config.pbtxt
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    workdir: Path = REPO / "build" / "triton"  # assembled backends and the server log
    exit_timeout_s: int = 30  # --exit-timeout-secs: how long Triton drains in-flight work on SIGTERM
    ready_timeout_s: float = 180.0  # how long start() waits for every model to be ready
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)  # passed to tritonserver as they are

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"


class EmbeddedServer:
    """Start/stop the bundled tritonserver; a context manager for tests and the demo."""

    def __init__(self, options: ServerOptions | None = None):
        self.options = options or ServerOptions()
        self.process: subprocess.Popen | None = None
        self.log_path = self.options.workdir / "tritonserver.log"
        self.started_s: float | None = None  # seconds from launch to all models ready
        self.install = TritonInstall.find()

    def command(self, backends: Path) -> list[str]:
        o = self.options
        return [
            str(self.install.binary),
            f"--model-repository={o.repository}",
            f"--model-config-name={o.config_name}",
            f"--backend-directory={backends}",
            f"--http-port={o.http_port}",
            f"--grpc-port={o.grpc_port}",
            f"--metrics-port={o.metrics_port}",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
            "--strict-readiness=true",
            *o.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.install.lib_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.install.lib_dir), env.get("LD_LIBRARY_PATH")]))
        # The Python stub uses the site-packages of the first python on PATH: make it ours.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self) -> "EmbeddedServer":
        o = self.options
        if not (o.repository / "talking_head" / "config.pbtxt").exists():
            raise RuntimeError(f"{o.repository} is not this project's model repository")
        o.workdir.mkdir(parents=True, exist_ok=True)
        backends = assemble_backends(o.workdir / "backends", self.install)
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(backends), env=self.environment(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.options.ready_timeout_s
        with grpcclient.InferenceServerClient(self.options.grpc_url) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with code {self.process.returncode} during start-up;"
                                       f" last log lines:\n{self.log_tail()}")
                try:
                    if client.is_server_ready():
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {self.options.ready_timeout_s:.0f} s;"
                           f" last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        """SIGTERM, wait for Triton's drain, then end whatever is left of the process group."""
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=self.options.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        try:  # stubs that outlived the server (they should not)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None
        return p.returncode

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def endpoints(self) -> str:
        o = self.options
        return (f"gRPC    localhost:{o.grpc_port}\nHTTP    http://localhost:{o.http_port}\n"
                f"metrics http://localhost:{o.metrics_port}/metrics")


def leaked_shm() -> list[str]:
    """Python-backend shared-memory regions present in /dev/shm."""
    shm = Path("/dev/shm")
    return sorted(p.name for p in shm.iterdir() if p.name.startswith(SHM_PREFIX)) if shm.exists() else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the embedded Triton server on this repository until Ctrl-C.")
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to serve")
    ap.add_argument("--config-name", default="cpu", help="runtime variant: configs/<name>.pbtxt (default: cpu)")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--log-verbose", type=int, default=0, help="Triton log verbosity (0 = quiet)")
    args = ap.parse_args(argv)
    server = EmbeddedServer(ServerOptions(repository=args.repository, config_name=args.config_name,
                                          http_port=args.http_port, grpc_port=args.grpc_port,
                                          metrics_port=args.metrics_port, log_verbose=args.log_verbose))
    print(f"starting tritonserver on {args.repository} ({args.config_name}); log: {server.log_path}", flush=True)
    server.start()
    print(f"ready in {server.started_s:.1f} s\n{server.endpoints()}\nCtrl-C stops it.", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"] and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
        print(f"tritonserver stopped (exit code {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
