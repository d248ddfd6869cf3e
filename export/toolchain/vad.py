"""The VAD stage: silero VAD's own ONNX graph in a thin wrapper that fits the repository.

Silero VAD is not a PyTorch graph of this repository: its weights ship as ONNX in the `silero-vad`
wheel (installed with --no-deps: its pip dependencies pull torchaudio). The wrapper, made with the
`onnx` library, changes only the interface (export/contract/spec.py `VAD`):

    audio  [B, 576] float32 (64 samples of context + one 512-sample window at 16 kHz) -> silero `input`
    state  [B, 2, 128] float32, Transpose -> silero `state` [2, B, 128]
    sr     folded to the constant 16000 (media.VAD_SAMPLE_RATE)
    silero `output` [B, 1] -> probability [B, 1] (speech probability of the window)
    silero `stateN` [2, B, 128], Transpose -> next_state [B, 2, 128]

so that every tensor is batch-first and Triton's dynamic batcher can stack the windows of many
sessions; onnxscript's optimizer then folds what depended on `sr` (TensorRT refuses silero's `If`s on it). `write_vad` writes `<repository>/vad/1/model.onnx` and its manifest `export.json`
(idempotent: skipped when the source graph, this code and the spec are unchanged); `parity`
compares the wrapper with the original graph through ONNX Runtime.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
from pathlib import Path

import numpy as np

from export.contract import media
from export.contract import spec as specs

PACKAGE = "silero-vad"
SOURCE_FILE = "silero_vad_16k_op15.onnx"  # in the wheel's silero_vad/data/
PREFIX = "silero/"  # added to silero's graph inputs and outputs inside the wrapper
PARITY_ATOL = 1e-5  # probability and state are in [-1, 1]: absolute error
INSTALL_HINT = f"pip install --no-deps {PACKAGE}==6.2.3 (see requirements-nodeps.txt)"


class VadSourceMissing(FileNotFoundError):
    """The silero-vad wheel (or its ONNX file) is not installed."""


def source_path() -> Path:
    """silero's 16 kHz opset-15 graph inside the installed wheel."""
    try:
        path = importlib.resources.files("silero_vad") / "data" / SOURCE_FILE
    except ModuleNotFoundError:
        raise VadSourceMissing(f"the {PACKAGE} wheel is not installed: {INSTALL_HINT}") from None
    if not path.is_file():
        raise VadSourceMissing(f"{path} not found in the installed {PACKAGE} wheel: {INSTALL_HINT}")
    return Path(str(path))


def source_version() -> str:
    return importlib.metadata.version(PACKAGE)


def wrap(source: Path):
    """The wrapper ModelProto around silero's graph (names and dims from specs.VAD)."""
    import onnx
    from onnx import TensorProto, helper

    spec = specs.VAD
    silero = onnx.load(str(source))
    g = silero.graph
    assert sorted(i.name for i in g.input) == ["input", "sr", "state"], [i.name for i in g.input]
    assert [o.name for o in g.output] == ["output", "stateN"], [o.name for o in g.output]
    ours = {t.name for t in spec.inputs + spec.outputs}
    clash = ours & _tensor_names(g)
    assert not clash - {"state"}, f"silero uses the wrapper's tensor names {clash}"
    _rename(g, {n: PREFIX + n for n in ("input", "state", "sr", "output", "stateN")})
    audio, state = spec.inputs
    probability, next_state = spec.outputs
    nodes = [
        helper.make_node("Identity", [audio.name], [PREFIX + "input"], name="wrap/audio"),
        helper.make_node("Transpose", [state.name], [PREFIX + "state"], perm=[1, 0, 2], name="wrap/state"),
        *g.node,
        helper.make_node("Identity", [PREFIX + "output"], [probability.name], name="wrap/probability"),
        helper.make_node("Transpose", [PREFIX + "stateN"], [next_state.name], perm=[1, 0, 2], name="wrap/next_state"),
    ]
    sr = helper.make_tensor(PREFIX + "sr", TensorProto.INT64, [], [media.VAD_SAMPLE_RATE])

    def value_info(t):
        dtype = helper.np_dtype_to_tensor_dtype(np.dtype(t.numpy_dtype))
        return helper.make_tensor_value_info(t.name, dtype, [specs.BATCH_AXIS, *t.dims])

    graph = helper.make_graph(
        nodes, "silero_vad_batch_first",
        inputs=[value_info(t) for t in spec.inputs], outputs=[value_info(t) for t in spec.outputs],
        initializer=[*g.initializer, sr], value_info=list(g.value_info))
    model = helper.make_model(graph, opset_imports=list(silero.opset_import), ir_version=silero.ir_version,
                              producer_name="talking-head export.toolchain.vad",
                              doc_string=f"{PACKAGE} {source_version()} {SOURCE_FILE}, batch-first, sr=16000")
    # sr is a constant now: fold what depended on it, and the `If` nodes with it (TensorRT refuses silero's `If`s)
    from onnxscript import optimizer

    model = optimizer.optimize(model)
    used = _tensor_names(model.graph)
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.checker.check_model(model, full_check=True)
    return model


def _tensor_names(graph) -> set[str]:
    names = {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for a in node.attribute:
            if a.g.node:
                names |= _tensor_names(a.g)
    return names


def _rename(graph, names: dict[str, str]) -> None:
    """Rename tensors everywhere in `graph`, If/Loop bodies included (they see the outer scope's names)."""
    for v in list(graph.input) + list(graph.output) + list(graph.value_info) + list(graph.initializer):
        v.name = names.get(v.name, v.name)
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
        for a in node.attribute:
            if a.g.node:
                _rename(a.g, names)
            for sub in a.graphs:
                _rename(sub, names)


def manifest_key(source: Path) -> dict:
    h = hashlib.sha256()
    for f in (Path(__file__), Path(specs.__file__), Path(media.__file__)):
        h.update(f.read_bytes())
    return {"model": specs.VAD.name, "source": f"{PACKAGE} {source_version()} {SOURCE_FILE}",
            "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()[:16], "code": h.hexdigest()[:16]}


def write_vad(repository: Path, force: bool = False, check_parity: bool = True) -> str:
    """Write <repository>/vad/1/model.onnx (unless up to date); returns a one-line report.

    Raises VadSourceMissing without the silero-vad wheel, AssertionError when parity fails.
    """
    source = source_path()
    folder = repository / specs.VAD.name / "1"
    path, manifest = folder / "model.onnx", folder / "export.json"
    key = manifest_key(source)
    try:
        if not force and json.loads(manifest.read_text()).get("key") == key and path.exists():
            return f"  {specs.VAD.name:<12} up to date, skipped"
    except (OSError, json.JSONDecodeError):
        pass
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(wrap(source), str(path))
    line = f"  {specs.VAD.name:<12} {source.stat().st_size / 1e6:6.2f} MB  from {key['source']}"
    if check_parity:
        err = parity(path, source)
        ok = err <= PARITY_ATOL
        line += f"  parity vs silero: max abs error {err:.1e} ({'ok' if ok else 'FAIL'}, limit {PARITY_ATOL:.0e})"
        if not ok:
            raise AssertionError(line)
    manifest.write_text(json.dumps({"key": key}, indent=2))
    return line


def example_feeds(batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the wrapper: noisy audio windows and a state from a few earlier calls' range."""
    rng = np.random.default_rng(seed)
    return {"audio": (0.1 * rng.standard_normal((batch, media.VAD_INPUT))).astype(np.float32),
            "state": (0.5 * rng.uniform(-1, 1, (batch, *media.VAD_STATE))).astype(np.float32)}


def parity(wrapper: Path, source: Path | None = None, batch: int = 3, steps: int = 4, seed: int = 1) -> float:
    """Max |wrapper - silero| over probability and state, `steps` chained calls at `batch`, ONNX Runtime."""
    import onnxruntime as ort

    source = source or source_path()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    ours = ort.InferenceSession(str(wrapper), opts, providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    feeds = example_feeds(batch, seed)
    state = feeds["state"]
    theirs_state = np.ascontiguousarray(state.transpose(1, 0, 2))
    err = 0.0
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        audio = (0.2 * rng.standard_normal((batch, media.VAD_INPUT))).astype(np.float32)
        p, state = ours.run(None, {"audio": audio, "state": state})
        q, theirs_state = theirs.run(None, {"input": audio, "state": theirs_state,
                                            "sr": np.array(media.VAD_SAMPLE_RATE, np.int64)})
        err = max(err, float(np.max(np.abs(p - q))), float(np.max(np.abs(state - theirs_state.transpose(1, 0, 2)))))
    return err
