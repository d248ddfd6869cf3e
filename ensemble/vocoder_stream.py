"""Streaming vocoding over overlapping mel chunks: plan, trim, cross-fade (numpy only).

The stream never runs a model itself unless given a synchronous `vocode` callable.
Async use (the orchestrator awaits the HiFi-GAN model):

    vs = VocoderStream()                      # no vocode callable
    vs.append(mel)                            # [80, f] float32 as TTS produces it
    for work in vs.chunks_ready():            # (chunk_id, mel_with_context) items, each once
        audio = await vocode(work.mel)        # [80, g] -> [g * hop] samples
        for pcm in vs.accept(work.chunk_id, audio):   # accepts out of order, emits in order
            send(pcm)
    vs.close(); ...same loop...; assert vs.done

Synchronous use: `VocoderStream(vocode).push(mel)` / `.finish()` return the ready audio.
Without a vocode callable, push() is append() and finish() is close(); both return [] and the
audio comes out of accept(). Work items may be vocoded concurrently (asyncio.gather): accept()
takes them in any order and emits in order.

Chunk k covers the "core" mel frames [s, e) (chunk_frames of them, the last one possibly
more or fewer); the vocoder sees [s - context, e + context) clipped to the utterance, the
context samples are trimmed, and consecutive chunks overlap by crossfade_frames * hop samples
centred on the boundary, joined by a linear cross-fade (weights sum to 1, so identical
overlaps pass through unchanged). Concatenated output is exactly F * hop samples.

Guarantee: if the vocoder's receptive field (samples either side of an output sample) is at
most (context_frames - crossfade_frames / 2) * hop, every emitted sample equals whole-utterance
vocoding up to float32 rounding (tested: max abs error <= 1e-5 for a signal of peak ~1).
HiFi-GAN V1's theoretical receptive field is about 14 mel frames each side (conv_pre 3,
first upsampling stage's MRF 7.5, the rest ~3), so context_frames=8 is approximate for it
(its effective field is much smaller; the cross-fade hides what is left); use >= 15 for
bit-faithful output at the cost of more compute per chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from export.contract import media as C


@dataclass(frozen=True)
class VocoderStreamOptions:
    chunk_frames: int = 32  # new mel frames per vocoder call (the chunk core); 32 frames = 372 ms
    context_frames: int = 8  # mel frames of left and right context added to each call, trimmed from its audio
    crossfade_frames: int = 2  # frames (x hop samples) over which adjacent chunks are cross-faded; <= 2*context
    hop_length: int = C.TTS_MEL.hop_length  # audio samples per mel frame
    n_mels: int = C.TTS_MEL.n_mels  # mel bins per frame

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        if self.context_frames < 0:
            raise ValueError("context_frames must be >= 0")
        if not 0 <= self.crossfade_frames <= min(self.chunk_frames, 2 * self.context_frames):
            raise ValueError("crossfade_frames must be in [0, min(chunk_frames, 2 * context_frames)]")
        if (self.crossfade_frames * self.hop_length) % 2:
            raise ValueError("crossfade_frames * hop_length must be even")

    @property
    def crossfade_half(self) -> int:
        """Cross-fade samples on each side of a chunk boundary."""
        return self.crossfade_frames * self.hop_length // 2


class VocodeWork(NamedTuple):
    chunk_id: int  # pass back to accept()
    mel: np.ndarray  # [n_mels, g] float32: the chunk core plus its context


@dataclass(frozen=True)
class _Plan:
    ctx_start: int  # first mel frame given to the vocoder
    ctx_end: int  # one past the last mel frame given to the vocoder
    keep_start: int  # first output sample kept (absolute, utterance samples)
    keep_end: int  # one past the last output sample kept
    is_last: bool  # the chunk that ends the utterance (no cross-fade tail)


class VocoderStream:
    def __init__(self, vocode: Callable[[np.ndarray], np.ndarray] | None = None, chunk_frames: int = 32,
                 context_frames: int = 8, crossfade_frames: int = 2, *,
                 options: VocoderStreamOptions | None = None) -> None:
        self.options = options or VocoderStreamOptions(chunk_frames, context_frames, crossfade_frames)
        self._vocode = vocode
        o = self.options
        self._mel = np.zeros((o.n_mels, 0), np.float32)  # mel frames from _mel_start on
        self._mel_start = 0
        self._n_frames = 0  # mel frames appended
        self._closed = False
        self._next_core = 0  # first core frame of the next chunk to plan
        self._next_id = 0
        self._plans: dict[int, _Plan] = {}  # planned, not yet emitted
        self._results: dict[int, np.ndarray] = {}  # trimmed audio accepted, waiting for its turn
        self._next_emit = 0
        self._tail = np.zeros(0, np.float32)  # previous chunk's cross-fade region, held back
        self._samples_emitted = 0
        fade = np.arange(2 * o.crossfade_half, dtype=np.float64) + 0.5
        self._fade_in = (fade / max(1, fade.size)).astype(np.float32)  # linear ramp 0 -> 1

    # ------------------------------------------------------------ state

    @property
    def frames_in(self) -> int:
        return self._n_frames

    @property
    def samples_emitted(self) -> int:
        return self._samples_emitted

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def done(self) -> bool:
        """Closed, every chunk planned, accepted and emitted."""
        return self._closed and self._next_core >= self._n_frames and not self._plans

    # ------------------------------------------------------------ planning (async-friendly)

    def append(self, mel: np.ndarray) -> None:
        """Add mel frames [n_mels, f] (f may be 0)."""
        if self._closed:
            raise RuntimeError("append after close")
        m = np.asarray(mel, dtype=np.float32)
        if m.ndim != 2 or m.shape[0] != self.options.n_mels:
            raise ValueError(f"mel must be [{self.options.n_mels}, frames], got shape {m.shape}")
        self._mel = np.concatenate([self._mel, m], axis=1)
        self._n_frames += m.shape[1]

    def close(self) -> None:
        """No more mel: the remaining frames become the last chunk(s)."""
        self._closed = True

    def chunks_ready(self) -> list[VocodeWork]:
        """Plan every chunk whose mel (core + right context) is complete; each is returned once."""
        o = self.options
        total, work = self._n_frames, []
        while True:
            s = self._next_core
            if not self._closed:
                e = s + o.chunk_frames
                if e + o.context_frames > total:
                    break
                last = False
            else:
                if s >= total:
                    break
                e = s + o.chunk_frames
                # a remainder too short to hold a cross-fade joins this chunk
                last = total - e < max(1, o.crossfade_frames)
                if last:
                    e = total
            ctx_start = max(0, s - o.context_frames)
            ctx_end = min(total, e + o.context_frames)
            half = o.crossfade_half
            plan = _Plan(ctx_start, ctx_end,
                         s * o.hop_length - (half if s > 0 else 0),
                         e * o.hop_length + (0 if last else half), last)
            assert plan.keep_start >= ctx_start * o.hop_length and plan.keep_end <= ctx_end * o.hop_length
            mel = self._mel[:, ctx_start - self._mel_start: ctx_end - self._mel_start].copy()
            self._plans[self._next_id] = plan
            work.append(VocodeWork(self._next_id, mel))
            self._next_id += 1
            self._next_core = e
        drop = max(0, self._next_core - o.context_frames) - self._mel_start
        if drop > 0:
            self._mel = self._mel[:, drop:]
            self._mel_start += drop
        return work

    def accept(self, chunk_id: int, audio: np.ndarray) -> list[np.ndarray]:
        """Take the vocoder's audio for a planned chunk; return audio now ready, in order."""
        plan = self._plans.get(chunk_id)
        if plan is None or chunk_id in self._results:
            raise ValueError(f"chunk {chunk_id} is not awaiting audio")
        hop = self.options.hop_length
        a = np.asarray(audio, dtype=np.float32).reshape(-1)
        want = (plan.ctx_end - plan.ctx_start) * hop
        if a.shape[0] != want:
            raise ValueError(f"chunk {chunk_id}: vocoder returned {a.shape[0]} samples, expected {want}")
        base = plan.ctx_start * hop
        self._results[chunk_id] = a[plan.keep_start - base: plan.keep_end - base]
        out = []
        while self._next_emit in self._results:
            seg = self._results.pop(self._next_emit)
            plan = self._plans.pop(self._next_emit)
            n = self._tail.shape[0]
            if n:
                joined = self._tail * (1.0 - self._fade_in) + seg[:n] * self._fade_in
                seg = np.concatenate([joined, seg[n:]])
            n_tail = 0 if plan.is_last else 2 * self.options.crossfade_half
            self._tail = seg[seg.shape[0] - n_tail:].copy()
            seg = seg[: seg.shape[0] - n_tail]
            if seg.shape[0]:
                out.append(seg)
                self._samples_emitted += seg.shape[0]
            self._next_emit += 1
        return out

    # ------------------------------------------------------------ synchronous convenience

    def push(self, mel: np.ndarray) -> list[np.ndarray]:
        """append(); with a vocode callable, also vocode every ready chunk and return the audio."""
        self.append(mel)
        return self._run_ready()

    def finish(self) -> list[np.ndarray]:
        """close(); with a vocode callable, vocode the rest (output then totals frames_in * hop)."""
        self.close()
        out = self._run_ready()
        if self._vocode is not None:
            assert self.done and self._samples_emitted == self._n_frames * self.options.hop_length
        return out

    def _run_ready(self) -> list[np.ndarray]:
        if self._vocode is None:
            return []  # async use: the caller drives chunks_ready() / accept()
        out = []
        for work in self.chunks_ready():
            out += self.accept(work.chunk_id, self._vocode(work.mel))
        return out
