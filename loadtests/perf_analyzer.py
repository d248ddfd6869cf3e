"""Triton's own load generator (perf_analyzer) on the orchestrator, and time to first response.

    python -m loadtests.perf_analyzer --host localhost:8001 --avatar ID
    python -m loadtests.perf_analyzer --start-server [--concurrency-range 1:4] [--request-count 10] [--speech]

1. writes the input-data JSON for `talking_head` (text turns: `text` and `avatar_id`
   as BYTES; with `--speech` also spoken turns: `audio` FP32 with its shape and
   `sample_rate`; `--turn-options` adds the `options` JSON to every turn),
2. runs the `perf_analyzer` binary that the tritonclient wheel ships, as an argument list:
   `perf_analyzer -m talking_head -i grpc --streaming -u HOST --input-data FILE
   --concurrency-range A:B ... -f <out>_pa.csv --profile-export-file <out>_profile.json`
   (a decoupled model needs `--streaming`),
3. reads the profile export's per-request timestamps (send time, every response's
   arrival) and each response's `event` output, and prints p50/p95/p99 per concurrency
   of: time to first response, first audio chunk, first video frame, last response.

perf_analyzer links libb64.so.0d and libcudart.so.12. Where the system lacks them
(Debian: `apt-get install libb64-0d`), the copies that the nvidia-pytriton wheel bundles
(`nvidia_pytriton.libs/libb64-*.so.0d`, `libcudart-*.so.12*`) are linked under their
plain names into `<out dir>/perf_analyzer_libs` and put on LD_LIBRARY_PATH.

By default each concurrency level sends `--request-count` (10) requests; `--request-count 0`
uses perf_analyzer's time windows instead (`--measurement-interval`, `--max-trials`,
`--stability-percentage`). perf_analyzer's own "latency" for this decoupled model is the
time to the *last* response of a request (despite its "using the first response" line),
hence the profile export.

The profile export holds every response's outputs, JPEG frames as JSON number lists
(30-100 MB per turn with video on); loadtests/pa_profile.py reads it, and it is deleted after
each level unless `--keep-profile`. perf_analyzer 2.51 sometimes stops writing it mid-request
and exits 0 nonetheless (pa_profile.py says why): such a level is run again (`--retries`, 2),
and if every try is cut, the whole requests before the cut are used and the summary says so.
Bounded: `--max-profile-mb` (default 400) caps each level's profile export, which perf_analyzer
holds in memory while it writes it, ~12 times over (3.7 GB resident for a 305 MB export of 3 turns);
a level's request count is cut to what fits (per request: 100 MB with video, 2 MB without, then as
measured), and the run stops at a level where one request per session would not fit.
`--request-count 0` needs `--max-profile-mb 0`.

perf_analyzer reads the model config, an admin API the servers restrict: the key comes from
`--admin-key-file`, else $TRITON_ADMIN_KEY (`--admin-key-env`), else the local server's
build/triton/admin-key; without a working key the run stops before perf_analyzer starts, saying so.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.contract.layout import GRPC_URL, ROOT
from loadtests.pa_profile import Profile, format_profile_summary, read_profile, summarize_profile

MODEL = "talking_head"
TEXTS = ["Hello, who are you?", "What is the weather like today?", "Tell me a short story.",
         "Can you help me with my work?", "What should I cook tonight?", "Thank you, goodbye."]
NEEDED_LIBS = ("libb64.so.0d", "libcudart.so.12")


class PerfAnalyzerUnavailable(RuntimeError):
    """The perf_analyzer binary or a library it needs cannot be found."""


# ---------------------------------------------------------------- the binary and its libraries

def find_perf_analyzer() -> Path:
    """The perf_analyzer of this environment (tritonclient's wheel puts it in bin/), else the one on PATH."""
    local = Path(sys.executable).parent / "perf_analyzer"
    if local.exists():
        return local
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    raise PerfAnalyzerUnavailable("no perf_analyzer binary: it comes with `pip install tritonclient[all]==2.51.0` "
                                  "(or [grpc]: the wheel's bin/perf_analyzer)")


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str] | None:
    """Shared libraries the loader cannot find for `binary` (None when ldd is unavailable)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    out = subprocess.run([ldd, str(binary)], capture_output=True, text=True, env=env).stdout
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def _bundled_libraries() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    libs = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
    return libs if libs.is_dir() else None


def perf_analyzer_env(binary: Path, libdir: Path) -> dict[str, str]:
    """An environment in which `binary` loads: missing libraries linked from nvidia-pytriton's bundle."""
    env = dict(os.environ)
    missing = _missing_libraries(binary, env)
    if missing == []:
        return env
    wanted = missing if missing is not None else list(NEEDED_LIBS)
    bundle = _bundled_libraries()
    if bundle is not None:
        libdir.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            stem, _, suffix = name.partition(".so")  # libb64, .0d
            candidates = sorted(bundle.glob(f"{stem}-*.so{suffix}*"))
            if candidates:
                link = libdir / name
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(candidates[0])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libdir), env.get("LD_LIBRARY_PATH")]))
    still = _missing_libraries(binary, env)
    if still:
        hints = {"libb64.so.0d": "apt-get install -y libb64-0d",
                 "libcudart.so.12": "pip install nvidia-cuda-runtime-cu12 (and put its lib/ on LD_LIBRARY_PATH)"}
        raise PerfAnalyzerUnavailable(f"{binary} cannot load {', '.join(still)}: "
                                      + "; ".join(hints.get(n, f"install {n}") for n in still))
    return env


# ---------------------------------------------------------------- input data

def input_data(avatar_id: str, *, texts: Sequence[str] = TEXTS, speech: Sequence[Any] = (),
               options: str | None = None, sample_rate: int = 16000) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON: one entry per request, taken in turn (text first, then speech)."""
    entries: list[dict[str, Any]] = []
    for t in texts:
        entries.append({"text": [t], "avatar_id": [avatar_id]})
    for audio in speech:
        values = [float(x) for x in audio]
        entries.append({"audio": {"content": values, "shape": [len(values)]}, "sample_rate": [int(sample_rate)],
                        "avatar_id": [avatar_id]})
    if options:
        for e in entries:
            e["options"] = [options]
    return {"data": entries}


def write_input_data(path: Path, avatar_id: str, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data(avatar_id, **kwargs)))
    return path


# ---------------------------------------------------------------- running it

def concurrency_levels(spec: str) -> list[int]:
    """"1:4" -> [1, 2, 3, 4]; "2:8:2" -> [2, 4, 6, 8]; "3" -> [3]."""
    parts = [int(p) for p in spec.split(":")]
    start, end, step = parts[0], (parts[1] if len(parts) > 1 else parts[0]), (parts[2] if len(parts) > 2 else 1)
    if start < 1 or end < start or step < 1:
        raise ValueError(f"--concurrency-range wants START:END[:STEP] with 1 <= START <= END, got {spec!r}")
    return list(range(start, end + 1, step))


def perf_analyzer_command(binary: Path, *, host: str, input_file: Path, csv_file: Path, profile_file: Path,
                          concurrency_range: str = "1:2", measurement_interval_ms: int = 8000,
                          request_count: int = 0, max_trials: int = 5, stability_percentage: float = 50.0,
                          extra: Sequence[str] = ()) -> list[str]:
    cmd = [str(binary), "-m", MODEL, "-i", "grpc", "--streaming", "-u", host, "--input-data", str(input_file),
           "--concurrency-range", concurrency_range, "-f", str(csv_file), "--profile-export-file", str(profile_file),
           "--max-trials", str(max_trials), "-s", f"{stability_percentage:g}"]
    if request_count:
        cmd += ["--request-count", str(request_count)]
    else:
        cmd += ["--measurement-interval", str(measurement_interval_ms)]
    return cmd + list(extra)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=GRPC_URL, help=f"Triton gRPC endpoint HOST:PORT (default {GRPC_URL})")
    ap.add_argument("--avatar", default="", help="a registered avatar id (default: register the demo avatar)")
    ap.add_argument("--concurrency-range", default="1:2", help="START:END[:STEP] concurrent streams (default 1:2)")
    ap.add_argument("--measurement-interval", type=int, default=8000,
                    help="ms per measurement window with --request-count 0 (default 8000)")
    ap.add_argument("--request-count", type=int, default=10,
                    help="requests per concurrency level (default 10; one perf_analyzer run per level); "
                         "0: perf_analyzer's time windows until stable (--measurement-interval, --max-trials)")
    ap.add_argument("--max-trials", type=int, default=5, help="measurement windows per level at most (default 5)")
    ap.add_argument("--stability-percentage", type=float, default=50.0,
                    help="allowed spread between windows (perf_analyzer -s; default 50: a shared CPU is noisy)")
    ap.add_argument("--speech", action="store_true", help="also send spoken turns (espeak-ng questions, 16 kHz)")
    ap.add_argument("--turn-options", default="", help="options JSON added to every turn, e.g. '{\"video\": false}'")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "perf",
                    help="prefix: <out>_pa.csv, <out>_pa_input.json, <out>_pa_summary.json (default out/perf)")
    ap.add_argument("--keep-profile", action="store_true", help="keep <out>_profile.json (large: 30-100 MB per turn)")
    ap.add_argument("--max-profile-mb", type=float, default=400.0,
                    help="cap on each level's profile export (default 400; perf_analyzer holds ~12 times it in"
                         " memory); request counts are cut to fit; 0: no cap (needed with --request-count 0)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds perf_analyzer may run (default 600)")
    ap.add_argument("--retries", type=int, default=2,
                    help="runs a level again when perf_analyzer's profile export is cut short or has no requests"
                         " (default 2)")
    ap.add_argument("--start-server", action="store_true", help="run the embedded tritonserver for the duration")
    ap.add_argument("--grpc-port", type=int, default=18501, help="with --start-server (default 18501)")
    ap.add_argument("--http-port", type=int, default=18500, help="with --start-server (default 18500)")
    ap.add_argument("--metrics-port", type=int, default=18502, help="with --start-server (default 18502)")
    ap.add_argument("--preset", default="tiny", help="with --start-server: preset exported when missing (tiny)")
    ap.add_argument("--admin-key-env", metavar="VAR", default="TRITON_ADMIN_KEY",
                    help="the server's admin key is in $VAR (perf_analyzer reads the model config, an admin API;"
                         " default TRITON_ADMIN_KEY); with --start-server the embedded server's key is used")
    ap.add_argument("--admin-key-file", type=Path, default=None,
                    help="read the admin key from this file (default when $VAR is unset: the local server's "
                         "build/triton/admin-key, if present)")
    ap.add_argument("extra", nargs="*", help="after --: more perf_analyzer arguments, passed as they are")
    args = ap.parse_args(argv)
    if args.request_count == 0 and args.max_profile_mb:
        ap.error("--request-count 0 sends requests for as long as perf_analyzer measures: its profile export has no "
                 "bound; give --max-profile-mb 0 to accept that")
    return args


LOCAL_ADMIN_KEY = ROOT / "build" / "triton" / "admin-key"  # deploy.server's per-run key (its default workdir)


def resolve_admin_key(args: argparse.Namespace) -> str | None:
    """The admin key: --admin-key-file, else $--admin-key-env, else the local server's key file (None: none)."""
    if args.admin_key_file is not None:
        return args.admin_key_file.read_text().strip()
    if args.admin_key_env and os.environ.get(args.admin_key_env):
        return os.environ[args.admin_key_env].strip()
    if LOCAL_ADMIN_KEY.is_file():
        return LOCAL_ADMIN_KEY.read_text().strip()
    return None


def check_admin_access(host: str, admin_key: str | None) -> None:
    """Fail early, with the remedy, when the model config (an admin API) cannot be read with this key."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from deploy.admin import admin_headers

    with grpcclient.InferenceServerClient(host) as c:
        try:
            c.get_model_config(MODEL, headers=admin_headers(admin_key))
        except InferenceServerException as e:
            if "restricted" in str(e.message()).lower() or "admin" in str(e.message()).lower():
                raise SystemExit(
                    f"perf_analyzer needs the server's admin key to read {MODEL}'s config "
                    f"({'the key given was refused' if admin_key else 'no key found'}): set TRITON_ADMIN_KEY, or "
                    f"--admin-key-env VAR / --admin-key-file PATH. Triton said: {e.message()}") from None
            raise


def requests_that_fit(request_count: int, concurrency: int, budget_mb: float, mb_per_request: float) -> int:
    """How many of a level's requests fit its profile budget (0: not one per session); budget 0 means no cap."""
    if not budget_mb:
        return request_count
    n = min(request_count, int(budget_mb // max(mb_per_request, 1e-6)))
    return n if n >= concurrency else 0


def _speech_inputs() -> list[Any]:
    from export.contract import media as C
    from loadtests.inputs import QUESTIONS, spoken_questions

    return spoken_questions(C.INPUT_SAMPLE_RATE, QUESTIONS[:1])


def admin_header_args(key: str | None) -> list[str]:
    """perf_analyzer's -H for the admin key: it fetches the model config, which deploy.server restricts."""
    from deploy.admin import admin_headers

    return [f"-H{name}:{value}" for name, value in (admin_headers(key) or {}).items()]


def run_level(cmd: list[str], env: dict[str, str], profile_file: Path, csv_file: Path, *, retries: int,
              timeout: float, shown: str) -> tuple[Profile, list[int]]:
    """Runs perf_analyzer for one level until its profile export is whole and has requests (1 + `retries` tries).

    Returns the last try's profile (cut or empty when every try was) and every try's exit code.
    """
    codes: list[int] = []
    for attempt in range(1 + retries):
        for p in (csv_file, profile_file):
            if p.exists():
                p.unlink()
        print("== " + shown, flush=True)
        try:
            codes.append(subprocess.run(cmd, env=env, timeout=timeout).returncode)
        except subprocess.TimeoutExpired:
            print(f"perf_analyzer ran past {timeout:g} s", file=sys.stderr)
            codes.append(124)
        profile = read_profile(profile_file) if profile_file.exists() else Profile()
        if profile.complete and profile.requests:
            break
        print(f"perf_analyzer (exit code {codes[-1]}) wrote {profile.describe()}"
              + ("; trying again" if attempt < retries else ""), file=sys.stderr, flush=True)
    return profile, codes


def measure(args: argparse.Namespace, host: str, admin_key: str | None = None) -> int:
    """Everything after the server is up: avatar, input data, perf_analyzer, the summary."""
    binary = find_perf_analyzer()
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = perf_analyzer_env(binary, out.parent / "perf_analyzer_libs")
    avatar = args.avatar
    if not avatar:
        from client.sdk import TalkingHeadClient
        from ensemble.avatar import demo_avatar_png

        with TalkingHeadClient(host) as c:
            avatar = c.register_avatar(demo_avatar_png()).id
        print(f"== registered the demo avatar: {avatar}", flush=True)
    input_file = write_input_data(Path(f"{out}_pa_input.json"), avatar,
                                  speech=_speech_inputs() if args.speech else (),
                                  options=args.turn_options or None)
    # perf_analyzer takes --request-count for one concurrency only: one run per level then.
    if args.request_count:
        levels = [f"{c}:{c}" for c in concurrency_levels(args.concurrency_range)]
    else:
        levels = [args.concurrency_range]
    rows, commands, codes, final_codes, cut, size_mb = [], [], [], [], [], 0.0
    # measured here: 305 MB for 3 turns with video (tiny preset); then as each level measures it
    mb_per_request = 100.0 if json.loads(args.turn_options or "{}").get("video", True) else 2.0
    t0 = time.perf_counter()
    for level in levels:
        tag = "" if len(levels) == 1 else f"_c{level.split(':')[0]}"
        csv_file, profile_file = Path(f"{out}_pa{tag}.csv"), Path(f"{out}_profile{tag}.json")
        count = requests_that_fit(args.request_count, int(level.split(":")[0]), args.max_profile_mb, mb_per_request)
        if args.request_count and count == 0:
            print(f"stopping before concurrency {level}: one request per session would pass --max-profile-mb "
                  f"{args.max_profile_mb:g} (~{mb_per_request:.1f} MB per request); raise it, perf_analyzer holding "
                  "~12 times it in memory", file=sys.stderr)
            break
        if count < args.request_count:
            print(f"concurrency {level}: {count} requests instead of {args.request_count} (--max-profile-mb)",
                  file=sys.stderr)
        cmd = perf_analyzer_command(binary, host=host, input_file=input_file, csv_file=csv_file,
                                    profile_file=profile_file, concurrency_range=level,
                                    measurement_interval_ms=args.measurement_interval,
                                    request_count=count, max_trials=args.max_trials,
                                    stability_percentage=args.stability_percentage,
                                    extra=[*admin_header_args(admin_key), *args.extra])
        profile, level_codes = run_level(cmd, env, profile_file, csv_file, retries=args.retries,
                                         timeout=args.timeout, shown=" ".join(cmd).replace(admin_key or "\0", "***"))
        commands += [cmd] * len(level_codes)
        codes += level_codes
        final_codes.append(level_codes[-1])
        if not profile.requests:
            if profile.size:
                bad = profile_file.with_name(profile_file.stem + "_unreadable.json")
                profile_file.replace(bad)
                print(f"kept it as {bad}", file=sys.stderr)
            continue
        if not profile.complete:
            cut.append(level)
            print(f"concurrency {level}: every try was cut short; using the {profile.requests} whole requests "
                  "before the cut", file=sys.stderr)
        level_mb = profile.size / 1e6
        size_mb += level_mb
        mb_per_request = max(level_mb / max(1, profile.requests), 0.01)
        rows += summarize_profile(profile.experiments)
        if not args.keep_profile:
            profile_file.unlink()
    wall = time.perf_counter() - t0
    code = next((c for c in final_codes if c), 0)
    if not rows:
        return code or 2
    summary = {"host": host, "model": MODEL, "commands": commands, "perf_analyzer_exit_codes": codes,
               "wall_s": round(wall, 2), "profile_export_mb": round(size_mb, 1), "levels_cut_short": cut,
               "experiments": rows}
    summary_file = Path(f"{out}_pa_summary.json")
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nperf_analyzer on {MODEL} ({host}), exit code {code}, {wall:.1f} s; profile export {size_mb:.0f} MB")
    print(format_profile_summary(rows))
    print(f"\nreports: {out}_pa*.csv  {summary_file}" + (f"  {out}_profile*.json" if args.keep_profile else ""))
    if not any(r["answered"] for r in rows):
        print("no request was answered", file=sys.stderr)
        return code or 1
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    try:
        if not args.start_server:
            key = resolve_admin_key(args)
            check_admin_access(args.host, key)
            return measure(args, args.host, admin_key=key)
        from loadtests.run import start_server

        with start_server(args) as server:
            return measure(args, server.options.grpc_url, admin_key=server.options.admin_key)
    except PerfAnalyzerUnavailable as e:
        print(f"perf_analyzer unavailable: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
