"""Command line client of the talking-head service.

    python -m client register-avatar face.jpg
    python -m client ask --text "Hello there" --avatar ID
    python -m client ask --audio question.m4a --avatar ID --out out/ --name answer --json
    python -m client talk --mic --avatar ID --session me                      # converse by voice
    python -m client talk --audio conversation.wav --avatar ID                # a recording, paced as a microphone
    python -m client cancel --session me                                      # stop the reply in flight

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

from export.contract import media as C
from export.contract.layout import GRPC_URL

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_SERVER = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

DEFAULT_URL = GRPC_URL


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


SESSION_TOKEN_ENV = "TALKING_HEAD_SESSION_TOKEN"
API_KEY_ENV = "TALKING_HEAD_API_KEY"  # the front door's API key (deploy/front_door); never a flag: `ps` would show it


def _client(args: argparse.Namespace):
    from client.sdk import TalkingHeadClient  # imported late: `--help` stays fast
    return TalkingHeadClient(args.url, ssl=args.ssl, root_certificates=args.root_certificates,
                             turn_timeout_s=args.timeout, request_timeout_s=min(args.timeout, 60.0),
                             session_token=args.session_token, api_key=os.environ.get(API_KEY_ENV))


# ---------------------------------------------------------------- register-avatar

def cmd_register_avatar(args: argparse.Namespace) -> int:
    from export.contract.spec import AVATAR_REGISTRY

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
    from client.turns import TurnCollector
    from export.contract import events as ev
    from export.contract.spec import TALKING_HEAD

    options = _options(args.options)
    audio = None if args.audio is None else _read_speech(args.audio)
    out_dir = Path(args.out)
    # Human-readable output goes to stderr when stdout carries the JSON summary.
    say: TextIO = sys.stderr if args.json else sys.stdout

    with _client(args) as th:
        th.check_connection(models=(TALKING_HEAD.name,))
        turn = TurnCollector(clock=th.clock)
        said_transcript = in_reply = False
        with th.ask(avatar_id=args.avatar, text=args.text, audio=audio, options=options) as stream:
            try:
                for event in stream:  # the first event means the server accepted the turn
                    turn.add(event)
                    if not said_transcript and (event.type == ev.TRANSCRIPT or args.text is not None):
                        heard = event.data.get("text", "") if event.type == ev.TRANSCRIPT else args.text
                        print(f"transcript: {heard}", file=say, flush=True)
                        said_transcript = True
                    if event.type == ev.TEXT:
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
    if result.interrupted:
        print(f"interrupted ({result.interrupted}): the reply above stops where its audio stopped, "
              f"{result.audio_s:.1f} s in", file=say)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = _write_media(result, out_dir, args.name, say)
    print("", file=say)
    print(result.format_table(), file=say)
    print("wrote " + ", ".join(str(p) for p in written), file=say, flush=True)
    if args.json:
        summary = result.summary()
        if args.text is not None:  # the server never echoes typed text back as a transcript
            summary["transcript"] = args.text
        summary["files"] = [str(p) for p in written]
        print(json.dumps(summary, indent=2))
    return EXIT_OK


def _write_media(result, out_dir: Path, name: str, say: TextIO) -> list[Path]:
    """NAME.wav, and NAME.mp4 at a constant 25 fps (a dropped frame slot repeats the frame before it)."""
    from client import media

    wav_path, mp4_path = out_dir / f"{name}.wav", out_dir / f"{name}.mp4"
    media.write_wav(wav_path, result.audio, result.sample_rate)
    if not (result.frames or result.audio.size):
        print(f"warning: the answer has neither audio nor video; {mp4_path} not written", file=sys.stderr)
        return [wav_path]
    media.write_mp4(mp4_path, result.frames, result.audio, result.sample_rate, fps=C.VIDEO_FPS,
                    frame_indices=result.frame_indices)
    return [wav_path, mp4_path]


# ---------------------------------------------------------------- talk (microphone) and cancel

def _read_speech(path: str):
    from client import media

    if not os.path.isfile(path):
        raise UsageError(f"cannot read audio file {path}: no such file")
    try:
        audio = media.read_audio(path, rate=C.INPUT_SAMPLE_RATE)
    except Exception as e:  # PyAV raises several kinds for undecodable files
        raise UsageError(f"cannot decode audio file {path}: {e}") from None
    if audio.size == 0:
        raise UsageError(f"audio file {path} holds no samples")
    return audio


def cmd_talk(args: argparse.Namespace) -> int:
    import uuid

    from client.turns import TurnCollector
    from export.contract import events as ev
    from export.contract.spec import TALKING_HEAD

    if args.mic:
        from client.mic import MicrophoneUnavailable, live_chunks

        try:
            source = live_chunks(args.seconds, args.chunk_ms)
        except MicrophoneUnavailable as e:
            raise UsageError(str(e)) from None
        what = f"the microphone for up to {args.seconds:g} s (Ctrl-C ends)"
    else:
        source = _read_speech(args.audio)
        pace = "in real time" if args.realtime else "as fast as possible"
        what = f"{source.size / C.INPUT_SAMPLE_RATE:.1f} s of {args.audio} {pace}"
    session = args.session or f"cli-{uuid.uuid4().hex[:12]}"  # a fresh conversation unless one is named
    options = {**(_options(args.options) or {}), "min_silence_ms": args.min_silence_ms}
    say: TextIO = sys.stderr if args.json else sys.stdout
    turns: dict[str, TurnCollector] = {}
    ended_at: dict[str, float] = {}  # turn -> when its turn_end event arrived (the client's clock)
    last_end: float | None = None
    out_dir = Path(args.out)
    with _client(args) as th:
        th.check_connection(models=(TALKING_HEAD.name,))
        print(f"streaming {what} in {args.chunk_ms:g} ms chunks (session {session}; to cancel its reply from another "
              f"shell: {SESSION_TOKEN_ENV}={th.session_token} python -m client cancel --session {session})",
              file=say, flush=True)
        events = th.microphone(session=session, avatar_id=args.avatar, audio=source, chunk_ms=args.chunk_ms,
                               realtime=args.realtime, options=options)
        for event in events:
            if event.type == ev.VAD:
                d = event.data
                extra = f", after {d['silence_ms']:.0f} ms of silence" if "silence_ms" in d else ""
                if d.get("end_of_input"):
                    extra = ": the input ended before the silence that ends a turn; the turn ends here"
                    last_end = event.received_at
                elif d["state"] == "turn_end":
                    last_end = event.received_at
                print(f"[vad] {d['state']} at {d['t_s']:.2f} s{extra}", file=say, flush=True)
                continue
            turn_id = event.data.get("turn_id")
            if turn_id not in turns:
                turns[turn_id] = TurnCollector(clock=th.clock, t0=last_end)
                ended_at[turn_id] = last_end
            turns[turn_id].add(event)
            if event.type == ev.TRANSCRIPT:
                print(f"[turn {len(turns)}] heard: {event.data.get('text', '')}", file=say, flush=True)
            elif event.type == ev.DONE:
                why = f" (interrupted: {event.data['interrupted']})" if event.data.get("interrupted") else ""
                print(f"[turn {len(turns)}] reply: {event.data.get('reply', '')}{why}", file=say, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for k, (turn_id, turn) in enumerate(turns.items(), 1):
        result = turn.result()
        written = _write_media(result, out_dir, f"{args.name}{k}", say)
        server = result.server_timings_ms.get("first_audio")
        client_s = result.time_to_first_audio_s
        print(f"turn {k}: first audio {'-' if server is None else f'{server:.0f} ms'} after the server detected the "
              f"turn's end (server clock; the turn-end silence not counted), "
              f"{'-' if client_s is None else f'{client_s * 1000:.0f} ms'} after its turn_end event reached this "
              f"client -> {written[-1]}", file=say)
        summaries.append({**result.summary(), "files": [str(p) for p in written]})
    if not turns:
        print("no turn was detected in the input (no speech?)", file=say)
    if args.json:
        print(json.dumps(summaries, indent=2))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from export.contract.spec import TALKING_HEAD

    with _client(args) as th:
        th.check_connection(models=(TALKING_HEAD.name,))
        data = th.cancel(args.session)
    stopped = data.get("interrupted_turn")
    print(json.dumps(data) if args.json else (f"stopped turn {stopped}" if stopped else "no reply in flight"))
    return EXIT_OK


# ---------------------------------------------------------------- argparse

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("TRITON_URL", DEFAULT_URL),
                        help="Triton gRPC endpoint host:port, or the front door's (default: $TRITON_URL or "
                             f"%(default)s); the front door's API key is read from ${API_KEY_ENV}")
    common.add_argument("--ssl", action="store_true", help="connect with TLS")
    common.add_argument("--session-token", default=os.environ.get(SESSION_TOKEN_ENV), metavar="SECRET",
                        help=f"the secret that owns this run's sessions (default: ${SESSION_TOKEN_ENV}, else a new "
                             "one per run); `cancel` of a session needs the token of the run that opened it")
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
                          f"{C.INPUT_SAMPLE_RATE} Hz mono")
    src.add_argument("--text", metavar="TEXT", help="the question as text instead of speech")
    p.add_argument("--avatar", required=True, metavar="ID", help="avatar id from register-avatar")
    p.add_argument("--out", default="out", metavar="DIR", help="output directory (default: %(default)s/)")
    p.add_argument("--name", default="answer", help="output file stem: DIR/NAME.wav, DIR/NAME.mp4 "
                                                    "(default: %(default)s)")
    p.add_argument("--options", metavar="JSON", default=None,
                   help="per-turn options as a JSON object (keys: ensemble.options.TurnOptions), "
                        "e.g. '{\"video\": false, \"speed\": 1.1}'")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("talk", parents=[common], help="converse by voice: the microphone or a recording",
                       description="Stream the microphone (--mic) or an audio file (--audio, paced in real time by "
                                   "default) in small chunks. The server detects each turn (voice activity + "
                                   "silence), replies, and stops a reply when the user speaks over it; at the end of "
                                   "the input a turn still open ends without waiting for silence. Prints what it "
                                   "heard and replied, each turn's first-audio latency (from the server's turn-end "
                                   "detection), and writes DIR/NAME<k>.wav and DIR/NAME<k>.mp4 per turn.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", metavar="FILE", help="the user's side of the conversation (any format)")
    src.add_argument("--mic", action="store_true", help="the default input device (needs sounddevice + PortAudio)")
    p.add_argument("--seconds", type=float, default=60.0, help="with --mic: record at most this long (default: "
                                                               "%(default)s)")
    p.add_argument("--avatar", required=True, metavar="ID", help="avatar id from register-avatar")
    p.add_argument("--session", default=None,
                   help="conversation id (default: a new one per run, so runs never share turn-detector state)")
    p.add_argument("--chunk-ms", type=float, default=32.0, help="microphone chunk length (default: %(default)s)")
    p.add_argument("--min-silence-ms", type=int, default=500,
                   help="silence that ends the user's turn (default: %(default)s)")
    p.add_argument("--fast", dest="realtime", action="store_false", help="send as fast as possible, not in real time")
    p.add_argument("--out", default="out", metavar="DIR", help="output directory (default: %(default)s/)")
    p.add_argument("--name", default="turn", help="output file stem (default: %(default)s)")
    p.add_argument("--options", metavar="JSON", default=None, help="per-turn options as a JSON object")
    p.set_defaults(func=cmd_talk)

    p = sub.add_parser("cancel", parents=[common], help="stop the reply in flight of a session",
                       description="Barge-in without speaking: the session's reply stops, its stream ends with done.")
    p.add_argument("--session", required=True, help="conversation id")
    p.set_defaults(func=cmd_cancel)
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
