"""Bad input, kind by kind, against the real server, while healthy sessions keep completing.

Every case below is sent to the session `server` (raw gRPC for turns, so that malformed tensors get
through the client SDK; the SDK for avatar registrations) while a healthy text turn loops beside
them. Each case either names its problem in the error, or is accepted with a documented handling:

  * clipped audio (samples at +-1.0) is ACCEPTED: loud microphones clip, Whisper copes; samples
    beyond +-2 (int16 values sent as float) are refused;
  * control characters in text are STRIPPED (newline and tab kept); text that is nothing but
    control characters is then empty and refused;
  * chat-template markup (`<|im_start|>` ...) in text is STRIPPED (it would be special tokens to the
    LLM); "ignore your instructions" prompt injection is otherwise just the user's words: the turn
    completes, the reply is spoken, nothing of the system prompt comes back;
  * an avatar image with several faces is ACCEPTED: the largest is used and the message says so.

Then: a client that cancels mid-stream, the avatar store's bound, and resident memory before and
after every case 5 more times (growth <= 10%).
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from bad_inputs import BY_NAME, CASES, HEALTHY, INJECTION, LIMITS, Images, _png, decompression_bomb, run_all
from server_metrics import metric

from ensemble import metrics
from ensemble.avatar import Avatar, AvatarStore, demo_avatar_png
from ensemble.errors import InputError
from export.contract import events as ev
from export.contract.vocab import DEFAULT_SYSTEM

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def images() -> Images:
    demo = demo_avatar_png()
    img = cv2.imdecode(np.frombuffer(demo, np.uint8), cv2.IMREAD_COLOR)
    grad = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    return Images(demo=demo, two_faces=_png(np.concatenate([img, img], axis=1)), faceless=_png(grad),
                  one_pixel=_png(np.full((1, 1, 3), 128, np.uint8)), bomb=decompression_bomb())


@pytest.fixture(scope="module")
def outcomes(server, client, avatar, images):
    t0 = time.perf_counter()
    results, healthy = run_all(server, client, avatar, images)
    print(f"\n{len(CASES)} bad-input cases beside {len(healthy)} healthy turns in {time.perf_counter() - t0:.1f} s")
    return results, healthy


# ---------------------------------------------------------------- the checks

def test_there_are_at_least_25_kinds():
    assert len(CASES) >= 25


def test_healthy_sessions_complete_beside_every_case(outcomes):
    results, healthy = outcomes
    assert healthy, "no healthy turn ran"
    for _, _, r in healthy:
        assert r.done is not None and r.audio.size > 0 and len(r.frames) > 0
    h0, h1 = min(h[0] for h in healthy), max(h[1] for h in healthy)
    for name, o in results.items():  # each case ran while healthy turns were being served
        assert h0 <= o.start and o.end <= h1, name


@pytest.mark.parametrize("name", [c.name for c in CASES if c.expect is not None])
def test_bad_input_is_refused_naming_the_problem(outcomes, name):
    o = outcomes[0][name]
    assert o.error is not None, f"{name}: accepted, events {[e.type for e in o.events]}"
    assert BY_NAME[name].expect.lower() in o.error.lower(), f"{name}: {o.error}"
    assert ev.DONE not in [e.type for e in o.events]
    print(f"{name}: refused in {(o.end - o.start) * 1000:.0f} ms: {o.error[:160]}")


@pytest.mark.parametrize("name", ["clipped audio", "control characters in text", "prompt injection"])
def test_documented_accepted_turns_complete(outcomes, name):
    o = outcomes[0][name]
    assert o.error is None, f"{name}: {o.error}"
    kinds = [e.type for e in o.events]
    assert kinds[-1] == ev.DONE and ev.AUDIO in kinds, kinds
    if name == "clipped audio":
        assert ev.TRANSCRIPT in kinds


def test_prompt_injection_leaks_nothing(outcomes):
    o = outcomes[0]["prompt injection"]
    done = o.events[-1].data
    assert done["transcript"] == ""  # a text turn has no transcript: the prompt is never echoed as one
    assert ev.TRANSCRIPT not in [e.type for e in o.events]
    everything = b"\n".join(e.to_json() for e in o.events).decode()
    assert DEFAULT_SYSTEM not in everything
    assert "<|im_" not in everything and "<|endoftext|>" not in everything
    assert done["reply"].strip() and done["audio_samples"] > 0  # the reply is spoken


def test_chat_markup_is_stripped_from_user_text():
    from ensemble.text import validate_text

    assert validate_text(INJECTION, 2000).startswith("Ignore all previous instructions")
    marker = re.compile(r"<\|[^<>|\s]*\|>")
    assert not marker.search(validate_text(INJECTION, 2000))
    assert not marker.search(validate_text("a <|im_<|x|>start|> b", 100))
    assert validate_text("x <| not a marker |> y", 100) == "x <| not a marker |> y"


def test_several_faces_use_the_largest_and_say_so(outcomes):
    o = outcomes[0]["two faces"]
    assert o.error is None, o.error
    assert o.message.startswith("found 2 faces; using the largest"), o.message


def test_path_traversal_id_is_refused_before_the_filesystem(tmp_path, monkeypatch):
    store = AvatarStore(tmp_path)
    touched = []
    for name in ("is_file", "exists", "open", "stat"):
        monkeypatch.setattr(type(tmp_path), name, lambda *a, _n=name, **k: touched.append(_n))
    monkeypatch.setattr(np, "load", lambda *a, **k: touched.append("np.load"))
    for bad in ("../../etc/passwd", "../" * 8 + "etc/passwd", "/etc/passwd", "0123456789abcdef/../x"):
        with pytest.raises(InputError, match="16 lowercase hex characters"):
            store.load(bad)
    assert touched == []


# ---------------------------------------------------------------- cancel mid-stream

def _active_sessions(server) -> float:
    from deploy.drain import active_sessions

    return active_sessions(f"http://localhost:{server.options.metrics_port}/metrics")


def cancel_after_first_audio(client, avatar_id: str) -> int:
    """Start a long turn, stop reading after its first audio chunk (the SDK cancels the stream)."""
    seen = 0
    with client.ask(avatar_id=avatar_id, text="Please tell me a long story about the sea.",
                    options={"max_reply_tokens": 120, "ignore_eos": True}) as stream:
        for e in stream:
            seen += 1
            if e.type == ev.AUDIO:
                break
    return seen


def test_client_cancelling_mid_stream(server, client, avatar):
    cancelled = 'outcome="cancelled"'
    before = metric(server, metrics.TURNS.name, cancelled)
    with ThreadPoolExecutor(2) as pool:
        healthy = pool.submit(client.turn, avatar_id=avatar.id, **HEALTHY)
        seen = cancel_after_first_audio(client, avatar.id)
        assert healthy.result(timeout=120).done is not None
    assert seen >= 1
    deadline = time.monotonic() + 10
    while (_active_sessions(server) != 0 or metric(server, metrics.TURNS.name, cancelled) <= before) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _active_sessions(server) == 0
    assert metric(server, metrics.TURNS.name, cancelled) == before + 1  # the server stopped that turn
    after = client.turn(avatar_id=avatar.id, **HEALTHY)  # the next turn works
    assert after.done is not None and after.audio.size > 0


# ---------------------------------------------------------------- bounded avatar store

def _fake_avatar(i: int) -> Avatar:
    img = np.full((8, 8, 3), i % 256, np.uint8)
    return Avatar(f"{i:016x}", img, (0, 8, 0, 8), np.zeros((96, 96, 3), np.uint8), 1, "test", np.zeros((6, 2), np.float32))


def test_avatar_store_keeps_at_most_max_avatars_evicting_the_least_recently_used(tmp_path):
    store = AvatarStore(tmp_path, capacity=2, max_avatars=3)
    for i in range(3):
        assert store.save(_fake_avatar(i)) == []
    AvatarStore(tmp_path).load(f"{0:016x}")  # another process (the orchestrator) uses avatar 0
    assert store.save(_fake_avatar(3)) == [f"{1:016x}"]  # 1 is now the least recently used
    assert store.save(_fake_avatar(4)) == [f"{2:016x}"]
    assert sorted(store.stored_ids()) == [f"{i:016x}" for i in (0, 3, 4)]
    with pytest.raises(InputError, match="register the avatar first"):
        AvatarStore(tmp_path).load(f"{1:016x}")
    assert store.save(_fake_avatar(1)) == [f"{0:016x}"]  # registering it again brings it back
    size = (tmp_path / f"{1:016x}.npz").stat().st_size
    small = AvatarStore(tmp_path, max_bytes=2 * size)  # the byte bound evicts the same way
    assert len(small.evict()) == 1 and len(small.stored_ids()) == 2
    assert LIMITS.max_avatars == 1000


# ---------------------------------------------------------------- memory stays flat

WARM_UP = 3

def _process_rss(server) -> dict[str, tuple[int, int]]:
    """{process name: (RSS, PSS) bytes} of tritonserver and every stub (named by its model)."""
    import psutil

    root = psutil.Process(server.process.pid)
    out = {}
    for p in [root] + root.children(recursive=True):
        try:
            info = p.memory_full_info()
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        name = "tritonserver" if p.pid == root.pid else next(
            (part.split("/")[-3] for part in cmd if part.endswith(("model.py", "model.onnx"))), str(p.pid))
        out[name] = (info.rss, info.pss)
    return out


def _server_rss(server) -> tuple[int, int, int]:
    """(RSS bytes summed over tritonserver and all its children, number of processes, PSS bytes summed)."""
    procs = _process_rss(server)
    return sum(r for r, _ in procs.values()), len(procs), sum(p for _, p in procs.values())


def test_memory_stays_flat_over_every_bad_input_5_times(server, client, avatar, images, outcomes):
    """Resident memory of tritonserver and its stubs, before and after every case 5 more times.

    "Before" is taken after the `outcomes` pass and WARM_UP more rounds: the first rounds fill
    bounded pools for good (the Python backend's shared-memory pool of `talking_head` grows to hold
    the 38 MB audio beside other allocations; tritonserver's heap keeps what the big gRPC messages
    needed, 250-500 MB after 38 MB requests, more the more of them were in flight at once; ONNX
    Runtime arenas; first imports); a leak keeps growing after that, a pool does not. So that the
    high-water mark of tritonserver's heap is the same in every round, the two BIG requests go one
    at a time after the others. RSS is summed over the processes, so shared memory mapped by both
    tritonserver and a stub counts twice; PSS (each shared page split between its mappers) is
    printed beside it. The rounds run without the healthy loop (the `outcomes` pass has it): the
    measure is what the bad inputs leave behind.
    """
    rounds = 5

    def one_round():
        results, _ = run_all(server, client, avatar, images, workers=4, with_healthy=False, big_one_at_a_time=True)
        for c in CASES:
            assert (results[c.name].error is None) == (c.expect is None), (c.name, results[c.name].error)
        cancel_after_first_audio(client, avatar.id)

    def settled_rss():
        deadline = time.monotonic() + 10
        while _active_sessions(server) != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return _server_rss(server)

    cold, _, cold_pss = _server_rss(server)
    for _ in range(WARM_UP):
        one_round()
    before, n_before, before_pss = settled_rss()
    per_before = _process_rss(server)
    t0 = time.perf_counter()
    for _ in range(rounds):
        one_round()
    took = time.perf_counter() - t0
    after, n_after, after_pss = settled_rss()
    growth = after / before - 1
    mib = 2**20
    print(f"\nresident memory of tritonserver + {n_before - 1} stubs (RSS sum / PSS sum): "
          f"after the first pass {cold / mib:.0f} / {cold_pss / mib:.0f} MiB, "
          f"after {WARM_UP} warm-up rounds {before / mib:.0f} / {before_pss / mib:.0f} MiB, "
          f"after {rounds} x {len(CASES) + 1} more bad inputs {after / mib:.0f} / {after_pss / mib:.0f} MiB "
          f"(RSS {growth:+.1%}, PSS {after_pss / before_pss - 1:+.1%}); the {rounds} rounds took {took:.1f} s")
    per_after = _process_rss(server)
    print("  RSS MiB per process, before -> after: " + ", ".join(
        f"{name} {per_before[name][0] / mib:.0f} -> {per_after[name][0] / mib:.0f}" for name in sorted(per_before)
        if name in per_after))
    assert n_after == n_before, "a stub process appeared or died"
    assert growth <= 0.10
