"""Issue 15's classes at the front door's connections, below any request: what one client holds or sends before a key.

    python -m loadtests.door_connections [--cases idle_connections ...] [--door-tree DIR] [--nofile 1024] [--out FILE]

Starts the embedded server (tiny preset) and `python -m deploy.front_door` as Compose runs it (TLS, a keys file) on
free ports, from `--door-tree` (e.g. a worktree of an older commit, to measure "before"), its soft open-file limit
set to `--nofile` at start (1024: Docker Engine 29 with containerd 2.1.5 gives a container's process that); a victim
loops short text turns through the door all along (loadtests.adversarial.Victim). Per case: what the attacker got, the
victim's turns (failed, slowest), whether a newcomer could connect and be answered during it, the door's open
descriptors, resident memory and CPU, and tritonserver's CPU (the victim's turns in it too). Prints each case as a
JSON line (RELIABILITY.md, "A seventh pass" has the table).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import grpc
import psutil
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from client.sdk import TalkingHeadClient
from deploy.processes import free_ports, server_ports, with_open_file_limit
from deploy.server import EmbeddedServer, ServerOptions
from deploy.tls import make_self_signed
from ensemble.avatar import demo_avatar_png
from export.contract.layout import BUILD
from loadtests.adversarial import KEYS, Victim

ROOT = Path(__file__).resolve().parents[1]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # HTTP/2 preface, empty SETTINGS


class Door:
    """The door's process and how to reach it as a client."""

    def __init__(self, port: int, pid: int, ca: Path):
        self.port, self.pid, self.ca = port, pid, ca
        self.creds = grpc.ssl_channel_credentials(ca.read_bytes())

    def call(self, key: str | None, timeout: float = 5.0, method: str = "ServerLive") -> str:
        """One call on a new connection: 'ok 0.012s' or the status it got."""
        t = time.perf_counter()
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        with grpc.secure_channel(f"localhost:{self.port}", self.creds) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            try:
                if method == "ServerLive":
                    stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout, metadata=metadata)
                else:
                    stub.ModelReady(pb.ModelReadyRequest(name="talking_head"), timeout=timeout, metadata=metadata)
                return f"ok {time.perf_counter() - t:.3f}s"
            except grpc.RpcError as e:
                return f"{e.code().name} {(e.details() or '')[:90]!r} {time.perf_counter() - t:.1f}s"

    def tls_socket(self) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.set_alpn_protocols(["h2"])
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=10),
                               server_hostname="localhost")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_mib(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def cpu_s(self) -> float:
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system


def raise_own_limit() -> None:
    """The attacker's own descriptors: as many as this machine allows."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)


def idle_connections(door: Door, n: int = 1100, hold_s: float = 20.0) -> dict:
    """n connections from one client, each through TLS and HTTP/2's preface, then nothing: held for hold_s."""
    raise_own_limit()
    socks, failed = [], ""
    for _ in range(n):
        try:
            s = door.tls_socket()
            s.sendall(PREFACE)
            socks.append(s)
        except OSError as e:  # the door stopped taking connections
            failed = f"; connection {len(socks) + 1} failed: {type(e).__name__}"
            break
    time.sleep(2)
    during = {"newcomer": door.call(KEYS["victim"], method="ModelReady"), "door_fds": door.fds(),
              "door_rss_mib": round(door.rss_mib(), 1)}
    time.sleep(max(0.0, hold_s - 2))
    still = sum(1 for s in socks if _open(s))
    for s in socks:
        s.close()
    time.sleep(3)
    return {"attacker": f"{len(socks)} TLS connections opened{failed}; {still} still open after {hold_s:.0f} s",
            **during, "door_rss_mib_after": round(door.rss_mib(), 1)}


def half_handshakes(door: Door, n: int = 1000, watch_s: float = 30.0) -> dict:
    """n TCP connections that never start TLS: how long the door keeps them."""
    raise_own_limit()
    socks = [socket.create_connection(("127.0.0.1", door.port)) for _ in range(n)]
    time.sleep(1)
    newcomer = door.call(KEYS["victim"], method="ModelReady")
    fds = [door.fds()]
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < watch_s:
        time.sleep(5)
        fds.append(door.fds())
    still = sum(1 for s in socks if _open(s))
    for s in socks:
        s.close()
    return {"attacker": f"{n} TCP connections, no TLS ClientHello; {still} still open after {watch_s:.0f} s",
            "newcomer": newcomer, "door_fds_every_5s": fds}


def gzip_bomb(door: Door, mib: int = 1000) -> dict:
    """An avatar registration of `mib` MiB of zeros sent gzip-compressed (~1 MB on the wire)."""
    req = pb.ModelInferRequest(model_name="avatar_registry")
    req.inputs.add(name="image", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(b"\0" * (mib << 20))
    wire = len(zlib.compress(req.raw_input_contents[0], 9))
    before = door.rss_mib()
    peak = [before]
    done = threading.Event()

    def watch():
        while not done.wait(0.05):
            peak.append(door.rss_mib())
    threading.Thread(target=watch, daemon=True).start()
    t = time.perf_counter()
    unlimited = [("grpc.max_send_message_length", -1)]
    with grpc.secure_channel(f"localhost:{door.port}", door.creds, options=unlimited) as ch:
        try:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=60, compression=grpc.Compression.Gzip,
                                                            metadata=(("authorization", f"Bearer {KEYS['mallory']}"),))
            got = "answered"
        except grpc.RpcError as e:
            got = f"{e.code().name} {(e.details() or '')[:90]!r}"
    done.set()
    return {"attacker": f"{mib} MiB of zeros as {wire / 1e6:.1f} MB of gzip: {got} in {time.perf_counter() - t:.1f} s",
            "door_rss_mib": [round(before, 1), round(max(peak), 1)], "newcomer": door.call(KEYS["victim"])}


def anonymous_flood(door: Door, threads: int = 8, seconds: float = 20.0) -> dict:
    """Calls without a key as fast as `threads` connections send them: ServerLive (open, for probes) and ModelReady
    with a wrong key."""
    counts: dict[str, int] = {}
    stop = threading.Event()

    def loop(k: int) -> None:
        key = None if k % 2 == 0 else "not-a-key-0123456789"
        method = "ServerLive" if key is None else "ModelReady"
        with grpc.secure_channel(f"localhost:{door.port}", door.creds) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            metadata = (("authorization", f"Bearer {key}"),) if key else ()
            while not stop.is_set():
                try:
                    if key is None:
                        stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
                    else:
                        stub.ModelReady(pb.ModelReadyRequest(name="talking_head"), timeout=5, metadata=metadata)
                    what = f"{method} answered"
                except grpc.RpcError as e:
                    what = f"{method} {e.code().name}"
                counts[what] = counts.get(what, 0) + 1
    cpu0 = door.cpu_s()
    workers = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    time.sleep(seconds / 2)
    newcomer = door.call(KEYS["victim"], method="ModelReady")
    time.sleep(seconds / 2)
    stop.set()
    for w in workers:
        w.join(10)
    return {"attacker": "; ".join(f"{v / seconds:.0f}/s {k}" for k, v in sorted(counts.items())),
            "newcomer": newcomer, "door_cores": round((door.cpu_s() - cpu0) / seconds, 2)}


def _open(s: socket.socket) -> bool:
    """Whether the door still holds this connection: what it sent is read (and dropped) up to the end it closed."""
    s.setblocking(False)
    try:
        while s.recv(1 << 16):
            pass
        return False  # the door closed it
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False


CASES = {f.__name__: f for f in (idle_connections, half_handshakes, gzip_bomb, anonymous_flood)}


def start_door(tree: Path, upstream: str, workdir: Path, nofile: int = 1024,
               flags: tuple[str, ...] = ("--rate", "200", "--burst", "400")) -> tuple[subprocess.Popen, Door]:
    """`python -m deploy.front_door` of `tree` as Compose runs it (TLS, a keys file of loadtests.adversarial.KEYS),
    with `flags` (default: a request rate that keeps the victim's turns clear of it), once it answers."""
    tls = make_self_signed(workdir / "tls")
    keys = workdir / "keys.txt"
    keys.write_text("".join(f"{name}:{key}\n" for name, key in KEYS.items()))
    (port,) = free_ports(1)
    proc = subprocess.Popen(with_open_file_limit(
        [sys.executable, "-m", "deploy.front_door", "--upstream", upstream, "--listen", f"0.0.0.0:{port}",
         "--keys", str(keys), "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
         *flags], nofile), cwd=tree, stderr=open(workdir / "door.log", "w"))
    door = Door(port, proc.pid, tls.root_cert)
    for _ in range(100):
        if door.call(KEYS["victim"], timeout=1).startswith("ok"):
            return proc, door
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the front door did not start: {workdir / 'door.log'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    ap.add_argument("--door-tree", type=Path, default=ROOT, help="the tree whose deploy.front_door runs")
    ap.add_argument("--nofile", type=int, default=1024, help="the door's soft open-file limit at start")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    workdir = BUILD / "door-connections"
    workdir.mkdir(parents=True, exist_ok=True)
    options = ServerOptions(repository=BUILD / "tiny_repository", workdir=workdir / "triton", exit_timeout_s=10,
                            **server_ports())
    results = []
    with EmbeddedServer(options) as server:
        triton = psutil.Process(server.process.pid)
        proc, door = start_door(args.door_tree.resolve(), options.grpc_url, workdir, args.nofile)
        try:
            limit = open(f"/proc/{door.pid}/limits").read().split("Max open files")[1].split()[0]
            with TalkingHeadClient(f"localhost:{door.port}", ssl=True, root_certificates=str(door.ca),
                                   api_key=KEYS["victim"]) as c:
                avatar = c.register_avatar(demo_avatar_png()).id
            victim = Victim(f"localhost:{door.port}", avatar, ssl=True, root_certificates=str(door.ca)).start()
            time.sleep(5)
            for name in args.cases:
                victim.reset()
                fds0, rss0 = door.fds(), round(door.rss_mib(), 1)
                cpu0, t0 = sum(triton.cpu_times()[:2]), time.monotonic()
                r = {"case": name, "door_open_files_limit": limit, "door_fds_before": fds0,
                     "door_rss_mib_before": rss0, **CASES[name](door)}
                r["tritonserver_cores"] = round((sum(triton.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0), 2)
                time.sleep(2)
                r.update(victim_turns=victim.turns, victim_failed=victim.failed,
                         victim_slowest_s=round(victim.slowest, 2), victim_errors=victim.errors[:3],
                         door_alive=proc.poll() is None)
                results.append(r)
                print(json.dumps(r), flush=True)
            victim.stop()
        finally:
            proc.terminate()
            proc.wait(20)
    if args.out:
        args.out.write_text(json.dumps({"door_tree": str(args.door_tree), "nofile": args.nofile, "cases": results},
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
