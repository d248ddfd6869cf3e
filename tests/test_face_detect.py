"""Finding the avatar's face (ensemble/face.py) with the face_detector graph through ONNX Runtime."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ensemble.errors import InputError
from ensemble.face import NO_FACE, FaceOptions, _Pyramid, _Window, choose_face, find_faces, resample

# Her face in the 512 astronaut, checked by eye on a crop (tmp/astro_box.png): brows to chin, cheek to ear.
FACE_512 = (170, 70, 278, 180)
INNER_512 = (195, 95, 255, 160)  # eyes, nose and mouth: any box of her face covers this
SHUTTLE_X = 340  # the space shuttle model stands right of this (x 355..460)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _covers(box, inner):
    return box[0] <= inner[0] and box[1] <= inner[1] and box[2] >= inner[2] and box[3] >= inner[3]


@pytest.fixture(scope="module")
def face_512(astronaut, detect):
    face, search, message = choose_face(astronaut, detect)
    return face, search, message


def test_astronaut_512_is_her_face(face_512):
    face, search, message = face_512
    assert _covers(face.box, INNER_512), face.box
    assert _iou(face.box, FACE_512) > 0.7, face.box
    assert (face.box[0] + face.box[2]) / 2 < SHUTTLE_X
    assert len(search.faces) == 1 and message.startswith("found 1 face at x=")
    assert face.score > 0.85


def test_keypoints_are_where_a_face_has_them(face_512):
    face, _, _ = face_512
    (rex, rey), (lex, ley) = face.point("right_eye"), face.point("left_eye")
    nx, ny = face.point("nose_tip")
    mx, my = face.point("mouth_center")
    (rx, _), (lx, _) = face.point("right_ear_tragion"), face.point("left_ear_tragion")
    assert rex < lex  # her right eye is on the image's left
    assert max(rey, ley) < ny < my  # eyes above the nose tip above the mouth
    assert rex < nx < lex and rex < mx < lex  # nose and mouth between the eyes, across
    assert rx < rex and lx > lex  # ears outside the eyes
    x0, y0, x1, y1 = face.box
    assert x0 < mx < x1 and (y0 + y1) / 2 < my < y1  # the mouth in the box's lower half
    # by eye on the 512 image: eyes near (205, 102) and (247, 105), mouth near (223, 149)
    assert abs(rex - 205) < 6 and abs(lex - 247) < 6 and abs(my - 149) < 6


@pytest.mark.parametrize("interpolation", [cv2.INTER_LINEAR, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4],
                         ids=["linear", "nearest", "lanczos"])  # Haar picked the shuttle side with the last two
def test_astronaut_4096_is_her_face_and_matches_512(astronaut, detect, face_512, interpolation):
    big = cv2.resize(astronaut, (4096, 4096), interpolation=interpolation)
    face, search, message = choose_face(big, detect)
    small = face_512[0]
    box = np.array(face.box) / 8
    assert _covers(box, INNER_512) and (box[0] + box[2]) / 2 < SHUTTLE_X
    np.testing.assert_allclose(box, small.box, atol=3)  # same box, scaled, within 3 pixels of the 512 image
    np.testing.assert_allclose(np.array(face.keypoints) / 8, small.keypoints, atol=3)
    assert len(search.faces) == 1


def test_bgr_input_gives_the_same_face(astronaut, detect, face_512):
    face, _, _ = choose_face(np.ascontiguousarray(astronaut[:, :, ::-1]), detect, bgr=True)
    np.testing.assert_allclose(face.box, face_512[0].box, atol=1e-3)


@pytest.mark.parametrize("name", ["coffee", "noise", "gray"])
def test_no_face_is_refused(detect, name):
    from skimage import data

    image = {"coffee": data.coffee, "noise": lambda: np.random.default_rng(0).integers(0, 256, (512, 512, 3),
                                                                                       dtype=np.uint8),
             "gray": lambda: np.full((300, 400, 3), 128, np.uint8)}[name]()
    assert find_faces(image, detect).faces == ()
    with pytest.raises(InputError, match="no face found in the avatar image"):
        choose_face(image, detect)
    assert "no face" in NO_FACE


def _paste(canvas, image, x, y, side, mirrored=False):
    """Paste the astronaut (512 x 512, mirrored left-right or not) at (x, y) as side x side; her face box there."""
    canvas[y:y + side, x:x + side] = cv2.resize(image[:, ::-1] if mirrored else image, (side, side),
                                                interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = FACE_512
    if mirrored:
        x0, x1 = 512 - x1, 512 - x0
    k = side / 512
    return x0 * k + x, y0 * k + y, x1 * k + x, y1 * k + y


@pytest.mark.parametrize("side", [300, 200, 150])
def test_small_faces_are_found(astronaut, detect, side):
    """The astronaut shrunk into a 1024 x 768 photo of a rocket: faces of about 60, 40 and 30 pixels (3 % of the
    image's width); the last is found, but refused as too small to animate (FaceOptions.min_face_pixels)."""
    from skimage import data

    canvas = cv2.resize(data.rocket(), (1024, 768), interpolation=cv2.INTER_AREA)
    where = _paste(canvas, astronaut, 100, (768 - side) // 2, side)
    search = find_faces(canvas, detect)
    assert len(search.faces) == 1 and _iou(search.faces[0].box, where) > 0.6, (search.faces, where)
    if search.faces[0].width >= FaceOptions().min_face_pixels:
        assert choose_face(canvas, detect)[0] == search.faces[0]
    else:
        assert side == 150
        with pytest.raises(InputError, match="pixels wide"):
            choose_face(canvas, detect)


def test_several_faces_take_the_largest_and_say_so(astronaut, detect):
    canvas = np.full((512, 1024, 3), 90, np.uint8)
    big = _paste(canvas, astronaut, 0, 0, 512)
    small = _paste(canvas, astronaut, 600, 212, 300, mirrored=True)
    face, search, message = choose_face(canvas, detect)
    assert len(search.faces) == 2
    assert _iou(face.box, big) > 0.7
    assert _iou(search.faces[1].box, small) > 0.6
    assert message.startswith("found 2 faces; using the largest, at x=")


def test_wide_image_is_letterboxed(astronaut, detect, face_512):
    wide = cv2.copyMakeBorder(astronaut, 0, 0, 400, 400, cv2.BORDER_CONSTANT, value=(200, 200, 200))
    face, _, _ = choose_face(wide, detect)
    np.testing.assert_allclose(np.array(face.box) - [400, 0, 400, 0], face_512[0].box, atol=4)


def test_a_face_too_small_is_refused_with_its_size(astronaut, detect):
    thumb = cv2.resize(astronaut, (200, 200), interpolation=cv2.INTER_AREA)  # her face about 40 pixels
    face, _, _ = choose_face(thumb, detect)
    assert 30 < face.width < 50
    with pytest.raises(InputError, match=r"the face found is \d+ pixels wide; at least 64"):
        choose_face(thumb, detect, FaceOptions(min_face_pixels=64))


def test_calls_are_split_at_max_batch(astronaut, detect, face_512):
    calls = []

    def counting(images):
        calls.append(len(images))
        return detect(images)

    face, search, _ = choose_face(astronaut, counting, FaceOptions(max_batch=4))
    assert max(calls) <= 4 and search.calls == len(calls) > 2 and search.windows == sum(calls)
    np.testing.assert_allclose(face.box, face_512[0].box, atol=1e-3)


def test_a_detector_answering_wrong_shapes_is_an_error(astronaut):
    def broken(images):
        return {"scores": np.zeros((len(images), 10), np.float32), "boxes": np.zeros((len(images), 10, 4)),
                "keypoints": np.zeros((len(images), 10, 12))}

    with pytest.raises(RuntimeError, match="face_detector answered shapes"):
        find_faces(astronaut, broken)


def test_image_must_be_hwc_uint8(detect):
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        find_faces(np.zeros((64, 64), np.uint8), detect)


def test_resample_averages_areas_and_pads_black():
    checker = (np.indices((4096, 4096)).sum(0) % 2 * 255).astype(np.uint8)
    checker = np.repeat(checker[:, :, None], 3, axis=2)
    out = resample(_Pyramid(checker), _Window(0, 0, 4096), 128)
    assert np.all(np.abs(out.astype(int) - 128) <= 1)  # a 1-pixel checkerboard is mid gray, not aliased
    flat = np.full((100, 200, 3), 200, np.uint8)
    # the window's x 100..300, y -50..150 over an image of x 0..200, y 0..100: image in rows 32..95, columns 0..63
    half = resample(_Pyramid(flat), _Window(100, -50, 200), 128)
    assert np.all(half[33:95, :63] == 200)
    assert np.all(half[:31] == 0) and np.all(half[97:] == 0) and np.all(half[:, 65:] == 0)
    grown = resample(_Pyramid(flat), _Window(0, 0, 64), 128)  # linear when growing
    assert np.all(grown == 200)
