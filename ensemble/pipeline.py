"""One user turn through the whole pipeline, streamed: ASR → LLM → TTS → vocoder → lip-sync.

Plain asyncio over an `infer(model, inputs) -> outputs` coroutine, so it runs
the same inside Triton (BLS calls) and in tests (ONNX Runtime in process).
Three tasks overlap:
  reply   ASR (speech input), then LLM tokens → text events → Segmenter pieces
  speech  each piece → TTS → streaming vocoder → audio events
  video   audio progress + phoneme timings → lip-sync batches (ensemble/lipsync.py) → JPEG frames

Audio comes first: the video task drops a frame whose display time (first audio chunk = time 0)
would pass before the lip-sync stage could return it, so video never falls behind the voice (frame indices and
timestamps stay those of the 25 fps clock; dropped slots are counted). A turn can be interrupted
(`Turn.interrupt`: barge-in, an explicit cancel, the client cancelling its stream): its tasks are
cancelled at their next await, no further stage call is made, and a `done` event says why.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from ensemble import avatar as avatars
from ensemble import metrics, motion
from ensemble.decoding import Sampling, TokenIds, reply_tokens
from ensemble.errors import DeadlineExceeded
from ensemble.lipsync import FrameSource, frame_source
from ensemble.options import TurnOptions
from ensemble.speech import Voice
from ensemble.text import Segmenter, SegmenterOptions, strip_chat_markup
from ensemble.transcribe import transcribe
from ensemble.visemes import VisemeTrack
from ensemble.vocoder_stream import VocoderStream, VocoderStreamOptions
from export.contract import media, spec
from export.contract.events import AUDIO, DONE, PIECE, TEXT, TRANSCRIPT, VIDEO, Event
from export.contract.presets import Preset

Emit = Callable[[Event], None]
# One stage call: (model, inputs, timeout in seconds) -> outputs. Triton: a BLS request with that timeout.
StageCall = Callable[[str, dict[str, np.ndarray], float], Awaitable[dict[str, np.ndarray]]]
_END = object()
# Feature frames per streamed vocoder call (each family's context frames come on both sides; export/contract/spec.py
# SPEECH_FAMILIES); 32 frames = 372 ms of audio.
VOCODER_CHUNK_FRAMES = 32
CANCEL_POLL_S = 0.02  # how often a turn asks whether its client cancelled the stream


FIRST_METRICS = {AUDIO: metrics.TTFA, VIDEO: metrics.TTFF}


async def _sleep_until(t: float) -> None:
    """Sleep until perf_counter() reaches t (no wait if it has)."""
    if (wait := t - time.perf_counter()) > 0:
        await asyncio.sleep(wait)


class Cancelled(Exception):
    """The client cancelled the turn."""


@dataclass
class Tokenizers:
    """The text tokenizers of the ASR and the LLM (`tokenizers.Tokenizer` objects)."""

    asr: object
    llm: object
    chat_prompt: Callable[[str], str]  # applies the LLM's chat template to the user's words
    ids: TokenIds  # the special tokens both are driven with
    voice: Voice  # text -> the speech family's symbol ids and stage inputs (ensemble/speech.py)


@dataclass
class TurnStats:
    t0: float = field(default_factory=time.perf_counter)
    first: dict[str, float] = field(default_factory=dict)  # event type -> ms of its first emission
    stage_ms: dict[str, float] = field(default_factory=dict)  # summed time inside each stage model
    stage_calls: dict[str, int] = field(default_factory=dict)
    first_calls: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> ms its first call was
    # sent and answered: where a turn's first audio waited (queued behind other turns' calls, or its own loop)

    def ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0


class Turn:
    """Runs one turn and emits events; raise InputError for bad input, Cancelled on cancel."""

    def __init__(self, infer: StageCall, preset: Preset, tokenizers: Tokenizers, avatar: avatars.Avatar,
                 options: TurnOptions, emit: Emit, turn_id: str, is_cancelled: Callable[[], bool] = lambda: False,
                 recorder: metrics.Recorder | None = None, frame_workers: Executor | None = None,
                 speech_worker: Executor | None = None,
                 session_stages: frozenset[str] = frozenset(), frame_stage: str = "", frame_lead_s: float = 0.0,
                 first_frames: int = 1, restore_avatar: Callable[[avatars.Avatar], object] | None = None,
                 llm_chunk_tokens: int = 1, audio_lead_s: float = 0.0,
                 first_piece_words: int = SegmenterOptions.first_max_words):
        self._infer = infer
        # writes the turn's avatar back to the store when the frame stage no longer finds it there (AvatarStore.save)
        self.restore_avatar = restore_avatar
        self.session_stages = session_stages  # stages that keep the decoding cache server-side (ServiceConfig)
        self.frame_lead_s = frame_lead_s  # frames made at most this long before their display time, 0: unpaced
        self.audio_lead_s = audio_lead_s  # speech made at most this long before it plays, 0: unpaced
        self.first_frames = first_frames  # frames in a turn's first lip-sync call (ServiceConfig)
        self.llm_chunk_tokens = llm_chunk_tokens  # tokens the llm samples per request (ServiceConfig)
        self.first_piece_words = first_piece_words  # words of a reply's first TTS piece at most (ServiceConfig)
        self.preset = preset
        self.tok = tokenizers
        self.avatar = avatar
        self.options = options
        self._emit = emit
        self.turn_id = turn_id
        self.is_cancelled = is_cancelled
        self.recorder = recorder or metrics.MemoryRecorder()
        self.frame_workers = frame_workers  # threads for pixel work (OpenCV and numpy release the GIL)
        self.speech_worker = speech_worker  # espeak-ng's thread (None: the loop's default executor)
        self.stats = TurnStats()
        self.deadline = self.stats.t0 + options.deadline_s
        self.transcript = ""
        self.reply = ""
        self.audio_samples = 0
        self.audio_chunks = 0
        self.first_audio_at: float | None = None  # perf_counter of the first audio chunk: the playback clock's 0
        self.video_frames = 0  # frames sent
        self.frames_dropped = 0  # frame slots skipped (late, or the frame stride)
        self.frames_late_dropped = 0  # ... of which late: the lip-sync stage could not make them in time
        self.frames_late_dropped_first_s = 0  # ... of those, frames due in the turn's first second of video
        self.timeline = motion.Timeline()  # the reply pieces' emotions on the audio clock
        self.interrupted: str | None = None  # why the turn stopped early: "barge_in", "cancel", "client"
        self._tasks: list[asyncio.Future] = []
        self._lipsync_s = 0.0  # recent seconds per lip-sync call after the turn's first (EWMA): when a frame is ready
        self._utterances = 0  # acoustic-model calls so far (each gets its own noise seed)
        self.visemes = VisemeTrack()  # the speech's mouth shapes on the audio clock (from its phoneme timings)
        # frame_stage: the model that composes warp frames, "": this process (ServiceConfig)
        self.frames = frame_source(preset.lipsync, self.visemes, composed=bool(frame_stage))
        self._timed_at: float | None = None  # perf_counter when the first utterance was timed (frames that follow
        # the timing may be asked for before the first audio: their pacing clock's 0 until that audio exists)

    def interrupt(self, reason: str) -> None:
        """Stop the turn now: its tasks are cancelled, queued stage work is dropped, `run` ends the turn."""
        if self.interrupted is None:
            self.interrupted = reason
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------ plumbing
    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.is_cancelled():
            raise Cancelled()
        t = time.perf_counter()
        left = self.deadline - t
        if left <= 0:
            raise DeadlineExceeded(f"deadline exceeded: the turn's {self.options.deadline_s:g} s passed before {model}")
        try:
            out = await self._infer(model, inputs, left)
        except Exception as e:
            if time.perf_counter() >= self.deadline:
                raise DeadlineExceeded(f"deadline exceeded: the turn's {self.options.deadline_s:g} s passed"
                                       f" during {model} ({e})") from None
            raise
        ms = (time.perf_counter() - t) * 1000.0
        self.recorder.observe(metrics.STAGE_LATENCY, ms / 1000.0, stage=model)
        s = self.stats
        s.stage_ms[model] = s.stage_ms.get(model, 0.0) + ms
        s.stage_calls[model] = s.stage_calls.get(model, 0) + 1
        if model not in s.first_calls:
            sent = (t - s.t0) * 1000.0
            s.first_calls[model] = (round(sent, 1), round(sent + ms, 1))
        return out

    async def call(self, stage: spec.ModelSpec, **inputs: np.ndarray) -> spec.Outputs:
        """One stage call with inputs and outputs named by the stage's spec (a wrong name fails at once)."""
        return await stage.call(self.infer, **inputs)

    def emit(self, kind: str, data: dict, audio: np.ndarray | None = None, frame: bytes | None = None) -> None:
        t_ms = round(self.stats.ms(), 1)
        if kind not in self.stats.first:
            self.stats.first[kind] = t_ms
            if kind in FIRST_METRICS:
                self.recorder.observe(FIRST_METRICS[kind], t_ms / 1000.0)
        self._emit(Event(kind, {"turn_id": self.turn_id, "t_ms": t_ms, **data}, audio=audio, frame=frame))

    # ------------------------------------------------------------ the turn
    async def run(self, *, text: str | None = None, audio16k: np.ndarray | None = None,
                  idle_s: float | None = None, say: str | None = None) -> None:
        """The turn: a reply to `text` or to speech (`audio16k`), `say` spoken as it is, or `idle_s` seconds of
        idle motion."""
        pieces: asyncio.Queue = asyncio.Queue()
        video_q: asyncio.Queue = asyncio.Queue()
        if idle_s is not None:
            jobs = [self._idle(idle_s)]
        else:
            reply = self._reply(text, audio16k, pieces) if say is None else self._say(say, pieces)
            if not self.options.streaming:
                jobs = [self._naive(reply, pieces, video_q)]
            else:
                jobs = [reply, self._speech(pieces, video_q)]
                if self.options.video:
                    jobs.append(self._video(video_q))
        self._tasks = [asyncio.ensure_future(j) for j in jobs]
        watcher = asyncio.ensure_future(self._watch_client())
        try:
            await asyncio.gather(*self._tasks)
        except asyncio.CancelledError:
            if self.interrupted is None:
                raise
        finally:
            watcher.cancel()
            for t in self._tasks:
                if not t.done() and self.interrupted is None:  # a sibling failed: stop the rest (once)
                    t.cancel()
            # let every task run its finally blocks (e.g. releasing a KV session) before the turn ends
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.interrupted == "client":
            raise Cancelled()
        s = self.stats
        self.emit(DONE, {
            "reply": self.reply, "transcript": self.transcript, "audio_samples": self.audio_samples,
            "sample_rate": media.OUTPUT_SAMPLE_RATE, "video_frames": self.video_frames,
            "frames_dropped": self.frames_dropped, "frames_dropped_late": self.frames_late_dropped,
            "frames_dropped_late_first_s": self.frames_late_dropped_first_s,
            "frame_stride": self.options.frame_stride, "interrupted": self.interrupted,
            "timings_ms": {"first_" + k: v for k, v in s.first.items()} | {"total": round(s.ms(), 1)},
            "stage_ms": {k: round(v, 1) for k, v in s.stage_ms.items()}, "stage_calls": s.stage_calls,
            "first_calls_ms": {k: list(v) for k, v in s.first_calls.items()},
        })

    async def _watch_client(self) -> None:
        """Interrupt the turn as soon as its client cancels the stream (not only at the next stage call)."""
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            if self.is_cancelled():
                self.interrupt("client")
                return

    async def _naive(self, reply: Awaitable[None], pieces: asyncio.Queue, video_q: asyncio.Queue) -> None:
        """The benchmark's baseline: every stage finishes before the next starts; nothing is sent until the end."""
        held: list[Event] = []
        send, self._emit = self._emit, held.append
        try:
            await reply
            await self._speech(pieces, video_q)
            if self.options.video:
                await self._video(video_q)
        finally:
            self._emit = send
        for event in held:
            send(event)

    async def _reply(self, text: str | None, audio16k: np.ndarray | None, pieces: asyncio.Queue) -> None:
        try:
            if audio16k is not None:
                self.transcript = await transcribe(self.infer, self.tok, self.preset, audio16k,
                                                   server_side=spec.ASR_DECODER.name in self.session_stages)
                self.emit(TRANSCRIPT, {"text": self.transcript})
                # spoken words are user text too: no chat markup reaches the prompt
                text = strip_chat_markup(self.transcript) or "..."
            await self._generate(text, pieces)
        finally:
            pieces.put_nowait(_END)

    async def _say(self, text: str, pieces: asyncio.Queue) -> None:
        """The reply is `text` itself: streamed as one text event, cut into pieces as an LLM reply would be."""
        try:
            self.reply = text
            self.emit(TEXT, {"delta": text, "piece": 0})
            segmenter, n_pieces = Segmenter(self.first_piece_words), 0
            for piece in segmenter.push(text) + segmenter.finish():
                n_pieces = self._send_piece(piece, n_pieces, pieces)
        finally:
            pieces.put_nowait(_END)

    async def _generate(self, user_text: str, pieces: asyncio.Queue) -> None:
        tok = self.tok.llm
        ids = tok.encode(self.tok.chat_prompt(user_text), add_special_tokens=False).ids[-self._max_prompt():]
        stops = self.tok.ids.llm_stop
        specials = list(self.tok.ids.llm_banned)
        if self.options.ignore_eos:
            specials += sorted(stops)
        vocab = tok.get_vocab_size()  # a model vocabulary padded past the tokenizer's: never sample the padding
        limit = self.options.max_reply_tokens or self.preset.max_reply_tokens
        # the GPU variant keeps the KV cache on its side (one session per turn): released on every way out
        decoder, tokens = await reply_tokens(
            self.infer, spec.LLM, self.preset, ids, Sampling(self.options.temperature, self.options.top_k,
                                                             self.options.seed, vocab),
            stops=stops, banned=specials, limit=limit, server_cache=spec.LLM.name in self.session_stages,
            chunk=self.llm_chunk_tokens, release=self._infer)
        segmenter = Segmenter(self.first_piece_words)
        out: list[int] = []
        n_pieces = 0
        try:
            async for token in tokens:
                out.append(token)
                text = tok.decode(out)
                delta, self.reply = text[len(self.reply):], text
                if delta:
                    self.emit(TEXT, {"delta": delta, "piece": n_pieces})
                    for piece in segmenter.push(delta):
                        n_pieces = self._send_piece(piece, n_pieces, pieces)
            for piece in segmenter.finish():
                n_pieces = self._send_piece(piece, n_pieces, pieces)
        finally:
            await decoder.close()

    def _send_piece(self, piece: str, index: int, pieces: asyncio.Queue) -> int:
        emotion = motion.classify(piece)
        self.emit(PIECE, {"index": index, "text": piece, "emotion": emotion})
        pieces.put_nowait((piece, emotion))
        return index + 1

    def _max_prompt(self) -> int:
        return spec.LLM.axis("tokens").max

    async def _speech(self, pieces: asyncio.Queue, video_q: asyncio.Queue) -> None:
        voice = self.tok.voice
        family = voice.stages
        max_ids = family.acoustic.axis("phonemes").max
        try:
            while (item := await pieces.get()) is not _END:
                piece, emotion = item
                self.timeline.add(self.audio_samples / media.OUTPUT_SAMPLE_RATE, emotion)  # where its audio starts
                # espeak-ng answers in ~0.3 ms, but a new child after a crash takes ~50 ms and a hung one up to its
                # timeout: off the loop, that wait holds this turn's speech only, never every session's stream
                loop = asyncio.get_running_loop()
                for u in await loop.run_in_executor(self.speech_worker, voice.utterances, piece, max_ids):
                    seed = self.options.seed * 100_003 + self._utterances  # the voice's noise: per utterance
                    self._utterances += 1
                    await self._pace_audio()
                    out = await self.call(family.acoustic, **voice.request(u, self.options, seed))
                    features = out[family.features][0][:, : int(out[family.feature_lengths][0, 0])]
                    self._add_phones(u, out["durations"][0][: len(u.ids)])
                    if self.frames.follows_timing:  # the video need not wait for the vocoder
                        self._timed_at = self._timed_at or time.perf_counter()
                        video_q.put_nowait(features.shape[1] * media.TTS_MEL.hop_length)
                    await self._vocode(features, video_q)
        finally:
            video_q.put_nowait(_END)

    def _add_phones(self, u, durations: np.ndarray) -> None:
        """Each symbol's (start s, length s) on the audio clock, from the acoustic model's frames per symbol."""
        frame_s = media.TTS_MEL.hop_length / media.OUTPUT_SAMPLE_RATE
        t = self.audio_samples / media.OUTPUT_SAMPLE_RATE
        for symbol, frames in zip(u.symbols, durations.tolist()):
            self.visemes.add(symbol, t, frames * frame_s)
            t += frames * frame_s

    async def _vocode(self, features: np.ndarray, video_q: asyncio.Queue) -> None:
        family = self.tok.voice.stages
        context = family.context_frames
        whole = family.vocoder.axis("frames").max - 2 * context  # naive: one call per utterance
        stream = VocoderStream(options=VocoderStreamOptions(
            chunk_frames=VOCODER_CHUNK_FRAMES if self.options.streaming else whole, context_frames=context,
            n_mels=features.shape[0]))
        stream.push(features)
        stream.finish()
        for chunk_id, chunk in stream.chunks_ready():
            await self._pace_audio()
            audio = (await self.call(family.vocoder, **{family.features: chunk[None]}))["audio"][0]
            for ready in stream.accept(chunk_id, audio):
                self._emit_audio(ready, video_q)

    def _emit_audio(self, audio: np.ndarray, video_q: asyncio.Queue) -> None:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
        self.emit(AUDIO, {"index": self.audio_chunks, "sample_rate": media.OUTPUT_SAMPLE_RATE,
                          "start_sample": self.audio_samples, "samples": int(audio.size)}, audio=audio)
        self.audio_chunks += 1
        self.audio_samples += int(audio.size)
        if not self.frames.follows_timing:
            video_q.put_nowait(audio)

    async def _video(self, video_q: asyncio.Queue) -> None:
        """The frames of the slots that `video_q` makes due: audio chunks, or (a source that follows the speech's
        timing) the samples each utterance will have."""
        source = self.frames
        slots: list = []  # (frame index on the 25 fps clock, what drives it), due and not yet made
        while True:
            item = await video_q.get()
            if item is _END:
                slots += source.finish(self.audio_samples)
                break
            slots += source.advance(item) if isinstance(item, int) else source.push(item)
            size = self.first_frames if self.video_frames == 0 else self.options.lipsync_batch
            while len(slots) >= size:
                batch, slots = slots[:size], slots[size:]
                await self._pace(batch[-1][0])
                await self._lipsync(source, batch)
                size = self.options.lipsync_batch
        while slots:
            batch, slots = slots[: self.options.lipsync_batch], slots[self.options.lipsync_batch:]
            await self._pace(batch[-1][0])
            await self._lipsync(source, batch)

    async def _pace(self, index: int) -> None:
        """With frame_lead_s (streaming): wait until frame slot `index` (a batch's last) is due within that lead of
        its display time on the audio clock (before the first audio: from when the first utterance was timed), so the
        frames other turns need now do not queue behind this one's."""
        clock = self.first_audio_at if self.first_audio_at is not None else self._timed_at
        if self.frame_lead_s > 0 and self.options.streaming and clock is not None:
            await _sleep_until(clock + index / media.VIDEO_FPS - self.frame_lead_s)

    async def _pace_audio(self) -> None:
        """With audio_lead_s (streaming): wait until the audio sent so far is within that lead of playing out on the
        audio clock, before the next TTS or vocoder call; a turn's first audio is never held back. 48 turns that
        start together then ask for their first speech together, not for all of it at once."""
        if self.audio_lead_s > 0 and self.options.streaming and self.first_audio_at is not None:
            await _sleep_until(self.first_audio_at + self.audio_samples / media.OUTPUT_SAMPLE_RATE - self.audio_lead_s)

    def _keep(self, index: int) -> bool:
        """Whether frame slot `index` is made: every frame_stride-th, and (streaming) only if it can still
        reach the client before its display time (audio first: a late frame is dropped, not sent late)."""
        reason = None
        if index % self.options.frame_stride:
            reason = "stride"
        elif self.options.streaming and self.video_frames and self.first_audio_at is not None:
            ready_at = time.perf_counter() + self._lipsync_s
            if ready_at > self.first_audio_at + index / media.VIDEO_FPS + metrics.LATE_FRAME_S:
                reason = "late"
        if reason is None:
            return True
        self.frames_dropped += 1
        self.frames_late_dropped += reason == "late"
        self.frames_late_dropped_first_s += reason == "late" and index < media.VIDEO_FPS
        self.recorder.inc(metrics.FRAMES_DROPPED, reason=reason)
        return False

    async def _lipsync(self, source: FrameSource, slots: list) -> None:
        slots = [(i, d) for i, d in slots if self._keep(i)]
        if not slots:
            return
        first = self.video_frames == 0
        t = time.perf_counter()
        if source.composed:  # the stage makes the frames whole: poses and visemes out, JPEGs back
            poses = [self.timeline.pose(i / media.VIDEO_FPS) for i, _ in slots]
            request = source.request(self.avatar, poses, slots, self.options.jpeg_quality)
            try:
                out = await self.call(source.stage, **request)
            except Exception as e:  # the registry evicted the avatar mid-turn: this turn still holds it
                if self.restore_avatar is None or avatars.NOT_REGISTERED not in str(e):
                    raise
                await asyncio.to_thread(self.restore_avatar, self.avatar)  # a file write: off the event loop
                out = await self.call(source.stage, **request)
            jpegs = [bytes(b) for b in out["frame"].reshape(-1)]
            took = time.perf_counter() - t
        else:
            images, inputs, state = await self._off_loop(self._prepare_frames, source, slots)
            t = time.perf_counter()
            generated = (await self.call(source.stage, **inputs))["frames"]
            took = time.perf_counter() - t
            jpegs = await self._off_loop(self._finish_frames, source, images, state, generated)
        if not first:  # the first call waits behind every turn that starts with it: no forecast of the next ones
            self._lipsync_s = took if not self._lipsync_s else 0.7 * self._lipsync_s + 0.3 * took
        for (i, _), jpeg in zip(slots, jpegs):
            self._send_frame(i, self.avatar.image.shape, jpeg)

    async def _off_loop(self, fn, *args):
        """Pixel work (motion, crops, compositing, JPEG) on the frame workers, so the event loop stays free
        for audio, new requests and cancels; inline when the turn has no workers (tests)."""
        if self.frame_workers is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.frame_workers, fn, *args)

    def _prepare_frames(self, source: FrameSource, slots: list) -> tuple[list[np.ndarray], dict, object]:
        """The moved avatar image of each frame slot and the lip-sync stage's inputs for them."""
        poses = [self.timeline.pose(i / media.VIDEO_FPS) for i, _ in slots]
        images = [motion.render(self.avatar.image, self.avatar.box, pose) for pose in poses]
        inputs, state = source.inputs(self.avatar, images, poses, slots)
        return images, inputs, state

    def _finish_frames(self, source: FrameSource, images: list[np.ndarray], state, generated: np.ndarray
                       ) -> list[bytes]:
        """The stage's output made into frames, JPEG-encoded."""
        return [avatars.encode_jpeg(frame, quality=self.options.jpeg_quality)
                for frame in source.frames(self.avatar, images, state, generated)]

    def _send_frame(self, index: int, shape: tuple[int, ...], jpeg: bytes) -> None:
        pts = index / media.VIDEO_FPS
        self.emit(VIDEO, {"index": index, "pts": pts, "width": shape[1], "height": shape[0],
                          "encoding": "jpeg", "emotion": self.timeline.at(pts)[0]}, frame=jpeg)
        if (self.options.streaming and self.first_audio_at is not None
                and time.perf_counter() - self.first_audio_at > pts + metrics.LATE_FRAME_S):
            self.recorder.inc(metrics.FRAMES_LATE)
        self.video_frames += 1

    async def _idle(self, seconds: float) -> None:
        """Idle motion without speech, paced in real time: the avatar breathes and sways, never freezes."""
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()  # the idle clock's 0
        for index in range(0, max(1, round(seconds * media.VIDEO_FPS)), self.options.frame_stride):
            due = self.first_audio_at + index / media.VIDEO_FPS
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            image = motion.render(self.avatar.image, self.avatar.box, motion.idle_pose(self.options.idle_from_s + index / media.VIDEO_FPS))
            self._send_frame(index, image.shape, avatars.encode_jpeg(image, quality=self.options.jpeg_quality))
