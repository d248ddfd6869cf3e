"""Issue 15's attack classes re-run against the real server and its front door, with their figures.

    python -m loadtests.adversarial [--repository build/tiny_repository] [--out FILE]

Starts the embedded server on free ports and a front door (two API keys: the victim's and mallory's); a victim
client loops short text turns through the door all along. Each class sends its cases and records, per case, whether
the refusal was clean (the error names the problem, no crash) and whether an attack got through (a hijack); beside
them, the victim's failed turns (collateral damage) and its slowest turn, the server's liveness after the class
(crashes and hangs), and the resident memory of tritonserver and its stubs before and after. Prints a table
(RELIABILITY.md, issue 15).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.sdk import TalkingHeadClient
from client.wire import action_inputs, auth_headers, cancel_inputs, turn_inputs
from deploy.front_door import FrontDoorOptions, FrontDoorThread
from deploy.front_door.quota import ApiKeys, Limits
from deploy.processes import server_ports, stubs
from deploy.server import EmbeddedServer, ServerOptions
from deploy.watchdog import Watchdog
from ensemble.avatar import demo_avatar_png
from export.contract.artifacts import manifest_preset, read_manifest
from export.contract.layout import BUILD
from export.contract.spec import AVATAR_REGISTRY, TALKING_HEAD, VOCODER

KEYS = {"victim": "victim-key-0123456789abcdef", "mallory": "mallory-key-0123456789abcdef"}
SHORT = {"max_reply_tokens": 8}


@dataclass
class Case:
    name: str
    clean: bool  # refused with an error naming the problem (or accepted with the documented handling)
    hijack: bool = False  # the attack reached someone else's session or evicted it
    detail: str = ""


@dataclass
class ClassResult:
    name: str
    cases: list[Case] = field(default_factory=list)
    victim_turns: int = 0
    victim_failed: int = 0
    victim_slowest_s: float = 0.0
    alive_after: bool = True
    memory_mib: list[dict[str, float]] = field(default_factory=list)  # by process: before, then after each pass


class Victim:
    """Short text turns through the door in a loop, on their own thread; failures and durations counted."""

    def __init__(self, url: str, avatar: str, **client_kwargs):  # e.g. ssl=True, root_certificates=CA
        self.url, self.avatar, self.client_kwargs = url, avatar, client_kwargs
        self.turns = self.failed = 0
        self.slowest = 0.0
        self.times: list[float] = []  # each successful turn's duration
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with TalkingHeadClient(self.url, api_key=KEYS["victim"], turn_timeout_s=60, **self.client_kwargs) as c:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    c.turn(avatar_id=self.avatar, text="Hello there.", options=SHORT)
                    self.times.append(time.perf_counter() - t)
                except Exception as e:  # counted: collateral damage
                    self.failed += 1
                    self.errors.append(str(e)[:200])
                self.turns += 1
                self.slowest = max(self.slowest, time.perf_counter() - t)

    def reset(self) -> None:
        self.turns = self.failed = 0
        self.slowest = 0.0
        self.times.clear()

    def start(self) -> "Victim":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def stream_once(url: str, inputs: list, headers: dict | None = None, request_id: str = "", timeout_s: float = 60,
                model: str = TALKING_HEAD.name, **request) -> str | None:
    """One request on a raw stream until its final response: its error message, or None. `request`: more of
    tritonclient's async_stream_infer arguments (outputs, parameters, enable_empty_final_response)."""
    q: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(url) as c:
        c.start_stream(callback=lambda result, error: q.put((result, error)), headers=headers)
        c.async_stream_infer(model, inputs, request_id=request_id, **{"enable_empty_final_response": True, **request})
        try:
            while True:
                result, error = q.get(timeout=timeout_s)
                if error is not None:
                    return str(error)
                if result.get_response().parameters["triton_final_response"].bool_param:
                    return None
        finally:
            c.stop_stream()


def infer_error(url: str, model: str, arrays: dict[str, np.ndarray], headers: dict | None = None) -> str | None:
    """One unary request: its error message, or None when it was answered."""
    inputs = []
    for name, a in arrays.items():
        dtype = "BYTES" if a.dtype == object else {"float32": "FP32", "int64": "INT64", "int32": "INT32"}[str(a.dtype)]
        x = grpcclient.InferInput(name, list(a.shape), dtype)
        x.set_data_from_numpy(a)
        inputs.append(x)
    try:
        with grpcclient.InferenceServerClient(url) as c:
            c.infer(model, inputs, headers=headers, client_timeout=120)
        return None
    except Exception as e:
        return str(e)


def refused(error: str | None, *needles: str) -> bool:
    return error is not None and any(n in error for n in needles)


def memory_mib(server: EmbeddedServer) -> dict[str, float]:
    """Resident memory of tritonserver and of its stubs (summed per model), MiB."""
    procs = [("tritonserver", server.process.pid)] + [(s.model, s.pid) for s in stubs(server.process.pid)]
    out: dict[str, float] = {}
    for name, pid in procs:
        try:
            out[name] = out.get(name, 0.0) + psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


# ---------------------------------------------------------------- the classes

def stage_abuse(env) -> list[Case]:
    """Stage models reached directly: values out of range share batches with the victim's requests."""
    url = env.server.options.grpc_url
    ids = np.array([[1, 2, 3, 4]], np.int64)
    good = {"phoneme_lengths": np.array([[4]], np.int64), "scales": np.array([[0.667, 1.0, 0.8]], np.float32),
            "seed": np.array([[1]], np.int64)}
    preset = manifest_preset(read_manifest(env.server.options.manifest_dir))
    latent_channels = VOCODER.preset_dims(preset)["latent_channels"]
    attempts = {
        "tts: phoneme ids past the vocabulary": ("tts", {"phonemes": ids * 10**6, **good}, ("holds values",)),
        "tts: negative phoneme ids": ("tts", {"phonemes": -ids, **good}, ("holds values",)),
        "tts: length scale 1000 (unbounded audio)": (
            "tts", {"phonemes": ids, **good, "scales": np.array([[0.667, 1000.0, 0.8]], np.float32)}, ("holds values",)),
        "tts: NaN noise scale": (
            "tts", {"phonemes": ids, **good, "scales": np.array([[np.nan, 1.0, 0.8]], np.float32)}, ("NaN",)),
        "vocoder: NaN latents": ("vocoder", {"latents": np.full((1, latent_channels, 8), np.nan, np.float32)}, ("NaN",)),
        "vocoder: 5000 frames (past the axis)": (
            "vocoder", {"latents": np.zeros((1, latent_channels, 5000), np.float32)}, ("allowed",)),
    }
    cases = []
    for name, (model, arrays, needles) in attempts.items():
        errors = [infer_error(url, model, arrays) for _ in range(4)]  # again and again, beside the victim's turns
        cases.append(Case(name, all(refused(e, *needles) for e in errors), detail=(errors[0] or "answered")[:160]))
        e = infer_error(env.door.url, model, arrays, auth_headers(KEYS["mallory"]))
        cases.append(Case(f"{name}, through the front door", refused(e, "is not exposed"), detail=(e or "")[:160]))
    return cases


def sessions(env) -> list[Case]:
    """Another client names the victim's session (it reaches its own session of that id, never the victim's); a
    flood of new session ids while the victim's reply runs."""
    door, avatar, cases = env.door.url, env.avatar, []
    long_turn: dict = {}

    def victim_reply():
        with TalkingHeadClient(door, api_key=KEYS["victim"], turn_timeout_s=120) as c:
            try:
                long_turn["result"] = c.turn(avatar_id=avatar, text="Tell me a long story.", options={
                    "session": "victim-s", "ignore_eos": True, "max_reply_tokens": 64})
            except Exception as e:
                long_turn["error"] = str(e)

    t = threading.Thread(target=victim_reply)
    t.start()
    time.sleep(1.0)
    mallory = auth_headers(KEYS["mallory"])
    tries = {
        "cancel the victim's session (door, another key)": (door, cancel_inputs("victim-s", "x" * 24), mallory),
        "a turn in the victim's session (door)": (
            door, turn_inputs(avatar_id=avatar, text="Hi.", options={"session": "victim-s", "session_token": "y" * 24}),
            mallory),
        "idle in the victim's session (door)": (door, action_inputs("idle", avatar, {
            "session": "victim-s", "idle_s": 0.1, "session_token": "z" * 24}), mallory),
        "cancel with a guessed token (direct)": (env.server.options.grpc_url, cancel_inputs("victim-s", "g" * 32), None),
    }
    answers = {name: stream_once(url, inputs, headers) for name, (url, inputs, headers) in tries.items()}
    flood_errors = []
    for k in range(200):  # past the per-client limit (64): the flooder's own sessions go, never the victim's
        flood_errors.append(stream_once(env.server.options.grpc_url, action_inputs("idle", avatar, {
            "session": f"flood-{k}", "idle_s": 0.04, "session_token": "f" * 32})))
    t.join(180)
    done = long_turn.get("result")
    survived = done is not None and done.done is not None and done.done.get("interrupted") is None
    for name, e in answers.items():  # each reaches the attacker's own session of that id: served, the victim's untouched
        cases.append(Case(name, e is None, hijack=not survived,
                          detail=f"{e or 'served in its own session'}; victim's reply "
                                 f"{'ran to its end' if survived else 'was cut'}"[:160]))
    cases.append(Case("200 new session ids from one client during the victim's reply",
                      all(e is None or "sessions open and busy" in e for e in flood_errors), hijack=not survived,
                      detail=f"victim's reply {'ran to its end' if survived else long_turn.get('error', 'was cut')}"))
    return cases


def oversize(env) -> list[Case]:
    """Sizes and option types: refused by size before parsing, errors that name the problem."""
    url, avatar = env.server.options.grpc_url, env.avatar
    nested = "[" * 2000 + "]" * 2000
    tries = {
        "50 MB of whitespace around a word": (turn_inputs(avatar_id=avatar, text=" " * 50_000_000 + "hi"), "", ("bytes",)),
        "a 4 MB request id": (turn_inputs(avatar_id=avatar, text="Hi."), "i" * 4_000_000, ("request id",)),
        "options nested 2000 deep": (turn_inputs(avatar_id=avatar, text="Hi.", options=f'{{"x": {nested}}}'), "",
                                     ("nested", "bytes")),
        "top_k 2.5": (turn_inputs(avatar_id=avatar, text="Hi.", options={"top_k": 2.5}), "", ("integer",)),
        "seed as a string": (turn_inputs(avatar_id=avatar, text="Hi.", options={"seed": "x"}), "", ("number",)),
        "a denormal temperature": (turn_inputs(avatar_id=avatar, text="Hi.", options={"temperature": 1e-310}), "",
                                   ("temperature",)),
    }
    cases = []
    for name, (inputs, rid, needles) in tries.items():
        e = stream_once(url, inputs, request_id=rid)
        cases.append(Case(name, refused(e, *needles), detail=(e or "accepted")[:160]))
    img = cv2.imdecode(np.frombuffer(demo_avatar_png(), np.uint8), cv2.IMREAD_COLOR)
    ok, jpg = cv2.imencode(".jpg", cv2.resize(img, (4096, 4096)))
    with TalkingHeadClient(env.door.url, api_key=KEYS["mallory"]) as c:
        info = c.register_avatar(jpg.tobytes())
    cases.append(Case("a 4096 x 4096 avatar", "downscaled" in info.message, detail=info.message[:160]))
    return cases


def stalled_reader(env) -> list[Case]:
    """A client that stops reading its stream through the door, and one that reads slower than its stream comes:
    each cut off, its turn cancelled upstream."""
    stall = env.door.options.limits.max_stall_s
    cases = []
    for name, pause_s in (("a client that stops reading an idle stream", 60.0),
                          (f"a client that takes one response every {stall / 2:g} s of an idle stream", stall / 2)):
        errors: list = []
        release = threading.Event()

        def reader(result, error, errors=errors, release=release, pause_s=pause_s):
            if error is not None:
                errors.append(error)
            release.wait(pause_s)

        client = grpcclient.InferenceServerClient(env.door.url, channel_args=[("grpc.http2.bdp_probe", 0)])
        client.start_stream(callback=reader, headers={**auth_headers(KEYS["mallory"]), "triton_grpc_error": "true"})
        client.async_stream_infer(TALKING_HEAD.name, action_inputs("idle", env.avatar, {"idle_s": 20}))
        time.sleep(3 * stall + 4)
        release.set()
        deadline = time.monotonic() + 30
        while not errors and time.monotonic() < deadline:
            time.sleep(0.1)
        client.stop_stream()
        client.close()
        e = str(errors[0]) if errors else None
        cases.append(Case(name, refused(e, "did not keep up"), detail=(e or "")[:160]))
    return cases


def door_only(env) -> list[Case]:
    """Requests the front door itself must refuse (a third pass, 2026-12-06): an output with parameters (Triton
    2.51 dies of `classification` on a BYTES output), a non-bool final-response flag, options of millions of empty
    elements, a JPEG of tens of thousands of scans."""
    door, avatar, mallory = env.door.url, env.avatar, auth_headers(KEYS["mallory"])
    hi = turn_inputs(avatar_id=avatar, text="Hi.", options=SHORT)
    many = turn_inputs(avatar_id=avatar, text="Hi.", options=SHORT)
    next(x for x in many if x.name() == "options")._raw_content = b"\0\0\0\0" * 2_900_000  # shape [1], 2.9M elements
    tries = {
        "classification on the event output": (
            dict(inputs=hi, outputs=[grpcclient.InferRequestedOutput("event", class_count=1)]), ("not served",)),
        "a string triton_enable_empty_final_response": (
            dict(inputs=hi, enable_empty_final_response=False,
                 parameters={"triton_enable_empty_final_response": "true"}), ("must be a bool",)),
        "options of 2.9M empty elements (11.6 MB)": (dict(inputs=many), ("one BYTES element",)),
    }
    cases = []
    for name, (request, needles) in tries.items():
        e = stream_once(door, headers=mallory, timeout_s=30, **request)
        cases.append(Case(name, refused(e, *needles), detail=(e or "accepted")[:160]))
    img = cv2.imdecode(np.frombuffer(demo_avatar_png(), np.uint8), cv2.IMREAD_COLOR)
    ok, prog = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    prog = prog.tobytes()
    last = prog.rindex(b"\xff\xda")  # the last scan repeated: each scan is a decoding pass over the whole image
    bomb = prog[:-2] + prog[last:-2] * 300 + b"\xff\xd9"
    e = infer_error(door, AVATAR_REGISTRY.name, {"image": np.array([bomb], dtype=object)}, headers=mallory)
    scans = bomb.count(b"\xff\xda")
    cases.append(Case(f"a JPEG of {scans} scans", refused(e, "scans"), detail=(e or "accepted")[:160]))
    return cases


def fourth_pass(env) -> list[Case]:
    """A fourth pass (2026-12-06): text that crashes espeak-ng (it killed the orchestrator's stub), the naive
    baseline through the door, a key cycling the shared avatar store, 100 legal scans of a 4096x4096 JPEG."""
    door, avatar, mallory = env.door.url, env.avatar, auth_headers(KEYS["mallory"])
    cases = []
    for name, text in (("say 'a.m.' x 44", "a.m." * 44), ("say \"s'\" x 220", "s'" * 220)):
        e = stream_once(door, turn_inputs(avatar_id=avatar, text=text, options={"action": "say"}), headers=mallory)
        cases.append(Case(name, refused(e, "espeak-ng crashed"), detail=(e or "accepted")[:160]))
    e = stream_once(door, turn_inputs(avatar_id=avatar, text="Hi.", options={"streaming": False}), headers=mallory)
    cases.append(Case("streaming false through the door", refused(e, "for benchmarks"), detail=(e or "")[:160]))
    img = cv2.resize(cv2.imdecode(np.frombuffer(demo_avatar_png(), np.uint8), cv2.IMREAD_COLOR), (4096, 4096))
    prog = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 30])[1].tobytes()
    heavy = prog[:-2] + prog[prog.rindex(b"\xff\xda"):-2] * (100 - prog.count(b"\xff\xda")) + b"\xff\xd9"
    for name, image, needle in (("100 scans of a 4096x4096 JPEG", heavy, "million pixels in all"),
                                ("registrations past the key's budget", demo_avatar_png(), "avatar registrations")):
        for _ in range(env.door.options.limits.registration_burst + 1):  # the budget's burst, then one more
            e = infer_error(door, AVATAR_REGISTRY.name, {"image": np.array([image], dtype=object)}, headers=mallory)
            if e is not None:
                break
        cases.append(Case(name, refused(e, needle), detail=(e or "accepted")[:160]))
    return cases


def live_stub(server_pid: int, model: str, wait_s: float = 10.0):
    """The model's stub process, waiting up to `wait_s` for one (a stub Triton is restarting); None if none."""
    deadline = time.monotonic() + wait_s
    while True:
        found = [st for st in stubs(server_pid) if st.model == model]
        if found or time.monotonic() > deadline:
            return found[0] if found else None
        time.sleep(0.5)


def faults(env) -> list[Case]:
    """A stage stub and the orchestrator's stub killed: the watchdog brings each back; the door ends the dead
    orchestrator's streams."""
    server, cases = env.server, []
    dog = Watchdog(server.options.grpc_url, server.reload_model, timeout_s=20, log=lambda s: None)
    for model in ("tts", "talking_head"):
        before = live_stub(server.process.pid, model)
        if before is None:
            cases.append(Case(f"the {model} stub killed", False, detail=f"no live {model} stub to kill: "
                              + ", ".join(sorted(st.instance for st in stubs(server.process.pid)))))
            continue
        err: dict = {}
        if model == "talking_head":  # a stream through the door in flight when it dies
            q: queue.Queue = queue.Queue()
            c = grpcclient.InferenceServerClient(env.door.url)
            c.start_stream(callback=lambda result, error: q.put(error), headers={**auth_headers(KEYS["mallory"]),
                                                                    "triton_grpc_error": "true"})
            c.async_stream_infer(TALKING_HEAD.name, action_inputs("idle", env.avatar, {"idle_s": 60}))
            q.get(timeout=60)
        os.kill(before.pid, signal.SIGKILL)
        if model == "talking_head":
            while (e := q.get(timeout=60)) is None:
                pass
            err["stream"] = str(e)
            c.stop_stream()
            c.close()
        broken = dog.check()
        healed = dog.check()
        dead_failed = env.victim.failed  # while the stub was dead; the class's own figures start after the reload
        env.victim.reset()
        clean = broken.reloaded == model and healed.ok
        if model == "talking_head":
            clean = clean and refused(err["stream"], "sent nothing for")
        cases.append(Case(f"the {model} stub killed", clean,
                          detail=f"victim turns failed while it was dead: {dead_failed}; "
                                 f"reloaded {broken.reloaded} in {broken.reload_s or 0:.2f} s; next round "
                                 f"{'ok' if healed.ok else 'failed'}" + (f"; stream: {err['stream'][:80]}" if err else "")))
    return cases


CLASSES: list[tuple[str, Callable]] = [("stage models reached directly", stage_abuse), ("sessions", sessions),
                                       ("sizes and option types", oversize), ("a client that stops reading", stalled_reader),
                                       ("requests only the door refuses", door_only),
                                       ("a fourth pass: text, options, avatars", fourth_pass), ("stub faults", faults)]


@dataclass
class Env:
    server: EmbeddedServer
    door: FrontDoorThread
    avatar: str
    victim: "Victim"


def alive(server: EmbeddedServer) -> bool:
    """Whether tritonserver still runs and answers."""
    if server.process.poll() is not None:
        return False
    try:
        with grpcclient.InferenceServerClient(server.options.grpc_url) as probe:
            return probe.is_server_live()
    except InferenceServerException:
        return False


def run(repository: Path, passes: int = 2, only: tuple[str, ...] = ()) -> list[ClassResult]:
    options = ServerOptions(repository=repository, workdir=BUILD / "adversarial", exit_timeout_s=10, **server_ports())
    results = []
    with EmbeddedServer(options) as server:
        door_options = FrontDoorOptions(upstream=options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys(KEYS),
                                        limits=Limits(max_stall_s=2.0, max_upstream_silence_s=5.0, rate=200, burst=400))
        with FrontDoorThread(door_options) as door:
            with TalkingHeadClient(door.url, api_key=KEYS["victim"]) as c:
                avatar = c.register_avatar(demo_avatar_png()).id
            victim = Victim(door.url, avatar).start()
            env = Env(server, door, avatar, victim)
            time.sleep(10)  # the victim's first turns warm every model up: their memory is not the attacks'
            for name, fn in CLASSES:
                if only and fn.__name__ not in only:
                    continue
                victim.reset()
                r = ClassResult(name, memory_mib=[memory_mib(server)])
                for k in range(passes):  # the same cases again: memory that stays must not keep growing
                    cases = fn(env)
                    time.sleep(3)  # the victim's turn in flight ends; caches settle
                    r.memory_mib.append(memory_mib(server))
                    if k == 0:
                        r.cases = cases
                        r.victim_turns, r.victim_failed, r.victim_slowest_s = victim.turns, victim.failed, victim.slowest
                r.alive_after = alive(server)
                results.append(r)
                print(f"{name}: {sum(c.clean for c in r.cases)}/{len(r.cases)} clean, victim {r.victim_failed}/"
                      f"{r.victim_turns} failed", flush=True)
                if not r.alive_after:  # the classes left cannot run; the launcher would exit non-zero here
                    print(f"tritonserver died (exit status {server.process.poll()}): see "
                          f"{options.workdir / 'tritonserver.log'}", flush=True)
                    break
            victim.stop()
    return results


def grower(memory: list[dict[str, float]]) -> str:
    """The process that grew most over the passes, and its growth per pass ("—" when nothing ran at the end)."""
    if not memory[-1]:
        return "—"
    name = max(memory[-1], key=lambda k: memory[-1][k] - memory[0].get(k, memory[-1][k]))
    steps = [b.get(name, 0.0) - a.get(name, 0.0) for a, b in zip(memory, memory[1:])]
    return f"{name} " + ", ".join(f"{d:+.0f}" for d in steps)


def table(results: list[ClassResult]) -> str:
    lines = ["| class | cases | clean | hijacks | victim turns failed (slowest) | alive after | memory MiB: before, "
             "after each pass (growth of the largest) |", "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in results:
        lines.append(f"| {r.name} | {len(r.cases)} | {sum(c.clean for c in r.cases)} | {sum(c.hijack for c in r.cases)} "
                     f"| {r.victim_failed} of {r.victim_turns} ({r.victim_slowest_s:.1f} s) | {'yes' if r.alive_after else 'NO'} "
                     f"| {', '.join(f'{sum(m.values()):.0f}' for m in r.memory_mib)} ({grower(r.memory_mib)}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=BUILD / "tiny_repository",
                    help="model repository (default: the tiny preset's, `python -m export --preset tiny "
                         "--repository build/tiny_repository`)")
    ap.add_argument("--passes", type=int, default=2, help="send each class's cases this many times (memory after each)")
    ap.add_argument("--classes", nargs="+", choices=[fn.__name__ for _, fn in CLASSES], default=(),
                    help="run only these classes (default: all)")
    ap.add_argument("--out", type=Path, help="write every case as JSON here too")
    args = ap.parse_args(argv)
    results = run(args.repository, args.passes, tuple(args.classes))
    print(table(results))
    for r in results:
        for c in r.cases:
            if not c.clean or c.hijack:
                print(f"  {r.name}: {c.name}: {c.detail}")
    if args.out:
        args.out.write_text(json.dumps([{"class": r.name, "victim_failed": r.victim_failed, "victim_turns": r.victim_turns,
                                         "memory_mib": r.memory_mib, "alive_after": r.alive_after,
                                         "cases": [c.__dict__ for c in r.cases]} for r in results], indent=2))
    return 0 if all(c.clean and not c.hijack for r in results for c in r.cases) and all(r.alive_after for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
