"""Locust load test of the talking-head service: users holding spoken/typed conversations.

    locust -f loadtests/locustfile.py --headless -u 4 -r 2 -t 60s --host localhost:8001 \
        --csv out/load --html out/load.html --turns 3 --speech-ratio 0.5 --think 1,3

(`python -m loadtests.run` builds this command, can start the embedded server, and
prints the summary.) Each simulated user:

- registers the demo avatar once (or uses `--avatar ID`, or registers `--avatar-image`),
- holds conversations of `--turns` turns; a conversation owns one gRPC bidirectional
  stream to the decoupled `talking_head` model, every turn is one request on it whose
  responses (events) end with Triton's empty final response,
- sends speech (16 kHz mono: espeak-ng questions made at start, or `--wav FILE`) with
  probability `--speech-ratio`, else text,
- thinks `--think MIN,MAX` seconds (uniform) after each turn.

Per turn it fires a locust request event (request_type "turn", name "speech"/"text",
response_time = whole turn in ms, exception on failure), and for a turn that got them one
"TTFA" and one "TTFF" event of the same name (response_time = time to its first audio
chunk / first video frame), so that locust's web UI, --csv and --html show time to first
audio and first frame as rows of their own; and it records a
`loadtests.stats.TurnSample` (time to first text, TTFA, TTFF, largest audio gap,
playback underrun, total, failure class). On exit `<prefix>_turns.csv` and
`<prefix>_summary.json` are written, prefix = `--samples-prefix`, else locust's
`--csv` prefix, else $LOADTEST_OUT (the loadgen image: /opt/loadgen/results/load), else `loadtest`. With `--master/--worker` the workers ship their
samples to the master, which writes the reports.

A failed turn's error comes inside the stream as its final response (classified by the
orchestrator's message) and the stream stays open for the conversation's next turn, as with
the SDK. `--grpc-error-header` sends Triton's `triton_grpc_error: true` instead: errors keep
their gRPC status, but Triton closes the stream on each one, and at overload's refusal rate
that aborted tritonserver 2.51 (RELIABILITY.md, "Overload").
"""
from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

# gevent before gRPC: importing locust monkey-patches the standard library, then gRPC is
# switched to gevent's event loop before any gRPC object (channel, stream) exists.
import locust  # noqa: F401  (monkey-patches: gevent.monkey.patch_all())

grpc_gevent.init_gevent()

import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402  (gevent's, after patching)
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust import stats as locust_stats  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `locust -f` from anywhere

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from client.sdk import ProtocolError, ServerError, TalkingHeadClient, TurnTimeout, event_from_result, is_final_response  # noqa: E402
from client.turns import TurnCollector, TurnResult  # noqa: E402
from export.contract import events as ev  # noqa: E402
from export.contract import media as C  # noqa: E402
from export.contract.spec import TALKING_HEAD  # noqa: E402
from loadtests import inputs, stats  # noqa: E402

log = logging.getLogger("loadtests.locustfile")

QUESTIONS = inputs.QUESTIONS
TEXTS = ["Hello, who are you?", "What is the weather like today?", "Tell me a short story.",
         "Can you help me with my work?", "What should I cook tonight?", "Thank you, goodbye."]
GRPC_ERROR_HEADER = {"triton_grpc_error": "true"}
OUT_ENV = "LOADTEST_OUT"  # default report prefix (the loadgen image sets it to its writable results folder)


# ---------------------------------------------------------------- command line

@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    g = parser.add_argument_group("talking head", "the conversation each simulated user holds")
    g.add_argument("--turns", type=int, default=3, help="turns per conversation (one gRPC stream each); default 3")
    g.add_argument("--speech-ratio", type=float, default=0.5,
                   help="share of spoken turns (the rest are typed), 0..1; default 0.5")
    g.add_argument("--think", default="1,3", help="think time after each turn: MIN,MAX seconds (uniform); default 1,3")
    g.add_argument("--wav", default="", help="speech input (any audio file, resampled to 16 kHz mono); "
                                             "default: espeak-ng questions generated at start")
    g.add_argument("--avatar", default="", help="a registered avatar id for every user (default: each user registers "
                                                "the demo avatar, or --avatar-image)")
    g.add_argument("--avatar-image", default="", help="the face image each user registers (default: the demo avatar)")
    g.add_argument("--turn-timeout", type=float, default=120.0, help="seconds one turn may take; default 120")
    g.add_argument("--turn-options", default="", help="per-turn options JSON sent with every turn, e.g. "
                                                      "'{\"max_reply_tokens\": 32}' (see ensemble/options.py)")
    g.add_argument("--samples-prefix", default="", help="write <prefix>_turns.csv and <prefix>_summary.json "
                                                        "(default: the --csv prefix, else 'loadtest')")
    g.add_argument("--grpc-error-header", action="store_true",
                   help="send 'triton_grpc_error: true': errors keep their gRPC status, Triton closes the stream on "
                        "each (at a high refusal rate that aborts Triton 2.51: RELIABILITY.md)")


# ---------------------------------------------------------------- inputs, loaded once per process

class Inputs:
    speech: list[np.ndarray] = []
    avatar_png: bytes | None = None
    options: str | None = None
    think: tuple[float, float] = (1.0, 3.0)
    samples: list[stats.TurnSample] = []
    prefix: str = "loadtest"


def _load_speech(opts) -> list[np.ndarray]:
    from client import media

    if opts.wav:
        return [media.read_audio(opts.wav, rate=C.INPUT_SAMPLE_RATE)]
    return inputs.spoken_questions(C.INPUT_SAMPLE_RATE, QUESTIONS)  # espeak-ng


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    opts = environment.parsed_options
    if opts is None:  # used as a library (no command line): defaults
        return
    try:
        Inputs.think = stats.parse_think(opts.think)
    except ValueError as e:
        raise SystemExit(f"--think: {e}") from None
    if not 0.0 <= opts.speech_ratio <= 1.0:
        raise SystemExit(f"--speech-ratio must lie in 0..1, got {opts.speech_ratio}")
    if opts.turns < 1:
        raise SystemExit(f"--turns must be at least 1, got {opts.turns}")
    if opts.turn_options:
        try:
            if not isinstance(json.loads(opts.turn_options), dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise SystemExit(f"--turn-options must be a JSON object: {e}") from None
        Inputs.options = opts.turn_options
    Inputs.prefix = (opts.samples_prefix or getattr(opts, "csv_prefix", None) or os.environ.get(OUT_ENV)
                     or "loadtest")
    if isinstance(environment.runner, MasterRunner):
        return  # the workers send turns; the master only collects their samples
    if opts.speech_ratio > 0:
        Inputs.speech = _load_speech(opts)
        log.info("speech inputs: %s s", ", ".join(f"{a.size / C.INPUT_SAMPLE_RATE:.2f}" for a in Inputs.speech))
    if not opts.avatar:
        if opts.avatar_image:
            Inputs.avatar_png = Path(opts.avatar_image).read_bytes()
        else:
            from ensemble.avatar import demo_avatar_png

            Inputs.avatar_png = demo_avatar_png()


# ---------------------------------------------------------------- samples: collected, shipped, written

@events.report_to_master.add_listener
def _ship_samples(client_id, data, **_kw) -> None:
    data["talking_head_turns"] = [stats.sample_to_dict(s) for s in Inputs.samples]
    Inputs.samples.clear()


@events.worker_report.add_listener
def _receive_samples(client_id, data, **_kw) -> None:
    Inputs.samples.extend(stats.sample_from_dict(d) for d in data.get("talking_head_turns", ()))


@events.quitting.add_listener
def _write_reports(environment, **_kw) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    if getattr(opts, "csv_prefix", None):
        # Locust's --csv writer rewrites its files once a second (locust.stats.CSV_STATS_INTERVAL_SEC): let it run
        # once more, so that turns ending in the last second of the stop phase are in <prefix>_stats.csv too.
        gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.25)
    summary = stats.write_reports(
        Inputs.prefix, Inputs.samples, host=environment.host, users=getattr(opts, "num_users", None),
        spawn_rate=getattr(opts, "spawn_rate", None), run_time_s=getattr(opts, "run_time", None),
        turns_per_conversation=getattr(opts, "turns", None), speech_ratio=getattr(opts, "speech_ratio", None),
        think_s=list(Inputs.think))
    log.info("wrote %s and %s (%d turns, %d completed)", stats.turns_csv_path(Inputs.prefix),
             stats.summary_json_path(Inputs.prefix), summary["turns"], summary["completed"])


# ---------------------------------------------------------------- one conversation = one gRPC stream

class TurnFailed(Exception):
    """What locust sees for a failed turn: "<class>: <message>" (request ids cut, so failures group)."""

    def __init__(self, failure_class: str, message: str):
        super().__init__(f"{failure_class}: {message[:300]}")
        self.failure_class = failure_class


def _input(name: str, value: np.ndarray) -> grpcclient.InferInput:
    tensor = TALKING_HEAD.input(name)
    arr = np.asarray(value, dtype=object if tensor.dtype == "BYTES" else tensor.numpy_dtype).reshape(-1)
    if TALKING_HEAD.batched:
        arr = arr[None]
    inp = grpcclient.InferInput(name, list(arr.shape), tensor.dtype)
    inp.set_data_from_numpy(arr)
    return inp


def turn_inputs(avatar_id: str, *, text: str | None = None, audio: np.ndarray | None = None,
                options: str | None = None) -> list[grpcclient.InferInput]:
    inputs = []
    if audio is not None:
        inputs += [_input("audio", np.asarray(audio, np.float32)),
                   _input("sample_rate", np.array([C.INPUT_SAMPLE_RATE]))]
    else:
        inputs.append(_input("text", np.array([text.encode()], dtype=object)))
    inputs.append(_input("avatar_id", np.array([avatar_id.encode()], dtype=object)))
    if options:
        inputs.append(_input("options", np.array([options.encode()], dtype=object)))
    return inputs


class ConversationStream:
    """One gRPC bidirectional stream to `talking_head` that carries a conversation's turns, one at a time.

    Responses are matched to the turn by request id; a turn ends with the response that
    Triton flags final (`enable_empty_final_response`). A turn's error inside the stream (its
    final response) leaves the stream open; a stream whose call failed is closed and the next
    turn opens a new one. The stream is cancelled only while a turn is still in
    flight (a timeout, or locust stopping the user mid-turn): otherwise it is half-closed
    gracefully, because cancelling streams of a decoupled model races inside Triton 2.51's
    gRPC frontend (fixed upstream later, triton-inference-server/server#7840, #8078).
    """

    def __init__(self, url: str, *, grpc_error_header: bool = False, clock=time.perf_counter):
        self.url = url
        self.clock = clock
        self.headers = dict(GRPC_ERROR_HEADER) if grpc_error_header else None
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.SimpleQueue | None = None
        self.in_flight = False  # a request was sent and its final response has not come
        self.streams_opened = 0

    def _open(self) -> queue.SimpleQueue:
        responses: queue.SimpleQueue = queue.SimpleQueue()
        clock = self.clock

        def on_response(result, error) -> None:  # runs on the stream's reader (a greenlet under gevent)
            responses.put((clock(), result, error))

        self.client.start_stream(callback=on_response, headers=self.headers)
        self.responses = responses
        self.streams_opened += 1
        return responses

    def end_stream(self) -> None:
        """End the current stream: cancel it if a turn is in flight, else half-close it gracefully."""
        cancel = self.in_flight
        self.responses, self.in_flight = None, False
        try:
            self.client.stop_stream(cancel_requests=cancel)
        except Exception:
            log.debug("stop_stream failed", exc_info=True)

    def close(self) -> None:
        self.end_stream()
        try:
            self.client.close()
        except Exception:
            log.debug("closing the gRPC client failed", exc_info=True)

    def turn(self, inputs: list[grpcclient.InferInput], *, timeout_s: float, collector: TurnCollector,
             request_id: str | None = None) -> TurnResult:
        """Send one turn and collect its events into `collector` (partial results stay there on failure)."""
        rid = request_id or uuid.uuid4().hex
        keep = False
        try:
            responses = self.responses if self.responses is not None else self._open()
            sent_at = self.clock()
            collector.t0 = sent_at
            deadline = time.monotonic() + timeout_s
            try:
                self.client.async_stream_infer(TALKING_HEAD.name, inputs, request_id=rid,
                                               enable_empty_final_response=True)
            except InferenceServerException as e:  # the stream already broke; the reason came to the callback
                try:
                    _, _, error = responses.get(timeout=1.0)
                    e = error or e
                except queue.Empty:
                    pass
                raise ServerError(str(e.message()), status=e.status()) from None
            self.in_flight = True
            saw_done, n = False, 0
            while True:
                try:
                    received_at, result, error = responses.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TurnTimeout(f"turn did not finish within {timeout_s:g} s ({n} events)") from None
                if error is not None:  # the request's last response (or the stream's end)
                    self.in_flight = False
                    keep = error.status() is None  # an answer inside the stream: it stays open
                    raise ServerError(str(error.message()), status=error.status())
                if result.get_response().id != rid:
                    continue  # a late response of an earlier turn
                final = is_final_response(result)
                event = event_from_result(result, sent_at=sent_at, received_at=received_at, request_id=rid)
                if event is not None:
                    n += 1
                    saw_done = saw_done or event.type == ev.DONE
                    collector.add(event)
                if final:
                    self.in_flight = False
                    break
            if not saw_done:
                raise ProtocolError(f"turn ended without a '{ev.DONE}' event ({n} events)")
            return collector.result()
        except BaseException:  # an error, a timeout, or locust killing the user mid-turn
            if not keep:
                self.end_stream()
            raise


# ---------------------------------------------------------------- the simulated user

_user_numbers = itertools.count()


def _think(user: "TalkingHeadUser") -> float:
    lo, hi = Inputs.think
    return random.uniform(lo, hi)


class TalkingHeadUser(User):
    """A person talking to the digital human: conversations of `--turns` spoken or typed turns."""

    wait_time = _think

    def __init__(self, environment):
        super().__init__(environment)
        self.number = next(_user_numbers)
        opts = environment.parsed_options
        self.turns_per_conversation = getattr(opts, "turns", 3)
        self.speech_ratio = getattr(opts, "speech_ratio", 0.5) if Inputs.speech else 0.0
        self.turn_timeout_s = getattr(opts, "turn_timeout", 120.0)
        self.grpc_error_header = getattr(opts, "grpc_error_header", False)
        self.avatar_id: str | None = getattr(opts, "avatar", "") or None
        url = self.host or ""
        self.url = url[len("grpc://"):] if url.startswith("grpc://") else url
        if not self.url:
            raise ValueError("give the Triton gRPC endpoint: --host HOST:PORT (e.g. localhost:8001)")
        self.conversation: ConversationStream | None = None
        self.session = -1
        self.turn_in_session = 0

    # -- lifetime

    def on_start(self) -> None:
        if self.avatar_id is None:
            self._register()

    def on_stop(self) -> None:
        if self.conversation is not None:
            self.conversation.close()
            self.conversation = None

    def _register(self) -> None:
        t0 = time.perf_counter()
        exc: Exception | None = None
        try:
            with TalkingHeadClient(self.url, request_timeout_s=60.0) as c:
                self.avatar_id = c.register_avatar(Inputs.avatar_png).id
        except Exception as e:
            exc = TurnFailed(stats.classify(e), str(e))
        events.request.fire(request_type="register", name="avatar", response_time=(time.perf_counter() - t0) * 1000,
                            response_length=0, exception=exc, context={"user": self.number})

    # -- one turn per task; a conversation spans several tasks

    @task
    def turn(self) -> None:
        if self.avatar_id is None:
            self._register()
            if self.avatar_id is None:
                return
        if self.conversation is None or self.turn_in_session >= self.turns_per_conversation:
            if self.conversation is not None:
                self.conversation.close()
            self.conversation = ConversationStream(self.url, grpc_error_header=self.grpc_error_header)
            self.session += 1
            self.turn_in_session = 0
        kind = "speech" if random.random() < self.speech_ratio else "text"
        if kind == "speech":
            inputs = turn_inputs(self.avatar_id, audio=random.choice(Inputs.speech), options=Inputs.options)
        else:
            inputs = turn_inputs(self.avatar_id, text=random.choice(TEXTS), options=Inputs.options)
        where = dict(user=self.number, session=self.session, turn=self.turn_in_session, kind=kind)
        self.turn_in_session += 1
        rid = uuid.uuid4().hex
        collector = TurnCollector()
        started_at = time.time()
        t0 = time.perf_counter()
        try:
            result = self.conversation.turn(inputs, timeout_s=self.turn_timeout_s, collector=collector,
                                            request_id=rid)
        except Exception as e:
            elapsed = time.perf_counter() - t0
            sample = stats.TurnSample.failed(e, started_at=started_at, total_s=elapsed, partial=collector.result(),
                                             request_id=rid, **where)
            Inputs.samples.append(sample)
            events.request.fire(request_type="turn", name=kind, response_time=elapsed * 1000, response_length=0,
                                exception=TurnFailed(sample.failure_class, str(e).replace(rid, "<id>")),
                                context=where)
            return
        sample = stats.TurnSample.from_result(result, started_at=started_at, **where)
        Inputs.samples.append(sample)
        length = result.audio.nbytes + sum(len(f) for f in result.frames)
        events.request.fire(request_type="turn", name=kind, response_time=(result.total_s or 0.0) * 1000,
                            response_length=length, exception=None, context=where)
        fire_first_chunks(result, kind, where)


def fire_first_chunks(result: TurnResult, kind: str, where: dict) -> None:
    """TTFA and TTFF as their own rows of locust's statistics (web UI, --csv, --html): request_type "TTFA" / "TTFF",
    name = the turn's kind, response_time = time from sending the turn to its first audio chunk / video frame."""
    for request_type, seconds in (("TTFA", result.time_to_first_audio_s), ("TTFF", result.time_to_first_frame_s)):
        if seconds is not None:
            events.request.fire(request_type=request_type, name=kind, response_time=seconds * 1000,
                                response_length=0, exception=None, context=where)
