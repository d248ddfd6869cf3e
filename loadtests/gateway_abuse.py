"""Issue 15's attack classes against the WebRTC gateway (the browser endpoint), a connected victim's media measured.

    python -m loadtests.gateway_abuse [--cases sdp_bomb offer_flood ...] [--gateway-tree DIR] [--out FILE]

Starts the embedded server (tiny preset) and `python -m deploy.gateway` on free ports (from `--gateway-tree`, e.g. a
worktree of an older commit, to measure "before"), connects a victim (an aiortc peer, as a browser: data channel,
audio and video received, frames timed as they arrive) and, one case after the other, one attacker from the same
address. Per case: what the attacker got, the victim's largest gap between two video frames during the case (idle
motion comes at 12.5 fps: ~0.08 s), whether a newcomer's offer was answered during it, the gateway's and tritonserver's
CPU use (its stubs included), the gateway's memory (before, peak, after) and what it wrote to its log over the case
(the log: build/gateway-abuse/gateway.log). Prints a table (RELIABILITY.md, "A sixth pass" and after).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import aiohttp
import av
import cv2
import numpy as np
import psutil
from aiortc import MediaStreamTrack, VideoStreamTrack

from deploy.processes import free_ports, server_ports, with_open_file_limit
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.contract.layout import BUILD
from loadtests import gateway_identity, gateway_rtp, gateway_transports
from loadtests.bench_gpu import process_cpu_s
from loadtests.door_connections import raise_own_limit
from loadtests.gateway_connections import address, healthz_flood, idle_connections, unread_responses
from loadtests.gateway_peer import ATTACKER, NEWCOMER, VICTIM, Peer, send_offer, sent_by, short
from loadtests.run import checkout_commit

ROOT = Path(__file__).resolve().parents[1]


class UnpacedTone(MediaStreamTrack):
    """A microphone that does not pace its frames: 20 ms of tone as fast as aiortc takes them (RTP faster than
    real time, which a browser never sends and a hostile client may)."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(0)
        t = (self.n * 960 + np.arange(960)) / 48000
        frame = av.AudioFrame.from_ndarray((8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)[None], "s16", "mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self.n * 960, fractions.Fraction(1, 48000)
        self.n += 1
        return frame


class Camera(VideoStreamTrack):
    """A camera the page never sends: 1280x720 noise at 30 fps (the gateway only receives audio)."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(np.random.randint(0, 255, (720, 1280, 3), np.uint8), format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def counts(statuses: list[int]) -> str:
    return ", ".join(f"{statuses.count(s)}x {s}" for s in sorted(set(statuses)))


# --------------------------------------------------------------------------------------------- the cases
async def sdp_bomb(http, victim) -> str:
    """2.8 MB of distinct `a=ssrc` lines in one offer (aiortc's parser is quadratic in them)."""
    sdp = await Peer().offer()
    bomb = sdp + "".join(f"a=ssrc:{1000 + i} cname:x\r\n" for i in range(120_000))
    t = time.monotonic()
    status, text = await send_offer(http, bomb)
    return f"{short(status, text)} after {time.monotonic() - t:.2f} s"


async def candidate_bomb(http, victim) -> str:
    """120,000 ICE candidates of addresses the attacker picks (each a connectivity check the gateway would send)."""
    sdp = await Peer().offer()
    line = "a=candidate:1 1 udp 2130706431 10.9.{}.{} {} typ host\r\n"
    extra = "".join(line.format(i // 250 % 250, i % 250 + 1, 1024 + i % 60000) for i in range(120_000))
    status, text = await send_offer(http, sdp + extra)
    return short(status, text)


async def not_an_object(http, victim) -> str:
    """An offer body that is JSON but not an object."""
    async with http.post("/offer", data=b"[1]", headers=sent_by(ATTACKER)) as r:
        return short(r.status, await r.text())


async def bad_options(http, victim) -> str:
    """Options the orchestrator refuses: accepted at the offer, each turn failing later, or refused at once."""
    status, text = await send_offer(http, await Peer().offer(), options={"seed": 1.5})
    return short(status, text)


async def offer_flood(http, victim, watch_s: float = 30.0) -> str:
    """40 offers that never connect, then another client's offer; the gateway's sessions `watch_s` later."""
    peers = [Peer() for _ in range(40)]
    statuses = [(await send_offer(http, await p.offer()))[0] for p in peers]
    newcomer = Peer()
    status, text = await newcomer.connect(http, NEWCOMER)
    await newcomer.pc.close()
    await asyncio.sleep(watch_s)
    active = (await gateway_rtp.stats(http))["active_sessions"]
    for p in peers:
        await p.pc.close()
    return f"offers: {counts(statuses)}; newcomer: {short(status, text)}; {active} sessions open {watch_s:g} s later"


async def avatar_flood(http, victim, n: int = 60) -> str:
    """`n` distinct avatar images uploaded back to back (the store holds 1000, least recently used out)."""
    face = cv2.imdecode(np.frombuffer(demo_avatar_png(), np.uint8), cv2.IMREAD_COLOR)
    statuses, t = [], time.monotonic()
    for k in range(n):
        a = face.copy()
        a[0, 0] = (k % 256, k // 256, 7)
        async with http.post("/avatar", data=cv2.imencode(".png", a)[1].tobytes(), headers=sent_by(ATTACKER)) as r:
            statuses.append(r.status)
    dt = time.monotonic() - t
    return f"{counts(statuses)} in {dt:.1f} s ({statuses.count(200) / dt:.1f} registered a second)"


async def gzip_avatar(http, victim, mib: int = 1000) -> str:
    """An avatar upload of `mib` MiB of zeros sent gzip-compressed (~1 MB on the wire), `Content-Encoding: gzip`."""
    def bomb() -> bytes:
        z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
        return b"".join(z.compress(bytes(1 << 20)) for _ in range(mib)) + z.flush()
    body = await asyncio.to_thread(bomb)  # ~3 s of zlib: off this loop, where the victim's media arrives
    t = time.monotonic()
    async with http.post("/avatar", data=body, headers={**sent_by(ATTACKER), "Content-Encoding": "gzip"}) as r:
        got = short(r.status, await r.text())
    return f"{mib} MiB as {len(body) / 1e6:.1f} MB of gzip: {got} after {time.monotonic() - t:.2f} s"


async def message_flood(http, victim, n: int = 3000) -> str:
    """A connected session sending `n` typed turns as fast as it can."""
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    for i in range(n):
        peer.channel.send(json.dumps({"type": "text", "text": f"hello number {i}"}))
        if i % 100 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(10)
    errors = [m["message"] for m in peer.messages if m["type"] == "error"]
    turns = sum(m["type"] == "done" for m in peer.messages)
    await peer.pc.close()
    return f"{n} sent; {turns} replies done, {len(errors)} errors" + (f" ({errors[0][:70]})" if errors else "")


async def deep_message(http, victim) -> str:
    """A data-channel message of 10 KB (within the 16 KiB bound) nested 5000 deep, then a typed turn."""
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    peer.channel.send("[" * 5000 + "]" * 5000)
    await asyncio.sleep(2.0)
    peer.channel.send(json.dumps({"type": "text", "text": "Hello."}))
    await asyncio.sleep(12.0)
    errors = [m["message"] for m in peer.messages if m["type"] == "error"]
    replies = sum(m["type"] == "done" for m in peer.messages)
    state = peer.pc.connectionState
    await peer.pc.close()
    return f"its connection {state}; {replies} replies to the turn after; errors: {errors[:1]}"


async def mic_flood(http, victim, seconds: float = 12.0) -> str:
    """A connected session whose microphone sends RTP as fast as it can."""
    tone = UnpacedTone()
    peer = Peer(mic=tone)
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    t = time.monotonic()
    await asyncio.sleep(seconds)
    sent_s = tone.n * 0.02
    errors = [m["message"] for m in peer.messages if m["type"] == "error"]
    await peer.pc.close()
    return (f"{sent_s:.0f} s of audio sent in {time.monotonic() - t:.0f} s; {len(errors)} errors"
            + (f" ({errors[0][:70]})" if errors else ""))


FLOOD = """
import os, socket, sys, time
targets = [(h, int(p)) for h, p in (a.split(",") for a in sys.argv[2:])]
rtp = bytes([0x80, 96]) + os.urandom(198)  # RTP-looking: SRTP must refuse it
stun = bytes.fromhex("00010000 2112a442") + os.urandom(12)  # a STUN binding request without credentials
s, n, end = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for t in targets:
        try:
            s.sendto(stun if n % 2 else rtp, t)
        except OSError:
            pass
        n += 1
print(n)
"""


async def udp_flood(http, victim, seconds: float = 10.0) -> str:
    """Another process sending UDP as fast as it can to the media ports the gateway's answer gave a session of the
    attacker's own (host candidates), RTP-looking and STUN-looking packets by turns."""
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    targets = sorted({f"{c.split()[4]},{c.split()[5]}" for c in peer.pc.remoteDescription.sdp.splitlines()
                      if c.startswith("a=candidate:") and c.split()[7] == "host" and ":" not in c.split()[4]})
    flood = await asyncio.create_subprocess_exec(sys.executable, "-c", FLOOD, str(seconds), *targets,
                                                 stdout=subprocess.PIPE)
    sent = int((await flood.communicate())[0] or 0)
    await peer.pc.close()
    return f"{sent / seconds:,.0f} packets a second for {seconds:g} s to {len(targets)} ports"


async def camera(http, victim, seconds: float = 20.0) -> str:
    """A connected session that also sends video (1280x720 at 30 fps), which the page never does."""
    peer = Peer(camera=Camera())
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    await asyncio.sleep(seconds)
    await peer.pc.close()
    return f"{seconds:g} s of 1280x720 video sent"


async def huge_message(http, victim, mib: int = 64) -> str:
    """One data-channel message of `mib` MiB, past the 256 KiB the gateway's SCTP stack advertises (the sender's
    own limit lifted: a client need not keep it)."""
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    peer.pc.sctp._remote_max_message_size = 2**31
    peer.channel.send(b"x" * (mib << 20))
    t = time.monotonic()
    while peer.channel.bufferedAmount > 0 and time.monotonic() - t < 60:
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    errors = [m["message"] for m in peer.messages if m["type"] == "error"]
    await peer.pc.close()
    return (f"{mib} MiB sent in {time.monotonic() - t:.1f} s; {len(errors)} errors"
            + (f" ({errors[0][:70]})" if errors else ""))


async def slow_requests(http, victim, n: int = 3000, hold_s: float = 20.0) -> str:
    """`n` connections each sending half a request header and nothing more (slowloris), then another client's offer
    while they are held, and how many the gateway has closed after `hold_s`."""
    host, port = await address(http)
    conns = []
    for _ in range(n):
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            break
        writer.write(b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Slow: ")
        conns.append((reader, writer))
    opened = len(conns)
    newcomer, t = Peer(), time.monotonic()
    async with aiohttp.ClientSession(f"http://{host}:{port}") as fresh:  # a connection of its own, not the pool's
        status, text = await newcomer.connect(fresh, NEWCOMER)
    waited = time.monotonic() - t
    await newcomer.pc.close()
    await asyncio.sleep(max(0.0, hold_s - waited))
    closed = 0
    for reader, writer in conns:  # closed by the gateway: end of stream (or an error response, then the end)
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(reader.read(4096), 0.01)
        closed += reader.at_eof()
        writer.close()
    return (f"{opened} connections opened; newcomer: {short(status, text)} after {waited:.1f} s; {closed} closed by "
            f"the gateway {hold_s:g} s later")


CASES = {f.__name__: f for f in (not_an_object, bad_options, sdp_bomb, candidate_bomb, offer_flood, avatar_flood,
                                 message_flood, deep_message, mic_flood, camera, huge_message, slow_requests,
                                 idle_connections, unread_responses, healthz_flood, gzip_avatar, udp_flood,
                                 *gateway_transports.CASES, *gateway_rtp.CASES, *gateway_identity.CASES)}


def cpu_s(server: EmbeddedServer) -> float:
    """CPU seconds of tritonserver and its stubs (with their espeak-ng children) so far, this process left out."""
    return sum(s for name, s in process_cpu_s(server.process.pid).items() if name != "clients (bench)")


async def new_victim(http: aiohttp.ClientSession) -> Peer:
    """A connected victim receiving idle motion (waits up to 60 s for its frames: a case may still be ending)."""
    deadline = time.monotonic() + 60
    while True:
        victim = Peer()
        status, text = await victim.connect(http, VICTIM)
        if status == 200:
            break
        await victim.pc.close()
        assert time.monotonic() < deadline, f"no victim session: {short(status, text)}"
        await asyncio.sleep(2)
    while not victim.receiving():
        assert time.monotonic() < deadline, "the victim receives no video"
        await asyncio.sleep(0.2)
    return victim


def own_cpu_s(pid: int) -> float:
    """CPU seconds the process has used (the gateway: its one loop and its executor's threads)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def peak_rss_mib(pid: int, peak: list[float], every_s: float = 0.25) -> None:
    """Keep the largest resident size of `pid` seen in peak[0] until cancelled (during a case: what the attacker
    held before it closed)."""
    while True:
        peak[0] = max(peak[0], rss_mib(pid))
        await asyncio.sleep(every_s)


async def attack(server: EmbeddedServer, base: str, names: list[str], gateway_pid: int, log: Path) -> list[dict]:
    rows = []
    async with aiohttp.ClientSession(base) as http:
        victim = await new_victim(http)
        await asyncio.sleep(3)
        cpu0, gw0, t = cpu_s(server), own_cpu_s(gateway_pid), time.monotonic()
        await asyncio.sleep(5)
        rows.append({"case": "(none: the victim alone, 5 s)", "attacker": "", "server_cpu": (cpu_s(server) - cpu0) / 5,
                     "victim_gap_s": victim.largest_gap(t, time.monotonic()),
                     "gateway_cores": (own_cpu_s(gateway_pid) - gw0) / 5})
        for name in names:
            cpu0, t, rss0, log0 = cpu_s(server), time.monotonic(), rss_mib(gateway_pid), log.stat().st_size
            gw0 = own_cpu_s(gateway_pid)
            peak_mib = [rss0]
            peak = asyncio.ensure_future(peak_rss_mib(gateway_pid, peak_mib))
            outcome = await CASES[name](http, victim)
            peak.cancel()
            await asyncio.sleep(1)
            t1 = time.monotonic()
            dropped = not victim.receiving()  # its connection failed (ICE consent lost while the gateway froze)
            rows.append({"case": name, "attacker": outcome, "victim_gap_s": victim.largest_gap(t, t1),
                         "victim_dropped": dropped, "server_cpu": (cpu_s(server) - cpu0) / (t1 - t),
                         "seconds": t1 - t, "gateway_mib": [rss0, rss_mib(gateway_pid)],
                         "gateway_peak_mib": peak_mib[0],
                         "gateway_cores": (own_cpu_s(gateway_pid) - gw0) / (t1 - t),
                         "gateway_log_kib": (log.stat().st_size - log0) / 1024})
            print(f"{name}: {outcome} | victim's largest frame gap {rows[-1]['victim_gap_s']:.2f} s"
                  f"{', its connection dropped' if dropped else ''}", flush=True)
            await asyncio.sleep(3)
            if dropped:
                await victim.pc.close()
                victim = await new_victim(http)
        await victim.pc.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=BUILD / "tiny_repository")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--gateway-tree", type=Path, default=ROOT,
                    help="run `python -m deploy.gateway` from this tree (a worktree of another commit: 'before')")
    ap.add_argument("--nofile", type=int, help="the gateway's soft open-file limit at start (1024: what Docker "
                                            "Engine 29 with containerd 2.1.5 gives a container's process; default: "
                                            "this shell's)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here too")
    args = ap.parse_args(argv)
    raise_own_limit()  # the attacker's connections: as many as allowed
    options = ServerOptions(repository=args.repository, workdir=BUILD / "gateway-abuse", **server_ports())
    port = free_ports(1)[0]
    knows_clients = (args.gateway_tree / "deploy" / "gateway" / "limits.py").exists()
    # /stats beside the page (the cases read it from there), where the tree has an operator's listener of its own
    stats_beside = "--stats-port" in (args.gateway_tree / "deploy" / "gateway" / "__main__.py").read_text()
    log = BUILD / "gateway-abuse" / "gateway.log"  # what the gateway logs, measured per case
    log.parent.mkdir(parents=True, exist_ok=True)
    with EmbeddedServer(options) as server, log.open("w") as log_file:
        argv = [sys.executable, "-m", "deploy.gateway", "--triton", options.grpc_url, "--port", str(port),
                "--log-level", os.environ.get("GATEWAY_LOG", "WARNING"),
                *(["--client-header", "X-Forwarded-For"] if knows_clients else []),
                *(["--stats-port", str(port)] if stats_beside else [])]
        gateway = subprocess.Popen(argv if args.nofile is None else with_open_file_limit(argv, args.nofile),
                                   cwd=args.gateway_tree, stdout=subprocess.PIPE, stderr=log_file, text=True)
        try:
            print(gateway.stdout.readline().strip(), flush=True)
            rows = asyncio.run(attack(server, f"http://127.0.0.1:{port}", args.cases, gateway.pid, log))
        finally:
            gateway.terminate()
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
                print("the gateway had not exited 30 s after SIGTERM: killed", flush=True)
    print(f"the gateway's log: {log}")
    print("| case | the attacker got | victim's largest gap between video frames | tritonserver CPU (cores) | gateway "
          "CPU (cores) | gateway MiB, before → peak → after | gateway log KiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cpu = f"{r['server_cpu']:.2f}"
        dropped = ", **its connection dropped**" if r.get("victim_dropped") else ""
        mib = ("{:.0f} → {:.0f} → {:.0f}".format(r["gateway_mib"][0], r["gateway_peak_mib"], r["gateway_mib"][1])
               if "gateway_mib" in r else "")
        gw = f"{r['gateway_cores']:.2f}" if "gateway_cores" in r else ""
        logged = f"{r['gateway_log_kib']:.0f}" if "gateway_log_kib" in r else ""
        print(f"| {r['case']} | {r['attacker']} | {r['victim_gap_s']:.2f} s{dropped} | {cpu} | {gw} | {mib} "
              f"| {logged} |")
    if args.out:
        args.out.write_text(json.dumps({"gateway_commit": checkout_commit(args.gateway_tree), "nofile": args.nofile,
                                        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
