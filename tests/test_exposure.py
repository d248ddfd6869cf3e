"""Issue 15, exposure: on the embedded server with its defaults (the session's `server`: a random per-run admin
key, no bind address given) HTTP serves no turns without the admin key, health stays open, and every port that
tritonserver listens on is bound to 127.0.0.1.

HTTP is never TLS here (only gRPC is, deploy/tls.py): an open `generate_stream` would serve turns in plain text
beside a TLS gRPC port. The compose and Kubernetes flags are checked by tests/manifests.py's `check_restricted`.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy import metrics_text
from deploy.admin import admin_headers
from deploy.server import ServerOptions
from ensemble.metrics import TURNS

RESTRICTED = b"This API is restricted, expecting header 'admin-key'"
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from /proc (IPv4 and IPv6; an IPv4-mapped
    IPv6 address as its IPv4 form)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != TCP_LISTEN or inode not in inodes:
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)  # host-order 32-bit words
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            address = ipaddress.ip_address(raw)
            address = getattr(address, "ipv4_mapped", None) or address  # gRPC's dual-stack ::ffff:127.0.0.1
            found.append((str(address), int(port_hex, 16)))
    return sorted(found)


def outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def turns_total(server) -> float:
    return metrics_text.total(metrics_text.scrape(server.options.metrics_url), TURNS.name)


def http(server, path: str, body: dict | None = None, headers: dict[str, str] | None = None, timeout: float = 120):
    """(status, body bytes) of an HTTP call; POST when body is given."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.options.http_url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def sse_event(line: bytes) -> dict:
    """The talking_head event of one `data: {...}` line of a generate_stream answer."""
    event = json.loads(line[len(b"data: "):])["event"]
    return json.loads(event[0] if isinstance(event, list) else event)


def test_defaults_bind_loopback_and_keep_http_inference_behind_the_key():
    o = ServerOptions(admin_key="k" * 20)
    assert o.bind_address == "127.0.0.1" and o.grpc_url.startswith("localhost:")
    assert o.address_args() == ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
    http_flag = next(a for a in o.security_args() if a.startswith("--http-restricted-api="))
    grpc_flag = next(a for a in o.security_args() if a.startswith("--grpc-restricted-protocol="))
    assert "inference" in http_flag.split("=", 1)[1].split(":")[0].split(",")
    assert "inference" not in grpc_flag.split("=", 1)[1].split(":")[0].split(",")  # gRPC clients need no key
    everywhere = ServerOptions(bind_address="0.0.0.0")
    assert everywhere.address_args()[0] == "--http-address=0.0.0.0" and everywhere.host == "localhost"
    assert ServerOptions(bind_address="10.1.2.3").grpc_url == f"10.1.2.3:{o.grpc_port}"
    with pytest.raises(ValueError, match="bind_address"):
        ServerOptions(bind_address="localhost")


@pytest.mark.server
def test_server_listens_on_loopback_only(server):
    o = server.options
    assert o.bind_address == "127.0.0.1"  # nobody asked for it: the default
    listening = listening_sockets(server.process.pid)
    names = {o.http_port: "http", o.grpc_port: "grpc", o.metrics_port: "metrics"}
    print(f"\ntritonserver listens on {[(names.get(port, port), address) for address, port in listening]}")
    assert {port for _, port in listening} >= {o.http_port, o.grpc_port, o.metrics_port}
    assert {address for address, _ in listening} == {"127.0.0.1"}, listening
    address = outside_address()
    if address is None:
        print("no non-loopback address on this machine: the connection check is skipped")
        return
    for port in (o.http_port, o.grpc_port, o.metrics_port):
        with pytest.raises(OSError):  # refused: nothing listens there
            socket.create_connection((address, port), timeout=2).close()
    print(f"{address}: ports {o.http_port}, {o.grpc_port}, {o.metrics_port} refused")


@pytest.mark.server
def test_http_health_and_metadata_stay_open(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/talking_head/ready"):
        assert http(server, path)[0] == 200, path
    status, body = http(server, "/v2/models/talking_head")
    assert status == 200 and json.loads(body)["name"] == "talking_head"


@pytest.mark.server
def test_http_inference_needs_the_admin_key(server, avatar):
    """generate_stream and infer without the key: 403 before the model sees them (no turn counted); with it, a
    whole turn streams over HTTP. The `avatar` fixture registered its image over gRPC with no key."""
    key = server.options.admin_key
    turn = {"text": "Hello over HTTP.", "avatar_id": avatar.id, "options": json.dumps({"max_reply_tokens": 8})}
    before = turns_total(server)
    for path, body in (("/v2/models/talking_head/generate_stream", turn), ("/v2/models/talking_head/generate", turn),
                       ("/v2/models/talking_head/infer", {"inputs": []}), ("/v2/models/vad/infer", {"inputs": []})):
        status, answer = http(server, path, body)
        assert (status, RESTRICTED in answer) == (403, True), (path, status, answer[:300])
        # a wrong key, or the key under gRPC's header name, opens nothing either
        assert http(server, path, body, admin_headers("wrong-key-0123456789", grpc=False))[0] == 403
        assert http(server, path, body, admin_headers(key, grpc=True))[0] == 403
    assert turns_total(server) == before, "a refused HTTP request reached talking_head"

    status, stream = http(server, "/v2/models/talking_head/generate_stream", turn, admin_headers(key, grpc=False))
    assert status == 200, stream[:500]
    events = [sse_event(line) for line in stream.splitlines() if line.startswith(b"data: ")]
    kinds = [e["type"] for e in events]
    print(f"HTTP turn with the admin key: {len(events)} events, {kinds.count('audio')} audio, "
          f"{kinds.count('video')} video, last {kinds[-1]}")
    assert kinds[-1] == "done" and "audio" in kinds
    assert turns_total(server) == before + 1


def test_a_stage_request_out_of_its_bounds_is_refused_as_invalid_argument(server):
    """Defence in depth on the real server: a direct tts request with ids past the vocabulary, and a vocoder request
    holding NaN, are refused before their batch with INVALID_ARGUMENT naming the input (not INTERNAL)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def request(model: str, **arrays: np.ndarray) -> InferenceServerException:
        inputs = []
        for name, a in arrays.items():
            x = grpcclient.InferInput(name, list(a.shape), "INT64" if a.dtype == np.int64 else "FP32")
            x.set_data_from_numpy(a)
            inputs.append(x)
        with grpcclient.InferenceServerClient(server.options.grpc_url) as c, \
                pytest.raises(InferenceServerException) as e:
            c.infer(model, inputs)
        return e.value

    e = request("tts", phonemes=np.array([[1, 10**6, 2]], np.int64), phoneme_lengths=np.array([[3]], np.int64),
                scales=np.array([[0.667, 1.0, 0.8]], np.float32), seed=np.array([[0]], np.int64))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "input 'phonemes' holds values" in e.message()
    from export.contract.artifacts import manifest_preset, read_manifest
    from export.contract.spec import VOCODER

    channels = VOCODER.preset_dims(manifest_preset(read_manifest(server.options.manifest_dir)))["latent_channels"]
    e = request("vocoder", latents=np.full((1, channels, 4), np.nan, np.float32))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "NaN or infinite" in e.message(), e.message()
