"""The tts stage on CUDA graphs (gpu variant): VITS as two fixed-shape halves around its one data-dependent step.

Run eagerly, one TTS call is ~5000 PyTorch operator calls from Python (base preset, 96 phonemes): 20-26 ms a
sentence at batch 1 on one H200, most likely launch overhead, and the largest queue at 48 sessions (BENCHMARKS.md).
Its only data-dependent shape is the number of latent frames, known once the durations are. So:

    text half   text encoder + stochastic duration predictor, phonemes padded to a bucket (the spec's
                `gpu_graphs`) -> m_p, logs_p, durations        one CUDA graph per (batch bucket, phoneme bucket)
    prior       length regulation and the prior's noise, to a frame bucket (FRAME_BUCKETS): ~20 eager kernels
    flow        the coupling flows                              one CUDA graph per (batch bucket, frame bucket)

Padding is exact: padded phonemes and frames are masked (export/toolchain/models/vits.py), so a row's result does
not depend on its batch or bucket. Longer inputs than the largest bucket run eagerly. Without CUDA the same
bucketed path runs eagerly (what the CPU tests check against the stage graph).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from export.runtime.batching import Feeds
from export.toolchain.models.vits import frame_lengths

FRAME_BUCKETS = (64, 128, 256, 512, 1024, 2048)  # latent frames (86 a second): up to 24 s in one graph


def bucket(n: int, sizes: Sequence[int]) -> int | None:
    """The smallest size >= n; None past the largest."""
    return next((s for s in sizes if s >= n), None)


class Captured:
    """`fn` of fixed-shape tensors, one CUDA graph per (batch bucket, shape key) once `capture`d.

    A call copies its arguments into the key's static inputs (rows past the call's keep earlier values: every row
    is computed independently) and replays; it returns views of the static outputs, valid until the next replay.
    A key or batch not captured (or no CUDA) runs `fn` eagerly on the arguments."""

    def __init__(self, fn: Callable[..., tuple[Tensor, ...]], batches: Sequence[int]):
        self.fn, self.batches = fn, tuple(batches)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple[Tensor, ...]]] = {}
        self.inputs: dict[int, list[Tensor]] = {}

    def capture(self, key: int, example: Sequence[Tensor], pool, stream: torch.cuda.Stream) -> None:
        """example: static inputs with the largest batch's rows (zeros do: rows are masked by their lengths)."""
        self.inputs[key] = list(example)
        for b in self.batches:
            args = [x[:b] for x in self.inputs[key]]
            self.fn(*args)  # warm-up outside the graph
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool, stream=stream):
                out = self.fn(*args)
            self.graphs[(b, key)] = (g, out)

    def __call__(self, key: int, *args: Tensor) -> tuple[Tensor, ...]:
        n = args[0].shape[0]
        found = self.graphs.get((bucket(n, self.batches) or 0, key))
        if found is None:
            return self.fn(*args)
        for x, a in zip(self.inputs[key], args):
            x[:n].copy_(a)
        g, out = found
        g.replay()
        return tuple(o[:n] for o in out)


class GraphedTts:
    """The tts stage (export/toolchain/models/vits.py TtsGraph under a TorchStage) with bucketed CUDA graphs:
    the same feeds in and outputs out as the stage itself. batches: the batch buckets captured; cudnn_benchmark:
    let cuDNN time its convolution algorithms for the captured shapes (its trials take transient workspace)."""

    def __init__(self, stage, batches: Sequence[int], phoneme_buckets: Sequence[int],
                 frame_buckets: Sequence[int] = FRAME_BUCKETS, cudnn_benchmark: bool = True):
        self.stage, self.model = stage, stage.graph.model
        self.cudnn_benchmark = cudnn_benchmark
        self.phonemes, self.frames = tuple(phoneme_buckets), tuple(frame_buckets)
        self.text = Captured(self._text, batches)
        self.flow = Captured(lambda z_p, y_mask: (self.model.flow(z_p, y_mask) * y_mask,), batches)
        if stage.device.type == "cuda":
            self._capture()

    def _text(self, ids: Tensor, lengths: Tensor, scales: Tensor, seed: Tensor) -> tuple[Tensor, ...]:
        s = scales.unsqueeze(-1)  # [B, 3, 1]: noise_scale, length_scale, noise_w
        return self.model.text(ids, lengths.reshape(-1), s[:, 1:2], s[:, 2:3], seed)

    def _capture(self) -> None:
        dev, dtype, rows = self.stage.device, self.stage.dtype, self.text.batches[-1]
        channels = self.model.config.inter_channels
        pool, stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        # the captured shapes are fixed: cuDNN may time its convolution algorithms once, in the warm-up run
        benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, self.cudnn_benchmark
        zeros = lambda *shape, dt=dtype: torch.zeros(shape, device=dev, dtype=dt)  # noqa: E731
        with torch.inference_mode(), torch.cuda.stream(stream):
            for t in self.phonemes:
                self.text.capture(t, [zeros(rows, t, dt=torch.int64), zeros(rows, 1, dt=torch.int64),
                                      zeros(rows, 3), zeros(rows, 1, dt=torch.int64)], pool, stream)
            for f in self.frames:
                self.flow.capture(f, [zeros(rows, channels, f), zeros(rows, 1, f)], pool, stream)
        torch.backends.cudnn.benchmark = benchmark
        torch.cuda.current_stream(dev).wait_stream(stream)
        torch.cuda.synchronize(dev)

    def __call__(self, feeds: Feeds) -> Feeds:
        ids = feeds["phonemes"]
        t_bucket = bucket(ids.shape[1], self.phonemes)
        if t_bucket is None:
            return self.stage(feeds)
        dev, dtype = self.stage.device, self.stage.dtype
        to = lambda name, dt=None: torch.from_numpy(np.ascontiguousarray(feeds[name])).to(dev, dt)  # noqa: E731
        with torch.inference_mode():
            ids_t = torch.nn.functional.pad(to("phonemes"), (0, t_bucket - ids.shape[1]))  # id 0: masked padding
            scales, seed = to("scales", dtype), to("seed")
            m_p, logs_p, durations = self.text(t_bucket, ids_t, to("phoneme_lengths"), scales, seed)
            frames = int(frame_lengths(durations).max())  # the one host sync, as in the eager stage
            f_bucket = bucket(frames, self.frames)
            z_p, y_mask, lengths = self.model.prior(m_p, logs_p, durations, scales[:, 0:1].unsqueeze(-1), seed,
                                                    f_bucket or frames)
            z = self.flow(f_bucket, z_p, y_mask)[0] if f_bucket else self.model.flow(z_p, y_mask) * y_mask
            out = (z[:, :, :frames], lengths.unsqueeze(1), durations[:, :ids.shape[1]].to(torch.int64))
            return {t.name: o.to(getattr(torch, t.numpy_dtype)).cpu().numpy()
                    for t, o in zip(self.stage.spec.outputs, out)}

