"""export/toolchain/models/mouth_warp.py: the weight-free warp; ONNX export, parity, TensorRT-RTX build."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ensemble import mouth as M
from export.contract.mouth import CROP_SIZE, MOUTH_DIMS, VISEMES
from export.contract.spec import onnx_dynamic_axes, sample_shape
from export.contract.spec import LIPSYNC
from export.toolchain.models.mouth_warp import PRESS_RANGE, TAPER, LipsyncGraph, MouthWarp
from loadtests.av_sync import luma

AA = [1.0, 0.0, 0.0, 0.0, 0.2]


def run(warp, faces, visemes, mouth):
    with torch.no_grad():
        return warp(torch.as_tensor(faces), torch.as_tensor(visemes, dtype=torch.float32),
                    torch.as_tensor(mouth, dtype=torch.float32)).numpy()


@pytest.fixture(scope="module")
def crop(astronaut_bgr):
    return M.cut(astronaut_bgr, M.crop_matrix(M.ASTRONAUT))


def test_no_learned_weights_only_constant_buffers(warp):
    assert list(warp.parameters()) == []
    assert {n for n, _ in warp.named_buffers()} >= {"u", "v", "taper"}
    assert all(not b.requires_grad for b in warp.buffers())


def test_rest_is_the_identity(warp, crop):
    for row in (M.ASTRONAUT.row(), np.array([0.02, -0.03, 0.3, 0.0, 0.0, 0.1], np.float32)):
        out = run(warp, crop[None], np.zeros((1, VISEMES)), row[None])
        assert np.abs(out - crop[None]).max() < 1e-6


def test_the_border_never_changes(warp):
    g = LipsyncGraph(warp)
    faces, _, mouth = g.example_inputs(batch=16, seed=3)
    extreme = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0],
                            [0.5, -1.0, 0.5, 0.5, 0.5]]).repeat(4, 1)
    out = run(warp, faces, extreme, mouth)
    axis = (np.arange(CROP_SIZE) + 0.5) / CROP_SIZE * 2 - 1
    ring = (np.abs(axis)[None, :] >= TAPER[1]) | (np.abs(axis)[:, None] >= TAPER[1])
    assert ring.sum() > 4 * CROP_SIZE
    assert np.abs(out - faces.numpy())[..., ring].max() < 1e-6


def dark_area(crop, row):
    """Pixels in the mouth box darker than half the rest crop's median there."""
    x0, y0, a = row[:3]
    axis = (np.arange(CROP_SIZE) + 0.5) / CROP_SIZE * 2 - 1
    xs, ys = np.meshgrid(axis, axis)
    box = (np.abs(xs - x0) < 1.1 * a) & (ys > y0 - 0.5 * a) & (ys < y0 + 1.3 * a)
    return box, (luma(crop) < 0.5 * np.median(luma(crop)[box])) & box


def test_the_mouth_opens_with_open(warp, crop):
    row = M.ASTRONAUT.row()
    opens = np.linspace(0, 1, 6)
    out = run(warp, np.repeat(crop[None], 6, 0), [[o, 0, 0, 0, 0.3] for o in opens], np.repeat(row[None], 6, 0))
    areas = [dark_area(o, row)[1].sum() for o in out]
    assert areas[0] == dark_area(crop, row)[1].sum()
    assert all(b > a for a, b in zip(areas[1:], areas[2:])), areas
    assert areas[-1] > 0.15 * (2 * row[2] * CROP_SIZE / 2) ** 2  # wide open: a cavity of >15 % of the mouth box


def rest_opening(row):
    """The avatar's own rest opening (its teeth) in the crop, as the warp models it (lens between the lip edges)."""
    x0, y0, a, gu, gl, smile = row
    axis = (np.arange(CROP_SIZE) + 0.5) / CROP_SIZE * 2 - 1
    xs, ys = np.meshgrid(axis, axis)
    xr = (xs - x0) / a
    lens = np.clip(1 - xr ** 2, 0, None) ** 0.7
    line = y0 - smile * a * np.clip(xr, -1, 1) ** 2
    return (np.abs(xr) < 0.8) & (ys > line - gu * lens) & (ys < line + gl * lens)


def redness(c):
    b, g, r = c
    return (r - g) / (b + g + r + 1e-6)


def test_press_covers_the_avatars_own_teeth(warp, crop):
    row = M.ASTRONAUT.row()
    teeth = rest_opening(row)
    shut = run(warp, crop[None], [[0, 0, PRESS_RANGE[1], 0, 0]], row[None])[0]
    tooth = lambda c: (luma(c) > 0.7) & (redness(c) < 0.04) & teeth  # noqa: E731 (bright and not red)
    assert tooth(crop).sum() > 60
    assert tooth(shut).sum() < 0.1 * tooth(crop).sum()
    assert redness(shut)[teeth].mean() > redness(crop)[teeth].mean() + 0.03  # lip colour where the teeth were


def test_a_closed_mouth_avatar_gets_drawn_teeth_and_cavity(warp, astronaut_bgr):
    """The demo avatar with its lips shut by the warp, then opened with no rest opening: the interior is drawn."""
    g = M.ASTRONAUT
    m = M.crop_matrix(g)
    crop = M.cut(astronaut_bgr, m)
    closed = M.paste(astronaut_bgr.copy(), crop, run(warp, crop[None], [[0, 0, 1, 0, 0]], g.row()[None])[0], m)
    row = np.array([0, 0, g.row()[2], 0, 0, g.smile], np.float32)
    c = M.cut(closed, m)
    ee, aa = run(warp, np.stack([c, c]), [[0.3, 0.8, 0, 0, 1.0], AA], np.stack([row, row]))
    box, _ = dark_area(c, row)
    assert ((luma(ee) > 0.7) & (luma(c) < 0.7) & box).sum() > 30  # teeth appear where there were lips
    assert dark_area(aa, row)[1].sum() > dark_area(c, row)[1].sum() + 100


def test_example_inputs_follow_the_spec(warp):
    inputs = LipsyncGraph(warp).example_inputs(batch=3)
    assert [tuple(x.shape) for x in inputs] == list(sample_shape(LIPSYNC, None, batch=3).values())
    assert inputs[1].shape[1] == VISEMES and inputs[2].shape[1] == MOUTH_DIMS


def test_other_crop_sizes_work(crop):
    warp = MouthWarp(size=160).eval()
    faces = torch.nn.functional.interpolate(torch.from_numpy(crop[None]), size=(160, 160), mode="bilinear")
    out = run(warp, faces, [AA], M.ASTRONAUT.row()[None])
    assert out.shape == (1, 3, 160, 160) and np.abs(out - faces.numpy()).max() > 0.3


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory, warp):
    from export.toolchain.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("lipsync") / "model.onnx"
    export_onnx(LipsyncGraph(warp), LIPSYNC, path)
    return path


def test_onnx_matches_pytorch_at_any_batch(onnx_path, warp):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    assert "GridSample" in {n.op_type for n in model.graph.node}
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]
    assert onnx_dynamic_axes(LIPSYNC)["faces"] == {0: "batch"}
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = LipsyncGraph(warp)
    for batch, seed in ((1, 11), (5, 12), (32, 13)):
        inputs = g.example_inputs(batch=batch, seed=seed)
        with torch.no_grad():
            want = g(*inputs).numpy()
        got = sess.run(None, {t.name: x.numpy() for t, x in zip(LIPSYNC.inputs, inputs)})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-4


def test_tensorrt_rtx_builds_it(onnx_path, tmp_path):
    try:
        from export.toolchain.trt_build import build_engine, load_trt

        trt, _ = load_trt("tensorrt-rtx")
    except Exception as e:  # the builder is an optional install (requirements-trt.txt)
        pytest.skip(f"TensorRT-RTX not available: {e}")
    from export.contract.presets import get_preset

    result = build_engine(onnx_path, LIPSYNC, get_preset("tiny"), tmp_path / "model.plan", trt_module=trt,
                          force=True, workspace_gb=2, log=lambda *a: None)
    assert not result.skipped and result.plan_bytes > 0
