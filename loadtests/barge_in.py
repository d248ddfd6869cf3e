"""Barge-in benchmark: how fast a reply stops, measured at the client, on the embedded (CPU) server.

    python -m loadtests.barge_in [--preset tiny] [--rounds 10] [--json loadtests/results/barge_in_cpu.json]

Each round starts a long reply (`ignore_eos`, 200 tokens) in a session and, once its first
audio chunk arrived, stops it three ways, one per round in turn:
  cancel     `client.cancel(session)` (an explicit cancel request on its own stream)
  new_turn   a new text turn in the same session (barge-in by typing)
  close      the client closes the reply's stream (`stop_stream(cancel_requests=True)`)
and reports, per way, p50/p95/max of the time from sending the stop (client clock) to the
last response of the interrupted reply (its final `done`; for `close` there is none, so it
reports when `talking_head_active_sessions` returned to 0 on the metrics endpoint, polled
every 5 ms). Target (the conversation issue): <= 100 ms on the CPU server.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from client.sdk import TalkingHeadClient
from deploy.admin import active_sessions
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.__main__ import main as export_main
from export.contract import events as ev
from export.contract.layout import MODEL_REPOSITORY
from loadtests.bench_cpu import hardware, pct

LONG = {"ignore_eos": True, "max_reply_tokens": 200}
WAYS = ("cancel", "new_turn", "close")


def one_round(client: TalkingHeadClient, avatar_id: str, way: str, k: int, metrics_url: str) -> float:
    session = f"bench-{k}"
    stream = client.ask(avatar_id=avatar_id, text="Tell me a long story.", options={"session": session, **LONG})
    got_audio, stop_now, ended = threading.Event(), threading.Event(), {}

    def consume():
        try:
            for e in stream:
                if e.type == ev.AUDIO:
                    got_audio.set()
                if e.type == ev.DONE:
                    ended["done"] = (time.perf_counter(), e.data)
                if way == "close" and got_audio.is_set():
                    stop_now.wait(60)
                    stream.close()  # the SDK cancels the stream (stop_stream(cancel_requests=True))
                    break
        finally:
            got_audio.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    got_audio.wait(60)
    t_stop = time.perf_counter()
    stop_now.set()
    if way == "cancel":
        client.cancel(session)
    elif way == "new_turn":
        threading.Thread(target=client.turn, kwargs=dict(avatar_id=avatar_id, text="Stop.",
                                                         options={"session": session, "max_reply_tokens": 4}),
                         daemon=True).start()
    reader.join(60)
    if way == "close":
        while active_sessions(metrics_url) > 0:
            time.sleep(0.005)
        return time.perf_counter() - t_stop
    t_done, data = ended["done"]
    if data.get("interrupted") is None:
        raise RuntimeError(f"round {k} ({way}): the reply was not interrupted")
    if way == "new_turn":
        time.sleep(1.0)  # let the new turn finish before the next round
    return t_done - t_stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rounds", type=int, default=10, help="rounds per way of stopping (default 10)")
    ap.add_argument("--grpc-port", type=int, default=19401)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if export_main(["--preset", args.preset]) != 0:
        return 1
    with tempfile.TemporaryDirectory() as work:
        options = ServerOptions(repository=MODEL_REPOSITORY, workdir=Path(work), http_port=args.grpc_port - 1,
                                grpc_port=args.grpc_port, metrics_port=args.grpc_port + 1)
        with EmbeddedServer(options) as server, TalkingHeadClient(server.options.grpc_url) as client:
            metrics_url = f"http://localhost:{options.metrics_port}/metrics"
            avatar = client.register_avatar(demo_avatar_png())
            client.turn(avatar_id=avatar.id, text="Warm up.")
            ms: dict[str, list[float]] = {w: [] for w in WAYS}
            for k in range(args.rounds * len(WAYS)):
                way = WAYS[k % len(WAYS)]
                ms[way].append(one_round(client, avatar.id, way, k, metrics_url) * 1000.0)
                print(f"  round {k + 1:3d} {way:<9} {ms[way][-1]:7.1f} ms", flush=True)
    figures = {w: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "max_ms": max(v), "n": len(v)} for w, v in ms.items()}
    print(f"\nbarge-in on {hardware()}, preset {args.preset}: stop sent -> last response of the reply (client)")
    for w, f in figures.items():
        print(f"  {w:<9} p50 {f['p50_ms']:7.1f} ms   p95 {f['p95_ms']:7.1f} ms   max {f['max_ms']:7.1f} ms"
              f"   (n={f['n']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"hardware": hardware(), "preset": args.preset, "figures": figures,
                                         "raw_ms": ms, "command": "python -m loadtests.barge_in"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
