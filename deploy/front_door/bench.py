"""What the front door adds per turn and per streamed response (prints figures; not a test).

    python -m deploy.front_door.bench [--url localhost:8001] [--turns 30] [--synthetic-turns 200]

1. Real turns: an embedded tiny-preset server (or `--url`), text turns sent alternately straight to Triton and
   through a front door (`python -m deploy.front_door`, its own process), same text and seed, each side on one
   kept stream (as the SDK for turns within its keep_stream_s), then on one kept connection with a new stream per
   turn (as the SDK after the stream sat idle longer). Per pair: time to first response door - direct, and for
   every k-th streamed response its arrival (since the request was sent) door - direct. The models' own jitter
   is in these differences.
2. Synthetic upstream: a stand-in Triton (its own process) that answers each stream request with `--responses`
   responses of 16 KiB, 1 ms apart, each stamped with its send time; the client's receive time minus that stamp
   is the delivery latency of a response, straight and through the door; the difference of the medians is what
   the door adds, without model noise. Beside the door, a bare grpc.aio pass-through (raw bytes, nothing checked)
   shows the floor of a Python gRPC proxy: the door's own cost is what it adds above that. Where `nginx` is on
   PATH (Debian's nginx-light), nginx's grpc_pass beside them (one worker, upstream connections kept): the floor
   of a proxy outside Python, which cannot read the model name inside a request. Measured three ways
   (MODES): on one kept stream, on a kept connection with a new stream per turn, and with a new connection (TCP +
   HTTP/2 handshake) for every turn.
   time.perf_counter is CLOCK_MONOTONIC, one clock for every process.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deploy.processes import free_ports

KEY = "bench-key-0123456789abcdef"
HEADERS = {"authorization": f"Bearer {KEY}", "triton_grpc_error": "true"}


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def open_stream(c: grpcclient.InferenceServerClient, headers: dict) -> queue.SimpleQueue:
    """Start the stream of client `c`; the queue of its responses as (receive time, result, error)."""
    q: queue.SimpleQueue = queue.SimpleQueue()
    c.start_stream(callback=lambda result, error: q.put((time.perf_counter(), result, error)), headers=headers)
    return q


def one_stream(c: grpcclient.InferenceServerClient, headers: dict, model: str, inputs: list, stamped: bool = False):
    """One turn, a new stream on client `c`: (time to first response, arrival of each response since sending, and
    for stamped responses receive time - the upstream's send stamp)."""
    q = open_stream(c, headers)
    try:
        return turn_on(c, q, model, inputs, stamped)
    finally:
        c.stop_stream()


def turn_on(c: grpcclient.InferenceServerClient, q: queue.SimpleQueue, model: str, inputs: list, stamped: bool):
    """One turn on the open stream of `c`, whose callback feeds `q`."""
    t0 = time.perf_counter()
    c.async_stream_infer(model, inputs, enable_empty_final_response=True)
    arrivals, delivery = [], []
    while True:
        t, result, error = q.get(timeout=120)
        if error is not None:
            raise RuntimeError(str(error))
        params = result.get_response().parameters
        if stamped and "t" in params:
            delivery.append(t - params["t"].double_param)
        if params["triton_final_response"].bool_param:
            break
        arrivals.append(t - t0)
    return arrivals[0], arrivals, delivery


MODES = {"stream": "one stream kept open for every turn (as the SDK within its keep_stream_s)",
         "connection": "kept connection, a new stream per turn (as the SDK after keep_stream_s idle)",
         "new": "a new connection per turn"}


class Endpoint:
    """Turns against `url`, in one of MODES: on one kept stream; on one kept client (one connection) with a new
    stream per turn; or with a new client, i.e. a TCP connection and an HTTP/2 handshake, for each turn."""

    def __init__(self, url: str, headers: dict, mode: str):
        self.url, self.headers, self.mode = url, headers, mode
        self.client = grpcclient.InferenceServerClient(url) if mode != "new" else None
        self.responses = open_stream(self.client, headers) if mode == "stream" else None

    def turn(self, model: str, inputs: list, stamped: bool = False):
        if self.mode == "stream":
            return turn_on(self.client, self.responses, model, inputs, stamped)
        if self.client is not None:
            return one_stream(self.client, self.headers, model, inputs, stamped)
        with grpcclient.InferenceServerClient(self.url) as c:
            return one_stream(c, self.headers, model, inputs, stamped)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class Door:
    """`python -m deploy.front_door` in its own process, in front of `upstream`."""

    def __init__(self, upstream: str, workdir: Path):
        keys = workdir / "keys.txt"
        keys.write_text(f"bench:{KEY}\n")
        self.port = free_ports(1)[0]
        self.url = f"localhost:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "deploy.front_door", "--upstream", upstream, "--listen",
                                      f"127.0.0.1:{self.port}", "--keys", str(keys), "--rate", "100000",
                                      "--burst", "100000", "--log-level", "WARNING"])
        deadline = time.time() + 30
        while True:
            try:
                with grpcclient.InferenceServerClient(self.url) as c:
                    if c.is_server_live():
                        return
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def report(title: str, ttfr: list[float], per_response: list[float], unit_ms: bool = True) -> None:
    f = 1000.0 if unit_ms else 1.0
    print(f"{title}: added per turn (time to first response) p50 {pct(ttfr, 50) * f:.3f} ms, "
          f"p95 {pct(ttfr, 95) * f:.3f} ms ({len(ttfr)} pairs); per streamed response p50 "
          f"{pct(per_response, 50) * f:.3f} ms, p95 {pct(per_response, 95) * f:.3f} ms ({len(per_response)} responses)")


def real_turns(url: str, door: Door, turns: int) -> None:
    """Pairs of the same text turn, straight and through the door, in each of MODES' first two (one kept stream a
    side, as the SDK for turns within keep_stream_s; a new stream per turn on a kept connection)."""
    from client.sdk import TalkingHeadClient
    from client.wire import turn_inputs
    from ensemble.avatar import demo_avatar_png

    with TalkingHeadClient(url) as c:
        avatar = c.register_avatar(demo_avatar_png()).id
    inputs = turn_inputs(avatar_id=avatar, text="Hello there, how are you?", options={"seed": 0, "temperature": 0})
    for mode in ("stream", "connection"):
        ends = {"direct": Endpoint(url, {"triton_grpc_error": "true"}, mode), "door": Endpoint(door.url, HEADERS, mode)}
        try:
            for end in ends.values():  # warm-up
                for _ in range(2):
                    end.turn("talking_head", inputs)
            ttfr, per, raw = [], [], {"direct": [], "door": []}
            for i in range(turns):
                got = {}
                for name in (("direct", "door") if i % 2 else ("door", "direct")):
                    got[name] = ends[name].turn("talking_head", inputs)
                    raw[name].append(got[name][0])
                ttfr.append(got["door"][0] - got["direct"][0])
                n = min(len(got["door"][1]), len(got["direct"][1]))
                a, b = np.asarray(got["door"][1][:n]), np.asarray(got["direct"][1][:n])
                per.extend(np.diff(a) - np.diff(b))  # each response's gap after the previous one, door - direct
        finally:
            for end in ends.values():
                end.close()
        print(f"real turns ({turns} pairs, {len(per) // max(1, turns)} responses a turn, {MODES[mode]}): time to "
              f"first response direct p50 {pct(raw['direct'], 50) * 1000:.2f} ms, through the door p50 "
              f"{pct(raw['door'], 50) * 1000:.2f} ms")
        report(f"real turns, {mode}, door - direct", ttfr, per)


# ---------------------------------------------------------------- the stand-in upstream

class FakeTriton(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, responses: int, gap_s: float):
        self.responses, self.gap_s = responses, gap_s

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ModelStreamInfer(self, request_iterator, context):
        payload = os.urandom(16 * 1024)
        async for req in request_iterator:
            for k in range(self.responses + 1):
                r = pb.ModelInferResponse(model_name=req.model_name, id=req.id)
                r.outputs.add(name="frame", datatype="UINT8", shape=[len(payload)])
                r.raw_output_contents.append(payload)
                r.parameters["triton_final_response"].bool_param = k == self.responses
                r.parameters["t"].double_param = time.perf_counter()
                yield pb.ModelStreamInferResponse(infer_response=r)
                if k < self.responses:  # after the final one, straight to the stream's next request
                    await asyncio.sleep(self.gap_s)


async def serve_fake(port: int, responses: int, gap_s: float) -> None:
    server = grpc_aio().server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FakeTriton(responses, gap_s), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def grpc_aio():
    import grpc

    return grpc.aio


async def serve_passthrough(port: int, upstream: str) -> None:
    """The floor of any grpc.aio proxy: ModelStreamInfer passed through as raw bytes, with nothing checked, parsed
    or rewritten (the door's second hop without the door)."""
    import grpc

    channel = grpc.aio.insecure_channel(upstream)
    method = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")

    async def stream(request_iterator, context):
        call = method()

        async def pump():
            async for req in request_iterator:
                await call.write(req)
            await call.done_writing()

        task = asyncio.ensure_future(pump())
        try:
            async for resp in call:
                await context.write(resp)
        finally:
            task.cancel()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def nginx_conf(listen_port: int, upstream_port: int, workdir: Path) -> Path:
    """A minimal nginx config: one worker in the foreground, grpc_pass to the upstream over kept connections."""
    conf = workdir / "nginx.conf"
    temp = " ".join(f"{k}_temp_path {workdir / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""worker_processes 1; daemon off; pid {workdir / 'nginx.pid'}; error_log {workdir / 'nginx.log'} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off; {temp}
  upstream triton {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{listen_port} http2; client_max_body_size 0;
    location / {{ grpc_pass grpc://triton; grpc_read_timeout 3600s; grpc_send_timeout 3600s; }}
  }}
}}
""")
    return conf


def synthetic(turns: int, responses: int, workdir: Path) -> None:
    """The stand-in upstream, straight and through the door (and the floors beside it), in each of MODES."""
    port, floor_port, nginx_port = free_ports(3)
    url = f"localhost:{port}"
    helpers = [subprocess.Popen([sys.executable, "-m", "deploy.front_door.bench", "--fake-upstream", str(port),
                                 "--responses", str(responses)]),
               subprocess.Popen([sys.executable, "-m", "deploy.front_door.bench", "--passthrough", str(floor_port),
                                 "--url", url])]
    floors = {"floor": "through a bare grpc.aio pass-through"}
    nginx = None
    if shutil.which("nginx"):
        nginx = subprocess.Popen(["nginx", "-c", str(nginx_conf(nginx_port, port, workdir))])
        helpers.append(nginx)
        floors["nginx"] = "through nginx grpc_pass (outside Python)"
    else:
        print("nginx is not on PATH: no nginx floor (apt-get install nginx-light)")
    res: dict[tuple[str, str], tuple[list, list]] = {}
    try:
        time.sleep(1.5)
        if nginx is not None and nginx.poll() is not None:
            print(f"nginx exited with {nginx.returncode} (its log: {workdir / 'nginx.log'}): no nginx floor")
            del floors["nginx"]
        door = Door(url, workdir)
        try:
            inputs = [grpcclient.InferInput("text", [1], "BYTES")]
            inputs[0].set_data_from_numpy(np.array([b"hi"], dtype=object))
            for mode in MODES:
                ends = {"direct": Endpoint(url, {}, mode), "door": Endpoint(door.url, HEADERS, mode),
                        "floor": Endpoint(f"localhost:{floor_port}", {}, mode)}
                if "nginx" in floors:
                    ends["nginx"] = Endpoint(f"localhost:{nginx_port}", {}, mode)
                try:
                    for end in ends.values():
                        end.turn("talking_head", inputs, stamped=True)  # warm-up
                    for name in tuple(ends) * 2:  # two rounds each, interleaved
                        for _ in range(turns // 2):
                            first, _, delivery = ends[name].turn("talking_head", inputs, stamped=True)
                            res.setdefault((mode, name), ([], []))[0].append(first)
                            res[mode, name][1].extend(delivery)
                finally:
                    for end in ends.values():
                        end.close()
        finally:
            door.close()
    finally:
        for p in helpers:
            p.terminate()
            p.wait(15)
    print(f"synthetic upstream ({turns} turns each way, {responses} responses of 16 KiB 1 ms apart):")
    for mode, how in MODES.items():
        d = res[mode, "direct"]
        print(f"  {how}:")
        for label, i in (("time to first response", 0), ("delivery of a streamed response", 1)):
            print(f"    {label}: direct p50 {pct(d[i], 50) * 1000:.3f} / p95 {pct(d[i], 95) * 1000:.3f} ms")
            for name, what in {"door": "through the door", **floors}.items():
                p = res[mode, name]
                print(f"      {what}: p50 {pct(p[i], 50) * 1000:.3f} / p95 {pct(p[i], 95) * 1000:.3f} ms; added p50 "
                      f"{(pct(p[i], 50) - pct(d[i], 50)) * 1000:.3f} ms, p95 "
                      f"{(pct(p[i], 95) - pct(d[i], 95)) * 1000:.3f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.front_door.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running Triton's gRPC host:port (default: start an embedded tiny-preset one)")
    ap.add_argument("--turns", type=int, default=30, help="real turn pairs (default %(default)s)")
    ap.add_argument("--synthetic-turns", type=int, default=200, help="synthetic turns each way (default %(default)s)")
    ap.add_argument("--responses", type=int, default=100, help="synthetic responses a turn (default %(default)s)")
    ap.add_argument("--fake-upstream", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--passthrough", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fake_upstream:
        asyncio.run(serve_fake(args.fake_upstream, args.responses, 0.001))
        return 0
    if args.passthrough:
        asyncio.run(serve_passthrough(args.passthrough, args.url))
        return 0
    work = Path(tempfile.mkdtemp(prefix="front-door-bench-"))
    if args.synthetic_turns:
        synthetic(args.synthetic_turns, args.responses, work)
    if args.turns:
        if args.url:
            door = Door(args.url, work)
            try:
                real_turns(args.url, door, args.turns)
            finally:
                door.close()
        else:
            from deploy.processes import server_ports
            from deploy.server import EmbeddedServer, ServerOptions
            from export.contract.layout import BUILD

            opts = ServerOptions(repository=BUILD / "tiny_repository", workdir=work / "triton", **server_ports())
            with EmbeddedServer(opts) as s:
                door = Door(s.options.grpc_url, work)
                try:
                    real_turns(s.options.grpc_url, door, args.turns)
                finally:
                    door.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
