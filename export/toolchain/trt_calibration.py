"""Inputs for TensorRT builds: INT8 calibration sets, the entropy calibrator, and parity feeds.

Calibration batches come from one of two places:

* generated: the stage graph's own `example_inputs` (random but realistic:
  valid token ids, phoneme lengths in range, log-mel values in the mel range,
  face crops in 0..1), drawn at the spec's opt shapes with a fresh seed per batch;
* real: a folder of `.npz` files, one batch each, holding one array per spec
  input name (with the batch axis when the model is batched; a missing batch
  axis is added). Files whose shapes differ from the first file's are left out,
  since a calibration profile has one fixed shape per input.

The calibrator class is made per TensorRT module (`tensorrt` or
`tensorrt_rtx`), because the builder is picked at run time. Only full TensorRT
has INT8 calibration (`IInt8EntropyCalibrator2`); TensorRT-RTX has none.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from export.contract.presets import Preset
from export.contract.spec import ModelSpec, sample_shape

# Calibration batches are small: the calibration profile is independent of the engine's profile.
DEFAULT_CALIBRATION_BATCH = 4


@functools.lru_cache(maxsize=2)
def _graph(preset: Preset, name: str):
    from export.toolchain.graphs import build_graphs

    return build_graphs(preset, 0, [name])[name]


def example_feeds(spec: ModelSpec, preset: Preset, batch: int = 1, seed: int = 0, **sizes: int
                  ) -> dict[str, np.ndarray]:
    """One batch of the graph's own example inputs, as numpy arrays keyed by input name.

    Dynamic axes default to their opt size (`export.contract.spec.sample_shape`).
    """
    if not spec.torch_module:  # no PyTorch graph to draw from: the packaged graph's own example inputs
        from export.contract.spec import FACE_DETECTOR, VAD
        from export.toolchain import face, vad

        if spec.name == FACE_DETECTOR.name:
            return {spec.inputs[0].name: face.example_images(batch=batch, seed=seed)}
        assert spec.name == VAD.name, spec.name
        return vad.example_feeds(batch=batch if spec.batched else 1, seed=seed)
    import torch

    graph = _graph(preset, spec.name)
    with torch.inference_mode():
        inputs = graph.example_inputs(batch=batch if spec.batched else 1, seed=seed, **sizes)
    return {t.name: np.ascontiguousarray(x.numpy().astype(t.numpy_dtype, copy=False))
            for t, x in zip(spec.inputs, inputs)}


def generated_batches(spec: ModelSpec, preset: Preset, n: int, batch: int = DEFAULT_CALIBRATION_BATCH,
                      seed: int = 1000) -> Iterator[dict[str, np.ndarray]]:
    """`n` generated calibration batches at the opt shapes (batch axis = `batch`), lazily."""
    batch = min(batch, spec.max_batch_size) if spec.batched else 1
    for i in range(n):
        yield example_feeds(spec, preset, batch=batch, seed=seed + i)


def npz_batches(spec: ModelSpec, folder: Path, n: int | None = None, log: Callable[[str], None] = print
                ) -> list[dict[str, np.ndarray]]:
    """Real calibration batches from `folder/*.npz` (sorted by name; the first `n` usable ones)."""
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{spec.name}: no .npz calibration files in {folder}")
    batches: list[dict[str, np.ndarray]] = []
    left_out = []
    shapes: dict[str, tuple[int, ...]] | None = None
    for f in files:
        with np.load(f) as z:
            missing = [t.name for t in spec.inputs if t.name not in z.files]
            if missing:
                raise KeyError(f"{f}: no array for input(s) {missing} of {spec.name} (has {z.files})")
            feeds = {}
            for t in spec.inputs:
                a = np.asarray(z[t.name]).astype(t.numpy_dtype, copy=False)
                if spec.batched and a.ndim == len(t.dims):
                    a = a[None]
                feeds[t.name] = np.ascontiguousarray(a)
        got = {k: v.shape for k, v in feeds.items()}
        if shapes is None:
            shapes = got
        if got != shapes:
            left_out.append(f.name)
            continue
        batches.append(feeds)
        if n is not None and len(batches) >= n:
            break
    if left_out:
        log(f"  {spec.name}: {len(left_out)} calibration file(s) left out (shapes differ from {files[0].name}):"
            f" {', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}")
    return batches


def calibration_batches(spec: ModelSpec, preset: Preset, n: int, folder: Path | None = None,
                        batch: int = DEFAULT_CALIBRATION_BATCH, log: Callable[[str], None] = print
                        ) -> tuple[dict[str, tuple[int, ...]], Iterable[dict[str, np.ndarray]]]:
    """(fixed input shapes, batches) for one model: real ones from `folder` if given, else generated."""
    if folder is not None:
        batches = npz_batches(spec, folder, n, log)
        return {k: v.shape for k, v in batches[0].items()}, batches
    b = min(batch, spec.max_batch_size) if spec.batched else 1
    shapes = sample_shape(spec, preset, batch=b)
    return {k: tuple(v) for k, v in shapes.items()}, generated_batches(spec, preset, n, b)


def entropy_calibrator(trt, shapes: dict[str, tuple[int, ...]], batches: Iterable[dict[str, np.ndarray]],
                       cache_path: Path | None = None, log: Callable[[str], None] = print):
    """An `IInt8EntropyCalibrator2` of module `trt` fed from `batches` (device buffers via torch CUDA).

    `shapes` is the one shape per input every batch has; the builder gets it as the
    calibration profile (`calibrator.shapes`). A calibration cache at `cache_path` is
    read instead of calibrating when present, and written after calibration.
    """
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise NotImplementedError(f"{trt.__name__} {getattr(trt, '__version__', '?')} has no INT8 calibration"
                                  " (IInt8EntropyCalibrator2); TensorRT-RTX cannot build INT8 by calibration")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("INT8 calibration runs the network on the GPU: no CUDA device (torch.cuda) here")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.shapes = dict(shapes)
            self.cache_path = Path(cache_path) if cache_path else None
            self._it = iter(batches)
            self._buffers: dict[str, torch.Tensor] = {}
            self.count = 0

        def get_batch_size(self) -> int:
            return 1  # explicit-batch network: the batch axis is part of each input's shape

        def get_batch(self, names, *_):
            try:
                feeds = next(self._it)
            except StopIteration:
                return None
            ptrs = []
            for name in names:
                a = feeds[name]
                if tuple(a.shape) != tuple(self.shapes[name]):
                    raise ValueError(f"calibration batch {self.count}: {name} has shape {a.shape},"
                                     f" the calibration profile {self.shapes[name]}")
                src = torch.from_numpy(a)
                buf = self._buffers.get(name)
                if buf is None:
                    buf = self._buffers[name] = torch.empty(src.shape, dtype=src.dtype, device="cuda")
                buf.copy_(src)
                ptrs.append(int(buf.data_ptr()))
            torch.cuda.synchronize()
            self.count += 1
            return ptrs

        def read_calibration_cache(self):
            if self.cache_path is not None and self.cache_path.exists():
                log(f"  calibration cache: {self.cache_path} (delete it to recalibrate)")
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            if self.cache_path is None:
                return
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
            tmp.write_bytes(bytes(cache))
            tmp.replace(self.cache_path)
            log(f"  calibration cache written: {self.cache_path} ({self.count} batch(es))")

    return EntropyCalibrator()
