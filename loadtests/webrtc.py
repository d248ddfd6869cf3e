"""WebRTC benchmark: N headless Chromium pages talking to the gateway at once, measured in the browsers.

    python -m loadtests.webrtc --start-server --sessions 1,2,4 --seconds 40 [--json loadtests/results/webrtc.json]
    python -m loadtests.webrtc --triton localhost:8001 ...            # against a running Triton

For each N it starts a fresh gateway (`python -m deploy.gateway`, its own process, so its CPU time is its own) and N
Chromium pages (selenium + Debian's chromium/chromedriver, fake microphone = an espeak-ng question and 4 s of
silence, looped; hands-free; short replies so that no reply is interrupted). Page starts are staggered over one loop
so that turns are spread as real users' would be. After every page has had its first (cold) turn, it measures for
`--seconds`:
  - in the browsers (static/app.js): from the arrival of the VAD turn_end event to the first reply audio above
    -60 dBFS in WebAudio, and to the reply's first video frame presented (requestVideoFrameCallback, matched by
    RTP timestamp), p50/p95 over all turns of all pages;
  - at the gateway (/stats): from the turn_end event to the orchestrator's first audio / frame event there, and the
    gateway's added latency, from that event to the frame carrying it being handed to aiortc's encoder (RTP send
    follows after the encode);
  - the gateway process's CPU time over the window (psutil), per session, in % of one core; the machine's CPU
    use and the share of the browsers (Chromium process trees) and of the server (tritonserver and its stubs).
Everything runs on this machine: Triton, the gateway and the N browsers share its cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import psutil

from deploy.processes import free_ports
from loadtests.bench_cpu import hardware
from loadtests.run import start_server

OPTIONS = {"max_reply_tokens": 12}  # short replies: each loop of the question is a fresh, uninterrupted turn
LOOP_SILENCE_S = 4.0
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection", "--window-size=800,900")


def question_wav(folder: Path, text: str = "What can you do for me today?") -> tuple[Path, float]:
    import soundfile as sf

    spoken = folder / "spoken.wav"
    subprocess.run(["espeak-ng", "-w", str(spoken), text], check=True)
    speech, rate = sf.read(spoken, dtype="float32")
    silence = np.zeros(int(rate * LOOP_SILENCE_S), np.float32)
    audio = np.concatenate([np.zeros(rate * 3 // 10, np.float32), speech, silence])
    sf.write(folder / "question.wav", audio, rate, subtype="PCM_16")
    return folder / "question.wav", audio.size / rate


def chromium(wav: Path, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*FLAGS, f"--use-file-for-fake-audio-capture={wav}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


class Gateway:
    """`python -m deploy.gateway` as a child process on a free port, loopback ICE only."""

    def __init__(self, triton: str):
        (self.port,) = free_ports(1)
        self.proc = subprocess.Popen([sys.executable, "-m", "deploy.gateway", "--triton", triton, "--port",
                                      str(self.port), "--stats-port", str(self.port),  # /stats beside the page
                                      "--ice-host", "127.0.0.1", "--remote-network", "127.0.0.0/8"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()
        self.log: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:
                self.log.append(line)
                ready.set() if line.startswith("talking-head gateway:") else None

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(90):
            self.stop()
            raise SystemExit("the gateway did not start:\n" + "".join(self.log[-20:]))
        self.url = f"http://localhost:{self.port}"
        self.process = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.process.cpu_times()
        return t.user + t.system

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/stats?recent=1000", timeout=10) as r:
            return json.load(r)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def tree_cpu_s(procs: list[psutil.Process]) -> float:
    """CPU seconds of these processes and their descendants (those alive now)."""
    total = 0.0
    for p in procs:
        for q in [p, *p.children(recursive=True)]:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


def run_level(n: int, triton: str, wav: Path, loop_s: float, seconds: float, tmp: Path,
              server_pid: int | None = None) -> dict:
    gateway = Gateway(triton)
    url = f"{gateway.url}/?autostart=1&handsfree=1&raw=1&options=" + urllib.parse.quote(json.dumps(OPTIONS))
    with ExitStack() as stack:
        pages = []
        for i in range(n):
            driver = chromium(wav, tmp / f"profile-{n}-{i}")
            stack.callback(driver.quit)
            driver.get(url)
            pages.append(driver)
            time.sleep(loop_s / n)
        deadline = time.monotonic() + 60
        while not all(p.execute_script("return th.turns.length") >= 1 for p in pages):  # every page warmed up
            if time.monotonic() > deadline:
                raise SystemExit(f"N={n}: a page had no reply within 60 s: "
                                 + json.dumps([p.execute_script("return th.error") for p in pages]))
            time.sleep(0.5)
        skip = [p.execute_script("return th.turns.length") for p in pages]
        others = {"browsers": [psutil.Process(p.service.process.pid) for p in pages],
                  "server": [psutil.Process(server_pid)] if server_pid else []}
        psutil.cpu_percent()
        cpu0, t0, busy0 = gateway.cpu_s(), time.monotonic(), {k: tree_cpu_s(v) for k, v in others.items()}
        time.sleep(seconds)
        cpu1, t1, busy1 = gateway.cpu_s(), time.monotonic(), {k: tree_cpu_s(v) for k, v in others.items()}
        machine, load = psutil.cpu_percent(), os.getloadavg()[0]
        turns = [t for p, k in zip(pages, skip) for t in p.execute_script("return th.turns")[k:]]
        stats = gateway.stats()
    gateway.stop()
    window = {t["turn_id"] for t in turns}
    recent = [r for r in stats["recent"] if r["turn_id"] in window]  # the gateway's figures of the same turns
    audio = [t["first_audio_ms"] for t in turns if t["first_audio_ms"] is not None]
    frame = [t["first_frame_ms"] for t in turns if t["first_frame_ms"] is not None]
    figures = {k: [r[k] for r in recent if r[k] is not None]
               for k in ("server_audio_ms", "server_video_ms", "gateway_audio_ms", "gateway_video_ms")}
    return {
        "sessions": n, "turns": len(turns), "interrupted": sum(bool(t["interrupted"]) for t in turns),
        "browser_first_audio_ms": {"p50": pct(audio, 50), "p95": pct(audio, 95), "n": len(audio)},
        "browser_first_frame_ms": {"p50": pct(frame, 50), "p95": pct(frame, 95), "n": len(frame)},
        **{k: {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)} for k, v in figures.items()},
        "gateway_cpu_pct_per_session": round(100.0 * (cpu1 - cpu0) / (t1 - t0) / n, 1),
        "machine_cpu_pct": machine,  # of all cores (100 = every core busy)
        "load_average_1min": round(load, 1),  # other work on the machine shows here
        **{f"{k}_cpu_pct_of_a_core": round(100.0 * (busy1[k] - busy0[k]) / (t1 - t0), 1) for k in busy0},
        "reply_video_frames_mean": round(float(np.mean([t["video_frames"] for t in turns])), 1) if turns else None,
        "reply_frames_dropped_mean": round(float(np.mean([t["frames_dropped"] for t in turns])), 1) if turns else None,
        "gateway_frames_sent": stats["video_frames_sent"],  # whole level, warm-up included
        "gateway_frames_skipped_late": stats["video_frames_skipped_late"],
        "window_s": round(t1 - t0, 1),
    }


def report(levels: list[dict]) -> str:
    def pair(d: dict) -> str:
        return "–" if d["p50"] is None else f"{d['p50']:.0f} / {d['p95']:.0f}"

    lines = ["| browsers | turns | first audio (browser) | first frame (browser) | server: first audio at gateway "
             "| gateway added: audio / video (p50) | gateway CPU per session | machine CPU (browsers, server) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in levels:
        lines.append(f"| {r['sessions']} | {r['turns']} | {pair(r['browser_first_audio_ms'])} ms | "
                     f"{pair(r['browser_first_frame_ms'])} ms | {pair(r['server_audio_ms'])} ms | "
                     f"{r['gateway_audio_ms']['p50']} / {r['gateway_video_ms']['p50']} ms (p95 "
                     f"{r['gateway_audio_ms']['p95']} / {r['gateway_video_ms']['p95']}) | "
                     f"{r['gateway_cpu_pct_per_session']} % of a core | {r['machine_cpu_pct']:.0f} % "
                     f"({r['browsers_cpu_pct_of_a_core']:.0f} %, "
                     f"{r.get('server_cpu_pct_of_a_core', 0):.0f} % of a core;"
                     f" load {r['load_average_1min']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triton", default="localhost:8001", help="Triton's gRPC endpoint (without --start-server)")
    ap.add_argument("--start-server", action="store_true", help="run the embedded tritonserver for the benchmark")
    ap.add_argument("--sessions", default="1,2,4", help="numbers of concurrent browsers, comma-separated")
    ap.add_argument("--seconds", type=float, default=40.0, help="measurement window per level")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        raise SystemExit("needs Debian's chromium and chromium-driver (make system-deps)")
    args.http_port, args.grpc_port, args.metrics_port = free_ports(3)
    levels = []
    with tempfile.TemporaryDirectory(prefix="webrtc-bench-") as tmp, ExitStack() as stack:
        server_pid = None
        if args.start_server:
            server = stack.enter_context(start_server(args))
            args.triton, server_pid = server.options.grpc_url, server.process.pid
        wav, loop_s = question_wav(Path(tmp))
        for n in (int(x) for x in args.sessions.split(",")):
            print(f"== {n} browser(s), {args.seconds:g} s", flush=True)
            levels.append(run_level(n, args.triton, wav, loop_s, args.seconds, Path(tmp), server_pid))
            print(json.dumps(levels[-1]), flush=True)
    out = {"hardware": hardware(), "command": "python -m loadtests.webrtc " + " ".join(argv or sys.argv[1:]),
           "options": OPTIONS, "levels": levels}
    print(report(levels))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
