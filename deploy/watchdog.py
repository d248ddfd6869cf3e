"""Watchdog: run the canary every few seconds and bring back the model whose Python stub died.

Triton 2.51 does not restart a dead stub: the model stays READY, health stays 200 and every request to it fails
("Stub process 'vocoder_0_0' is not healthy"). The canary (deploy/canary.py) names the failing model; the watchdog
unloads and loads it again (explicit model control; the admin key), which starts a new stub. A failure that names no
model, or the same model failing again right after its reload, is reported and left to the next round (and, in
Kubernetes, to the liveness probe that restarts the container).

Two failures are not a broken model and reload nothing: the server refusing the canary's turn as busy or draining
(`deploy.canary.busy`: under load every slot may be taken; a round then says `busy` and leaves readiness as it was,
so a full pod is not taken out of its Service, nor a full house of pods out of every one), and a model Triton does not
call ready (a dead stub leaves its model READY: one that is not was unloaded by an operator or by a drain, which the
watchdog must not undo, or is loading), unless the watchdog's own reload of it failed.

    python -m deploy.watchdog --url localhost:8001 --admin-key-env TRITON_ADMIN_KEY --interval 10

Each round prints one line: `ok in 1.32 s`, or what failed and what was reloaded. For Kubernetes probes:
`--heartbeat FILE` is touched after every round (liveness: the watchdog is not stuck), `--ready-file FILE` exists
while the last round passed (readiness: off until a spoken and a text turn have run through every model, so a pod
takes traffic only once it is warm, and off again while a model is broken).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.sdk import ClientError
from deploy import canary
from deploy.admin import admin_headers
from export.contract.layout import GRPC_URL

Reload = Callable[[str], float]  # unload + load a model; the seconds it took
ModelReady = Callable[[str], bool]


@dataclass
class Round:
    ok: bool
    seconds: float  # the canary's
    failed_model: str | None = None
    error: str = ""
    reloaded: str | None = None
    reload_s: float = 0.0
    busy: bool = False  # the server refused the canary's turn as busy or draining (deploy.canary.busy)

    def line(self) -> str:
        if self.ok:
            return f"ok in {self.seconds:.2f} s"
        if self.busy:
            return f"busy after {self.seconds:.2f} s (nothing reloaded, readiness as it was): {self.error}"
        what = f"canary failed after {self.seconds:.2f} s ({self.failed_model or 'no model named'}): {self.error}"
        return what + (f"; reloaded {self.reloaded} in {self.reload_s:.2f} s" if self.reloaded else "")


def admin_reload(url: str, admin_key: str | None, timeout_s: float = 120.0) -> Reload:
    """A Reload through Triton's model-repository API at `url` (gRPC), with the admin key."""
    import tritonclient.grpc as grpcclient

    def reload(model: str) -> float:
        t0 = time.perf_counter()
        with grpcclient.InferenceServerClient(url) as client:
            client.unload_model(model, headers=admin_headers(admin_key))
            client.load_model(model, headers=admin_headers(admin_key), client_timeout=timeout_s)
        return time.perf_counter() - t0

    return reload


def model_ready(url: str) -> ModelReady:
    """Whether Triton at `url` (gRPC) calls a model ready (an open API: no admin key)."""
    import tritonclient.grpc as grpcclient

    def ready(model: str) -> bool:
        with grpcclient.InferenceServerClient(url) as client:
            return client.is_model_ready(model)

    return ready


class Watchdog:
    """Canary rounds every `interval_s`; a round whose canary names a model reloads it (see the module docstring).
    `run_canary(timeout_s)` returns the canary's seconds or raises (deploy.canary.run by default); `is_ready(model)`
    says whether Triton calls a model ready (model_ready(url) by default)."""

    def __init__(self, url: str, reload: Reload, interval_s: float = 10.0, timeout_s: float = 10.0,
                 run_canary: Callable[[float], float] | None = None, log: Callable[[str], None] = print,
                 heartbeat: Path | None = None, ready_file: Path | None = None, is_ready: ModelReady | None = None):
        self.url, self.reload, self.interval_s, self.timeout_s, self.log = url, reload, interval_s, timeout_s, log
        self.heartbeat, self.ready_file = heartbeat, ready_file
        self.run_canary = run_canary or (lambda timeout: canary.run(url, timeout))
        self.is_ready = is_ready or model_ready(url)
        self.reload_failed: set[str] = set()  # models whose reload by this watchdog failed: tried again, ready or not
        self.rounds: list[Round] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> Round:
        """One round: the canary, then the reload of the model it names."""
        t0 = time.perf_counter()
        try:
            r = Round(ok=True, seconds=self.run_canary(self.timeout_s))
        except (ClientError, TimeoutError, OSError) as e:
            r = Round(ok=False, seconds=time.perf_counter() - t0, error=str(e), busy=canary.busy(str(e)))
            if not r.busy:
                r.failed_model = canary.failed_model(str(e))
                self._bring_back(r)
        self.rounds.append(r)
        self.log(f"watchdog: {r.line()}")
        self._mark(r)
        return r

    def _bring_back(self, r: Round) -> None:
        """Reload the model a failed round names, if it is READY (a dead stub's) or this watchdog's reload failed."""
        model = r.failed_model
        if model is None:
            return
        try:
            ready = model in self.reload_failed or self.is_ready(model)
        except Exception as e:  # Triton unreachable: nothing to reload into; the next round asks again
            r.error += f"; could not ask whether {model} is ready ({e}), so nothing was reloaded"
            return
        if not ready:
            r.error += f"; {model} is not ready (unloaded or loading), so it was left alone"
            return
        try:
            r.reload_s, r.reloaded = self.reload(model), model
            self.reload_failed.discard(model)
        except Exception as reload_error:  # reported; the next round tries again
            self.reload_failed.add(model)
            r.error += f"; its reload failed: {reload_error}"

    def _mark(self, r: Round) -> None:
        if self.heartbeat is not None:
            self.heartbeat.touch()
        if self.ready_file is not None and not r.busy:
            if r.ok:
                self.ready_file.write_text(f"{time.time():.0f}\n")
            else:
                self.ready_file.unlink(missing_ok=True)

    def run(self, rounds: int = 0) -> None:
        """Rounds every interval_s until stop() (or `rounds` of them, when > 0)."""
        n = 0
        while not self._stop.is_set():
            self.check()
            n += 1
            if 0 < rounds <= n:
                return
            self._stop.wait(self.interval_s)

    def start(self) -> "Watchdog":
        self._thread = threading.Thread(target=self.run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=GRPC_URL, help="Triton gRPC endpoint (default: %(default)s)")
    ap.add_argument("--admin-key-env", default="TRITON_ADMIN_KEY", metavar="VAR",
                    help="environment variable holding the admin key (default: %(default)s)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between rounds (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds a canary may take (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=0, help="stop after this many rounds (default: run until Ctrl-C)")
    ap.add_argument("--heartbeat", type=Path, default=None, metavar="FILE", help="touched after every round")
    ap.add_argument("--ready-file", type=Path, default=None, metavar="FILE",
                    help="exists while the last round passed (removed at start and after a failed round)")
    args = ap.parse_args(argv)
    key = os.environ.get(args.admin_key_env)
    if not key:
        print(f"watchdog: ${args.admin_key_env} is not set: reloading a model needs the admin key", file=sys.stderr)
        return 2
    if args.ready_file is not None:
        args.ready_file.unlink(missing_ok=True)  # not ready until a round has passed
    dog = Watchdog(args.url, admin_reload(args.url, key), args.interval, args.timeout, heartbeat=args.heartbeat,
                   ready_file=args.ready_file)
    try:
        dog.run(args.rounds)
    except KeyboardInterrupt:
        pass
    return 0 if dog.rounds and dog.rounds[-1].ok else 1


if __name__ == "__main__":
    sys.exit(main())
