"""What tritonserver keeps of a stage stub killed and reloaded, with and without requests in flight (issue 15).

    python -m loadtests.stub_kill [--kills 4] [--clients 4] [--repository build/tiny_repository]

Starts the embedded server on free ports, then twice: kills the `tts` stub `--kills` times and reloads it the way
the watchdog does (unload + load), first with no traffic, then with `--clients` threads sending `tts` requests all
along. After each reload it prints the shared-memory regions tritonserver maps (one per live stub, plus those it
still holds; again `--linger` seconds after the traffic stopped), the files in /dev/shm, tritonserver's resident memory, and the requests answered and failed.
"""
from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from deploy.processes import SHM_MARK, leaked_shm, server_ports, stubs
from deploy.server import EmbeddedServer, ServerOptions
from export.contract.layout import BUILD
from loadtests.adversarial import infer_error, live_stub

TTS_REQUEST = {"phonemes": np.array([[1, 2, 3, 4] * 20], np.int64), "phoneme_lengths": np.array([[80]], np.int64),
               "scales": np.array([[0.667, 1.0, 0.8]], np.float32), "seed": np.array([[1]], np.int64)}


def mapped_regions(pid: int) -> int:
    """The Python backends' shared-memory regions the process maps."""
    with open(f"/proc/{pid}/maps") as f:
        return len({line.split()[-1] for line in f if SHM_MARK in line})


class Traffic:
    """`clients` threads sending one tts request after another; answers and failures counted."""

    def __init__(self, url: str, clients: int):
        self.url, self.ok, self.failed, self.last_error = url, 0, 0, ""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            e = infer_error(self.url, "tts", TTS_REQUEST)
            if e is None:
                self.ok += 1
            else:
                self.failed, self.last_error = self.failed + 1, e[:90]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(130)


def kill_and_reload(server: EmbeddedServer, kills: int, clients: int, linger_s: float = 0.0) -> None:
    pid = server.process.pid
    traffic = Traffic(server.options.grpc_url, clients) if clients else None
    print(f"{clients} client(s) in flight: regions mapped {mapped_regions(pid)}, in /dev/shm {len(leaked_shm())}, "
          f"tritonserver {psutil.Process(pid).memory_info().rss / 2**20:.0f} MiB", flush=True)
    for k in range(kills):
        stub = live_stub(pid, "tts")
        os.kill(stub.pid, signal.SIGKILL)
        time.sleep(1.0)
        seconds = server.reload_model("tts")
        time.sleep(2.0)
        answered = f", requests answered {traffic.ok}, failed {traffic.failed}" if traffic else ""
        print(f"  kill {k + 1}: reloaded in {seconds:.2f} s; regions mapped {mapped_regions(pid)} "
              f"({len(stubs(pid))} live stubs), in /dev/shm {len(leaked_shm())}, tritonserver "
              f"{psutil.Process(pid).memory_info().rss / 2**20:.0f} MiB{answered}", flush=True)
    if traffic:
        traffic.stop()
    if linger_s:
        time.sleep(linger_s)
        print(f"  {linger_s:.0f} s later: regions mapped {mapped_regions(pid)}, in /dev/shm {len(leaked_shm())}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=BUILD / "tiny_repository",
                    help="model repository (default: the tiny preset's)")
    ap.add_argument("--kills", type=int, default=4, help="kills and reloads per case")
    ap.add_argument("--clients", type=int, default=4, help="threads sending tts requests in the second case")
    ap.add_argument("--linger", type=float, default=30.0, help="seconds to wait after the second case before the "
                                                               "last count (does tritonserver let go later?)")
    args = ap.parse_args(argv)
    options = ServerOptions(repository=args.repository, workdir=BUILD / "stub_kill", exit_timeout_s=10, **server_ports())
    with EmbeddedServer(options) as server:
        kill_and_reload(server, args.kills, 0)
        kill_and_reload(server, args.kills, args.clients, args.linger)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
