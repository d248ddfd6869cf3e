"""Command line client of the talking-head service.

    python -m client register-avatar face.jpg
    python -m client ask --text "Hello there" --avatar ID
    python -m client ask --audio question.m4a --avatar ID --out out/ --name answer --json

Exit codes: 0 ok, 1 unexpected failure, 2 bad arguments or input files,
3 Triton unreachable, 4 server error, 5 turn timed out, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from export import contract

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_SERVER = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

DEFAULT_URL = "localhost:8001"


class UsageError(Exception):
    """Bad arguments or unreadable input files (exit code 2)."""


def _options(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--options is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--options must be a JSON object, got {type(value).__name__}")
    return value


def _read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _client(args: argparse.Namespace):
    from client.sdk import TalkingHeadClient  # imported late: `--help` stays fast
    return TalkingHeadClient(args.url, ssl=args.ssl, root_certificates=args.root_certificates,
                             turn_timeout_s=args.timeout, request_timeout_s=min(args.timeout, 60.0))


# ---------------------------------------------------------------- register-avatar

def cmd_register_avatar(args: argparse.Namespace) -> int:
    from export.spec import AVATAR_REGISTRY

    image = _read_bytes(args.image, "image")
    with _client(args) as th:
        th.check_connection(models=(AVATAR_REGISTRY.name,))
        info = th.register_avatar(image)
    if args.json:
        print(json.dumps({"avatar_id": info.id, "face_box": list(info.face_box), "message": info.message}))
    else:
        print(info.id)
        print(f"face box: {list(info.face_box)}", file=sys.stderr)
        if info.message:
            print(f"message: {info.message}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------- ask

def cmd_ask(args: argparse.Namespace) -> int:
    from ensemble import events as ev
    from export.spec import TALKING_HEAD
    from client import media
    from client.sdk import Turn

    options = _options(args.options)
    audio = None
    if args.audio is not None:
        if not os.path.isfile(args.audio):
            raise UsageError(f"cannot read audio file {args.audio}: no such file")
        try:
            audio = media.read_audio(args.audio, rate=contract.INPUT_SAMPLE_RATE)
        except Exception as e:  # PyAV raises several kinds for undecodable files
            raise UsageError(f"cannot decode audio file {args.audio}: {e}") from None
        if audio.size == 0:
            raise UsageError(f"audio file {args.audio} holds no samples")
    out_dir = Path(args.out)
    # Human-readable output goes to stderr when stdout carries the JSON summary.
    say: TextIO = sys.stderr if args.json else sys.stdout

    with _client(args) as th:
        th.check_connection(models=(TALKING_HEAD.name,))
        turn = Turn(clock=th.clock)
        said_transcript = args.text is not None  # text input: the text is the transcript
        if said_transcript:
            print(f"transcript: {args.text}", file=say, flush=True)
        in_reply = False
        with th.ask(avatar_id=args.avatar, text=args.text, audio=audio, options=options) as stream:
            try:
                for event in stream:
                    turn.add(event)
                    if event.type == ev.TRANSCRIPT and not said_transcript:
                        print(f"transcript: {event.data.get('text', '')}", file=say, flush=True)
                        said_transcript = True
                    elif event.type == ev.TEXT:
                        if not in_reply:
                            print("reply: ", end="", file=say)
                            in_reply = True
                        print(event.data.get("delta", ""), end="", file=say, flush=True)
                    elif event.type == ev.DONE and not in_reply and event.data.get("reply"):
                        print(f"reply: {event.data['reply']}", end="", file=say)
                        in_reply = True
            finally:
                if in_reply:
                    print(file=say, flush=True)
    result = turn.result()

    out_dir.mkdir(parents=True, exist_ok=True)
    wav_path = out_dir / f"{args.name}.wav"
    mp4_path = out_dir / f"{args.name}.mp4"
    media.write_wav(wav_path, result.audio, result.sample_rate)
    written = [wav_path]
    if result.frames or result.audio.size:
        media.write_mp4(mp4_path, result.frames, result.audio, result.sample_rate, fps=contract.VIDEO_FPS)
        written.append(mp4_path)
    else:
        print(f"warning: the answer has neither audio nor video; {mp4_path} not written", file=sys.stderr)

    print("", file=say)
    print(result.format_table(), file=say)
    print("wrote " + ", ".join(str(p) for p in written), file=say, flush=True)
    if args.json:
        summary = result.summary()
        summary["files"] = [str(p) for p in written]
        print(json.dumps(summary, indent=2))
    return EXIT_OK


# ---------------------------------------------------------------- argparse

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("TRITON_URL", DEFAULT_URL),
                        help="Triton gRPC endpoint host:port (default: $TRITON_URL or %(default)s)")
    common.add_argument("--ssl", action="store_true", help="connect with TLS")
    common.add_argument("--root-certificates", metavar="PEM", default=None,
                        help="CA certificates file for --ssl (default: the system's)")
    common.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="give up on the request/turn after this many seconds (default: %(default)s)")
    common.add_argument("--json", action="store_true",
                        help="also print the result as JSON on stdout (human-readable text goes to stderr)")

    parser = argparse.ArgumentParser(prog="python -m client", description="Talking-head service client.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("register-avatar", parents=[common], help="register a face image, print its avatar id",
                       description="Send a face image to avatar_registry; print the avatar id on stdout "
                                   "(face box and the detector's message on stderr).")
    p.add_argument("image", metavar="IMAGE", help="face image file (PNG, JPEG, ...)")
    p.set_defaults(func=cmd_register_avatar)

    p = sub.add_parser("ask", parents=[common], help="ask the avatar something, save its spoken, animated answer",
                       description="One turn: send speech or text, stream the reply, write DIR/NAME.wav and "
                                   "DIR/NAME.mp4, print a latency summary.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", metavar="FILE",
                     help=f"spoken question: any audio file FFmpeg decodes, resampled to "
                          f"{contract.INPUT_SAMPLE_RATE} Hz mono")
    src.add_argument("--text", metavar="TEXT", help="the question as text instead of speech")
    p.add_argument("--avatar", required=True, metavar="ID", help="avatar id from register-avatar")
    p.add_argument("--out", default="out", metavar="DIR", help="output directory (default: %(default)s/)")
    p.add_argument("--name", default="answer", help="output file stem: DIR/NAME.wav, DIR/NAME.mp4 "
                                                    "(default: %(default)s)")
    p.add_argument("--options", metavar="JSON", default=None,
                   help="per-turn options as a JSON object (keys: ensemble.options.TurnOptions), "
                        "e.g. '{\"video\": false, \"speed\": 1.1}'")
    p.set_defaults(func=cmd_ask)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from client.sdk import ConnectionFailed, ServerError, TurnTimeout  # after parsing: `--help` stays fast

    try:
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TurnTimeout as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    except ServerError as e:
        print(f"error: server error: {e}", file=sys.stderr)
        return EXIT_SERVER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
