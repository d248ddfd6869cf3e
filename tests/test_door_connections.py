"""The front door's connections, below any request (issue 15, "A seventh pass" in RELIABILITY.md): one client's idle
connections never lock the others out, connections past the door's cap are closed as they come, and a connection
that never finishes its handshake is closed. With the real server upstream; `python -m loadtests.door_connections`
measures the same with TLS and a victim's turns."""
from __future__ import annotations

import logging
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import deploy.front_door as front_door
from deploy.front_door import FrontDoorOptions, FrontDoorThread
from deploy.front_door.quota import ApiKeys
from deploy.open_files import raise_open_file_limit
from deploy.processes import free_ports, with_open_file_limit
from loadtests.door_connections import PREFACE

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[1]
KEY = "alice-key-0123456789abcdef"


def live(port: int, timeout: float = 5.0) -> str:
    """A newcomer's ServerLive through the door on a connection of its own: 'ok' or the status it got."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            pb_grpc.GRPCInferenceServiceStub(ch).ServerLive(pb.ServerLiveRequest(), timeout=timeout)
            return "ok"
        except grpc.RpcError as e:
            return e.code().name


def hold(port: int, n: int) -> list[socket.socket]:
    """n connections that send HTTP/2's preface and nothing more, each taken by the door (its SETTINGS read)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(PREFACE)
        s.settimeout(10)
        assert s.recv(9), "the door closed a connection under its cap"
        socks.append(s)
    return socks


def closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
        return True
    except TimeoutError:
        return False


def test_the_open_file_limit_is_raised_to_the_hard_one(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 512:
        pytest.skip(f"the hard limit here is {hard}")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        with caplog.at_level(logging.INFO, front_door.log.name):
            got = raise_open_file_limit(front_door.log)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got > 256
        assert "raised from 256" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_one_clients_idle_connections_do_not_lock_others_out(server, tmp_path):
    """Started as Docker Engine 29 starts a container's process (a soft limit of 256 here, 1024 there), the door
    raises its limit: 300 idle connections from one client, and a newcomer is still answered. Before, it waited out
    its deadline: the door's accept() failed with EMFILE."""
    low, hard = 256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * (low + 100):
        pytest.skip(f"the hard limit here is {hard}")
    keys = tmp_path / "keys.txt"
    keys.write_text(f"alice:{KEY}\n")
    (port,) = free_ports(1)
    door = subprocess.Popen(with_open_file_limit(
        [sys.executable, "-m", "deploy.front_door", "--upstream", server.options.grpc_url, "--listen",
         f"127.0.0.1:{port}", "--keys", str(keys)], low), cwd=ROOT, stderr=open(tmp_path / "door.log", "w"))
    socks = []
    try:
        deadline = time.monotonic() + 30
        while live(port, 1) != "ok":
            assert door.poll() is None and time.monotonic() < deadline, (tmp_path / "door.log").read_text()
            time.sleep(0.2)
        limit = int(Path(f"/proc/{door.pid}/limits").read_text().split("Max open files")[1].split()[0])
        assert limit > low + 100
        socks = hold(port, low + 50)
        assert live(port) == "ok"
    finally:
        for s in socks:
            s.close()
        door.terminate()
        door.wait(20)


def test_connections_past_the_cap_are_closed_and_unfinished_handshakes_time_out(server, monkeypatch):
    monkeypatch.setattr(front_door, "HANDSHAKE_TIMEOUT_S", 1)
    options = FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys({"alice": KEY}),
                               max_connections=8)
    with FrontDoorThread(options) as door:
        assert live(door.port) == "ok"
        time.sleep(0.5)  # that connection's end reaches the door
        socks = hold(door.port, 8)
        try:
            t = time.monotonic()
            assert live(door.port) == "UNAVAILABLE"  # closed as it came, not left waiting
            assert time.monotonic() - t < 4
        finally:
            for s in socks:
                s.close()
        time.sleep(0.5)
        assert live(door.port) == "ok"
        half = socket.create_connection(("127.0.0.1", door.port))
        half.sendall(PREFACE[:10])  # never finishes HTTP/2's preface
        try:
            assert closed_within(half, 5)
        finally:
            half.close()
