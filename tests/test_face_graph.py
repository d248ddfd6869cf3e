"""The face_detector stage graph (export/toolchain/face.py): interface, batching, parity with BlazeFace."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.contract import face
from export.contract.spec import FACE_DETECTOR
from export.toolchain.face import (
    FaceSourceError,
    check_source,
    example_images,
    onnx_detector,
    parity,
    reference_decode,
    wrap,
    write_face_detector,
)


def test_anchor_centres_follow_the_package_shader():
    """Postprocess1Kernel.hlsl: anchor = (cell + 0.5) / cells, index (y * cells + x) * per_cell + a, 16x16x2 then
    8x8x6; written out here independently of face.anchor_centres."""
    want = []
    for cells, per_cell in ((16, 2), (8, 6)):
        for y in range(cells):
            for x in range(cells):
                want += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    got = face.anchor_centres()
    assert got.shape == (face.ANCHORS, 2) == (896, 2)
    np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_wrapper_interface_is_the_spec(face_graph):
    m = onnx.load(str(face_graph))

    def io(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    assert io(m.graph.input) == [("image", onnx.TensorProto.UINT8, ["batch", 3, 128, 128])]
    assert io(m.graph.output) == [("scores", onnx.TensorProto.FLOAT, ["batch", 896]),
                                  ("boxes", onnx.TensorProto.FLOAT, ["batch", 896, 4]),
                                  ("keypoints", onnx.TensorProto.FLOAT, ["batch", 896, 12])]
    assert [t.name for t in FACE_DETECTOR.inputs] == ["image"]
    ops = {n.op_type for n in m.graph.node}
    assert "ConstantOfShape" not in ops  # the batch-1 zero tensors are gone
    for n in m.graph.node:
        if n.op_type == "Reshape":
            target = next(t for t in m.graph.initializer if t.name == n.input[1])
            assert onnx.numpy_helper.to_array(target)[0] == -1, n.name


def test_parity_with_the_original_graph(face_graph, face_source, astronaut):
    assert parity(face_graph, face_source) <= 1e-5  # smooth random images
    import cv2

    windows = [cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA),
               cv2.resize(astronaut[40:220, 130:320], (128, 128), interpolation=cv2.INTER_AREA)]
    images = np.stack(windows).transpose(0, 3, 1, 2).copy()
    assert parity(face_graph, face_source, images) <= 1e-5  # faces: high scores, real boxes


def test_batch_rows_are_independent(face_graph):
    detect = onnx_detector(face_graph)
    images = example_images(batch=5, seed=3)
    together = detect(images)
    for i in range(5):
        alone = detect(images[i:i + 1])
        for name in ("scores", "boxes", "keypoints"):
            np.testing.assert_allclose(together[name][i], alone[name][0], atol=1e-5)


def test_decoded_face_on_the_astronaut(face_graph, astronaut):
    """The whole 512 image in one window: the best anchor is her face (keypoints in image pixels)."""
    import cv2

    window = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)[None].copy()
    out = onnx_detector(face_graph)(window)
    best = int(np.argmax(out["scores"][0]))
    assert out["scores"][0, best] > 0.8
    x0, y0, x1, y1 = out["boxes"][0, best] * 512
    assert 160 < x0 < 195 and 260 < x1 < 290 and 60 < y0 < 95 and 160 < y1 < 190
    eyes_y = out["keypoints"][0, best, [1, 3]] * 512
    mouth_y = out["keypoints"][0, best, 7] * 512
    assert np.all(eyes_y < mouth_y)


def test_reference_decode_by_hand():
    """One anchor, numbers worked out by hand: anchor (0.5/16, 0.5/16), offsets in input pixels."""
    logits = np.zeros((1, face.ANCHORS, 1), np.float32)
    reg = np.zeros((1, face.ANCHORS, 16), np.float32)
    reg[0, 0, :4] = [12.8, -6.4, 32.0, 16.0]
    reg[0, 0, 4:6] = [1.28, 2.56]
    logits[0, 0, 0] = 1000.0  # clipped to 100 first: still 1.0
    scores, boxes, kps = reference_decode(logits, reg)
    a = 0.5 / 16
    np.testing.assert_allclose(boxes[0, 0], [a + 0.1 - 0.125, a - 0.05 - 0.0625, a + 0.1 + 0.125, a - 0.05 + 0.0625],
                               atol=1e-6)
    np.testing.assert_allclose(kps[0, 0, :2], [a + 0.01, a + 0.02], atol=1e-6)
    assert scores[0, 0] == pytest.approx(1.0) and scores[0, 1] == pytest.approx(0.5)


def test_other_files_are_refused(tmp_path, face_source):
    other = face_source.parent / "face_detection_back_256x256_barracuda.onnx"
    if other.is_file():
        with pytest.raises(FaceSourceError, match="sha256"):
            check_source(other)
        with pytest.raises(FaceSourceError, match="interface"):
            wrap(other)
    broken = tmp_path / "x.onnx"
    broken.write_bytes(face_source.read_bytes()[:-10])
    with pytest.raises(FaceSourceError, match="sha256"):
        write_face_detector(tmp_path / "repo", broken)


def test_write_is_idempotent(face_graph, face_source):
    repo = face_graph.parents[2]
    assert "up to date" in write_face_detector(repo, face_source)
    assert "parity" in write_face_detector(repo, face_source, force=True)
