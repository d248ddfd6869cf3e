"""A running tritonserver seen from outside: its Python stub processes, their shared memory, busy ports."""
from __future__ import annotations

import resource
import socket
from dataclasses import dataclass
from pathlib import Path

SHM_MARK = "_shm_region"  # Python(-based) backends name theirs triton_<backend>_backend_shm_region_*


@dataclass(frozen=True)
class Stub:
    """One Python backend stub process of a tritonserver (one per model instance)."""

    pid: int
    instance: str  # Triton's instance name: <model>_<group>_<index>, e.g. vocoder_0_0
    shm_region: str  # its shared-memory region in /dev/shm

    @property
    def model(self) -> str:
        return self.instance.rsplit("_", 2)[0]


def stubs(server_pid: int) -> list[Stub]:
    """The live stub processes of the tritonserver `server_pid`, read from /proc.

    A stub's command line is: stub binary, model path, shm region, shm sizes, parent pid, backend
    folder, ..., instance name (the 9th), runtime folder (python_be.cc's StubLauncher).
    """
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = _parent(proc)
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
        except (OSError, ValueError, IndexError):
            continue
        if ppid != server_pid or len(args) < 9 or not args[0].endswith("triton_python_backend_stub"):
            continue  # not ours, gone, or a zombie (empty command line)
        found.append(Stub(int(proc.name), args[8], next((a for a in args if SHM_MARK in a), "")))
    return sorted(found, key=lambda st: st.instance)


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (e.g. the espeak-ng worker an orchestrator stub starts), read from /proc."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and _parent(proc) == pid:
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def _parent(proc: Path) -> int:
    """The parent pid in /proc/PID/stat (after the command name, which may hold spaces and parentheses)."""
    return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])


def leaked_shm() -> list[str]:
    """Shared-memory regions of Python and Python-based backends (python, ort_cpu, torch_gpu) in /dev/shm."""
    shm = Path("/dev/shm")
    if not shm.exists():
        return []
    return sorted(p.name for p in shm.iterdir() if p.name.startswith("triton_") and SHM_MARK in p.name)


def busy_ports(ports: list[int]) -> list[int]:
    """Ports on which something already listens (the server would answer for another server)."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                busy.append(port)
    return busy


def free_ports(count: int = 3) -> list[int]:
    """`count` distinct TCP ports nothing listens on now (the kernel's picks), for servers started in tests and
    benchmarks beside other servers on the machine."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def server_ports() -> dict[str, int]:
    """ServerOptions' three ports, free now: `ServerOptions(**server_ports(), ...)`."""
    http, grpc, metrics = free_ports(3)
    return {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}


def with_open_file_limit(argv: list[str], soft: int) -> list[str]:
    """`argv` run with a soft RLIMIT_NOFILE of `soft` (the hard limit kept), through util-linux's `prlimit`, which
    execs it (the same pid). Not a Python `preexec_fn`: that forks the caller, and the fork of a process using gRPC
    can abort the child before it execs (grpc/grpc#43055: `epoll_wait error: Bad file descriptor`, SIGABRT; seen in a
    fresh-clone CI run on 2026-12-07, where the test's front door died that way before it started)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return ["prlimit", f"--nofile={soft}:unlimited", "--", *argv]
    return ["prlimit", f"--nofile={min(soft, hard)}:{hard}", "--", *argv]
