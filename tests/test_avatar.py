from __future__ import annotations

import contextlib
import hashlib
import struct
import zlib

import cv2
import numpy as np
import pytest

from ensemble.avatar import (
    MAX_JPEG_SCANS,
    MEMORY_BYTES,
    Avatar,
    AvatarOptions,
    AvatarStore,
    composite,
    demo_avatar_png,
    encode_jpeg,
    image_size,
    register,
    stored_size,
    wav2lip_faces,
)
from ensemble.errors import InputError
from ensemble.face import FaceOptions, choose_face
from export.contract import media as C

BIG = 50_000_000


@pytest.fixture(scope="module")
def demo_png() -> bytes:
    return demo_avatar_png()


@pytest.fixture(scope="module")
def demo(demo_png, detect) -> Avatar:
    return register(demo_png, BIG, BIG, detect=detect)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_demo_avatar_has_exactly_one_face(demo_png, detect):
    img = cv2.imdecode(np.frombuffer(demo_png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (512, 512, 3)
    found, search, _ = choose_face(img, detect, FaceOptions(), bgr=True)
    assert len(search.faces) == 1
    x0, y0, x1, y1 = found.box
    assert 150 < x0 < 220 and 40 < y0 < 110 and 70 < x1 - x0 < 130  # the astronaut's face, upper middle


def test_register_demo(demo, demo_png, detect):
    assert demo.id == hashlib.sha256(demo_png).hexdigest()[:16]
    assert demo.image.dtype == np.uint8 and demo.image.shape == (512, 512, 3)
    assert demo.face.shape == (C.FACE_SIZE, C.FACE_SIZE, 3) and demo.face.dtype == np.uint8
    assert demo.faces_found == 1 and demo.message.startswith("found 1 face")
    y1, y2, x1, x2 = demo.box
    found, _, _ = choose_face(demo.image, detect, FaceOptions(), bgr=True)
    fx0, fy0, fx1, fy1 = found.box
    # Wav2Lip's pads [0, 10, 0, 0] at this size: 0.1 of the face box's height below it
    assert (y1, y2, x1, x2) == (round(fy0), round(fy1 + 0.1 * found.height), round(fx0), round(fx1))
    np.testing.assert_array_equal(demo.face, cv2.resize(demo.image[y1:y2, x1:x2], (96, 96)))
    with pytest.raises(ValueError):
        demo.image[0, 0, 0] = 1  # read-only: shared between requests


def test_box_is_clamped_to_image(demo_png, detect):
    img = cv2.imdecode(np.frombuffer(demo_png, np.uint8), cv2.IMREAD_COLOR)
    found, _, _ = choose_face(img, detect, FaceOptions(), bgr=True)
    cut = img[: round(found.box[3]) + 3]  # image ends 3 px below the face box; the 10 % pad must clamp
    a = register(_png(cut), BIG, BIG, detect=detect)
    assert a.box[1] == cut.shape[0]
    big_pads = register(demo_png, BIG, BIG, detect=detect, options=AvatarOptions(pads=(10.0, 10.0, 10.0, 10.0)))
    assert big_pads.box == (0, 512, 0, 512)


def test_several_faces_picks_largest(demo_png, detect):
    img = cv2.imdecode(np.frombuffer(demo_png, np.uint8), cv2.IMREAD_COLOR)
    two = np.zeros((512, 768, 3), np.uint8)
    two[:, :512] = img
    two[128:384, 512:] = cv2.resize(img, (256, 256))
    a = register(_png(two), BIG, BIG, detect=detect)
    assert a.faces_found == 2
    assert "2 faces" in a.message and "largest" in a.message
    assert a.box[3] <= 512  # the big face on the left


def test_no_face(detect):
    grad = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    with pytest.raises(InputError, match=r"^no face found in the avatar image"):
        register(_png(grad), BIG, BIG, detect=detect)


@pytest.mark.parametrize("data", [
    b"hello, this is not an image",
    b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + struct.pack(">II", 64, 64) + b"\x08\x02\x00\x00\x00garbage",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",  # JPEG with no frame header
    b"GIF89a\x01\x00\x01\x00",  # not PNG/JPEG
])
def test_undecodable(data, detect):
    with pytest.raises(InputError, match=r"^avatar image could not be decoded \(not an image or corrupt"):
        register(data, BIG, BIG, detect=detect)


def test_truncated_png(demo_png, detect):
    with pytest.raises(InputError, match="could not be decoded"):
        register(demo_png[:2000], BIG, BIG, detect=detect)


def test_empty_and_wrong_type(detect):
    with pytest.raises(InputError, match="avatar image is empty"):
        register(b"", BIG, BIG, detect=detect)
    with pytest.raises(InputError, match="must be bytes"):
        register("not bytes", BIG, BIG, detect=detect)  # type: ignore[arg-type]


def test_byte_limit(demo_png, detect):
    with pytest.raises(InputError, match=rf"^avatar image is {len(demo_png)} bytes; the limit is 1000$"):
        register(demo_png, 1000, BIG, detect=detect)


def test_pixel_limit_checked_from_header_before_decoding(detect):
    # a tiny file whose header claims 100000 x 100000 pixels: must be refused without decoding
    ihdr = struct.pack(">II", 100_000, 100_000) + b"\x08\x02\x00\x00\x00"
    bomb = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    assert image_size(bomb) == (100_000, 100_000)
    with pytest.raises(InputError, match=r"^avatar image is 100000x100000 = 10000000000 pixels; the limit is 4000000$"):
        register(bomb, BIG, 4_000_000, detect=detect)


def test_pixel_limit_jpeg(demo_png, detect):
    img = cv2.imdecode(np.frombuffer(demo_png, np.uint8), cv2.IMREAD_COLOR)
    jpg = encode_jpeg(img)
    assert image_size(jpg) == (512, 512)
    ok, prog = cv2.imencode(".jpg", img[:, :300], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert image_size(prog.tobytes()) == (300, 512)
    with pytest.raises(InputError, match="512x512 = 262144 pixels"):
        register(jpg, BIG, 512 * 511, detect=detect)
    assert register(jpg, BIG, 512 * 512, detect=detect).faces_found == 1  # JPEG avatars work too


@contextlib.contextmanager
def never_decoded():
    """Fails the test if the image reaches the decoder (`cv2.imdecode`, as ensemble/avatar.py calls it): a refusal
    from the bytes alone, however loaded the machine (these tests once timed it, and flaked on a busy one)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the image was decoded")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cv2, "imdecode", refuse)
        yield


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding(demo_png, detect):
    """A progressive JPEG's smallest scan repeated before EOI: each scan is a decoding pass over the whole image,
    so 58608 of them in 2 MB took ~80 s (the avatar registry busy for everyone). Refused from the bytes alone."""
    img = cv2.imdecode(np.frombuffer(demo_png, np.uint8), cv2.IMREAD_COLOR)
    ok, prog = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    prog = prog.tobytes()
    assert 1 < prog.count(b"\xff\xda") <= MAX_JPEG_SCANS
    assert register(prog, BIG, 512 * 512, detect=detect).faces_found == 1  # an ordinary progressive JPEG is taken
    last = prog.rindex(b"\xff\xda")  # the last scan, repeated: a valid file, decoded pass by pass
    bomb = prog[:-2] + prog[last:-2] * 200 + b"\xff\xd9"
    with never_decoded(), pytest.raises(InputError, match=r"^avatar image is a JPEG of 2\d\d scans; the limit is 100 "):
        register(bomb, BIG, 512 * 512, detect=detect)


def test_a_large_jpeg_of_many_legal_scans_is_refused_before_decoding(demo_png, detect):
    """100 scans are legal, but each is a pass over every pixel: at 4096x4096 they took 1.2 s to decode."""
    img = cv2.resize(cv2.imdecode(np.frombuffer(demo_png, np.uint8), cv2.IMREAD_COLOR), (4096, 4096))
    ok, prog = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 30])
    prog = prog.tobytes()
    last = prog.rindex(b"\xff\xda")
    heavy = prog[:-2] + prog[last:-2] * (MAX_JPEG_SCANS - prog.count(b"\xff\xda")) + b"\xff\xd9"
    assert heavy.count(b"\xff\xda") == MAX_JPEG_SCANS
    with never_decoded(), pytest.raises(InputError, match=r"^avatar image is a JPEG of 100 scans of 4096x4096 pixels; "
                                                          r".* limit is 400 million pixels in all \(at most 23 scans "
                                                          r"at this size"):
        register(heavy, BIG, 4096 * 4096, detect=detect)
    assert register(prog, BIG, 4096 * 4096, detect=detect).faces_found == 1  # its ~10 scans are taken


def test_wav2lip_faces(demo):
    x = wav2lip_faces(demo)
    assert x.shape == (6, 96, 96) and x.dtype == np.float32
    ref = demo.face.transpose(2, 0, 1) / 255.0
    assert np.all(x[:3, 48:] == 0)  # lower half of the target masked
    np.testing.assert_allclose(x[:3, :48], ref[:, :48], atol=1e-7)
    np.testing.assert_allclose(x[3:], ref, atol=1e-7)  # BGR reference, channels-first
    assert x.max() <= 1.0 and x[3:].max() > 0.5


def test_composite(demo):
    y1, y2, x1, x2 = demo.box
    black = composite(demo, np.zeros((3, 96, 96), np.float32))
    assert black.shape == demo.image.shape and black.dtype == np.uint8
    assert np.all(black[y1:y2, x1:x2] == 0)
    outside = np.ones(black.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(black[outside], demo.image[outside])
    # feeding the reference crop back reproduces the region up to resize blur
    same = composite(demo, demo.face.transpose(2, 0, 1).astype(np.float32) / 255.0)
    err = np.abs(same[y1:y2, x1:x2].astype(int) - demo.image[y1:y2, x1:x2].astype(int)).mean()
    assert err < 8
    white = composite(demo, np.full((3, 96, 96), 2.0, np.float32))  # out of range is clipped
    assert np.all(white[y1:y2, x1:x2] == 255)
    with pytest.raises(ValueError):
        composite(demo, np.zeros((96, 96, 3), np.float32))


def test_encode_jpeg(demo):
    jpg = encode_jpeg(demo.image, quality=85)
    assert jpg[:2] == b"\xff\xd8"
    back = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == demo.image.shape
    assert np.abs(back.astype(int) - demo.image.astype(int)).mean() < 6
    assert len(encode_jpeg(demo.image, quality=30)) < len(jpg)


def test_store_roundtrip_and_lru(tmp_path, demo, demo_png, detect):
    store = AvatarStore(tmp_path / "avatars", capacity=2)
    store.save(demo)
    assert (tmp_path / "avatars" / f"{demo.id}.npz").is_file()
    assert list((tmp_path / "avatars").glob("*.tmp")) == []
    cold = AvatarStore(tmp_path / "avatars", capacity=2)  # a fresh process: loads from disk
    a = cold.load(demo.id)
    assert a.id == demo.id and a.box == demo.box and a.message == demo.message
    assert a.faces_found == demo.faces_found
    np.testing.assert_array_equal(a.image, demo.image)
    np.testing.assert_array_equal(a.face, demo.face)
    assert cold.load(demo.id.encode()) is a  # bytes ids from Triton work; cached object reused
    others = []
    for k in range(2):
        img = demo.image.copy()
        img[0, k] = 255 - img[0, k]  # different bytes -> different id
        others.append(register(_png(img), BIG, BIG, detect=detect))
        cold.save(others[-1])
    assert cold.cached_ids() == [others[0].id, others[1].id]  # capacity 2, demo evicted
    cold.load(demo.id)
    assert cold.cached_ids() == [others[1].id, demo.id]


def test_large_image_is_downscaled_at_registration(demo, demo_png, detect):
    """Issue 15: a 4096 x 4096 upload is stored at 1024 (3 MB, not 50 MB), its box and keypoints in that size."""
    img = cv2.imdecode(np.frombuffer(demo_png, np.uint8), cv2.IMREAD_COLOR)
    big_png = _png(cv2.resize(img, (4096, 4096), interpolation=cv2.INTER_NEAREST))
    big = register(big_png, BIG, BIG, detect=detect)
    assert big.image.shape == (1024, 1024, 3) and big.id == hashlib.sha256(big_png).hexdigest()[:16]
    assert AvatarOptions().max_side == 1024
    assert big.message.endswith("(image downscaled from 4096x4096 to 1024x1024)")
    # the same as registering the image shrunk beforehand (INTER_AREA): the same pixels, box and keypoints
    pre = register(_png(cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_AREA)), BIG, BIG, detect=detect)
    np.testing.assert_array_equal(big.image, pre.image)
    assert big.box == pre.box
    np.testing.assert_allclose(big.keypoints, pre.keypoints, atol=1e-3)
    np.testing.assert_array_equal(big.face, pre.face)
    # and on her face: the 512-pixel demo's box and keypoints, doubled, within 3 pixels
    np.testing.assert_allclose(np.array(big.box), 2 * np.array(demo.box), atol=3)
    np.testing.assert_allclose(big.keypoints, 2 * demo.keypoints, atol=3)
    mx, my = big.point("mouth_center")
    y1, y2, x1, x2 = big.box
    assert x1 < mx < x2 and (y1 + y2) / 2 < my < y2
    assert register(demo_png, BIG, BIG, detect=detect).image.shape == (512, 512, 3)  # small images are untouched
    half = register(demo_png, BIG, BIG, detect=detect, options=AvatarOptions(max_side=256))  # the limit is an option
    assert half.image.shape == (256, 256, 3)
    np.testing.assert_allclose(np.array(half.box), np.array(demo.box) / 2, atol=2)


@pytest.mark.parametrize("size, stored", [((4096, 4096), (1024, 1024)), ((4096, 2048), (1024, 512)),
                                          ((1000, 3000), (341, 1024)), ((1024, 700), (1024, 700)),
                                          ((300, 200), (300, 200))])
def test_stored_size(size, stored):
    assert stored_size(*size, 1024) == stored


def test_an_image_too_thin_once_downscaled_is_refused_before_decoding(detect):
    ihdr = struct.pack(">II", 4096, 128) + b"\x08\x02\x00\x00\x00"  # header only: nothing to decode
    thin = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(InputError, match=r"^avatar image is 4096x128 pixels, 1024x32 once downscaled to 1024 on its "
                                         r"longer side; width and height must be at least 64"):
        register(thin, BIG, BIG, detect=detect)


def _variant(avatar: Avatar, k: int) -> Avatar:
    """The avatar under another id, with a different image (so a wrong reload shows)."""
    img = avatar.image.copy()
    img[0, 0] = k
    img.flags.writeable = False
    return Avatar(f"{k:016x}", img, avatar.box, avatar.face, avatar.faces_found, avatar.message, avatar.keypoints)


def test_store_memory_is_bounded_in_bytes(tmp_path, demo):
    """Issue 15: the in-memory LRU holds at most max_memory_bytes; an evicted avatar comes back from disk."""
    assert AvatarStore(tmp_path / "default").max_memory_bytes == MEMORY_BYTES == 256 * 1024**2
    budget = int(2.5 * demo.nbytes)  # room for two
    store = AvatarStore(tmp_path / "avatars", max_memory_bytes=budget)  # capacity 64: the bytes bind first
    avatars = [_variant(demo, k) for k in range(5)]
    for a in avatars:
        store.save(a)
        assert store.cached_bytes() <= budget
        assert store.cached_bytes() == sum(demo.nbytes for _ in store.cached_ids())
    assert store.cached_ids() == [avatars[3].id, avatars[4].id]
    assert sorted(store.stored_ids()) == sorted(a.id for a in avatars)  # the files stay: only memory is bounded
    back = store.load(avatars[0].id)  # evicted from memory: read from disk
    assert back is not avatars[0] and back.image[0, 0, 0] == 0 and back.box == demo.box
    np.testing.assert_array_equal(back.image, avatars[0].image)
    np.testing.assert_array_equal(back.keypoints, demo.keypoints)
    assert store.cached_ids() == [avatars[4].id, avatars[0].id] and store.cached_bytes() <= budget
    assert store.load(avatars[0].id) is back  # cached again
    tiny = AvatarStore(tmp_path / "avatars", max_memory_bytes=demo.nbytes - 1)  # one avatar alone is too big:
    assert tiny.load(avatars[1].id).image[0, 0, 0] == 1  # served from disk, not kept
    assert tiny.cached_ids() == [] and tiny.cached_bytes() == 0


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABCDEF0123456789", "0123456789abcdef\n", "0123456789abcde",
                                 "0123456789abcdef0", "", "0123456789abcdeg", b"\xff" * 16, 12345])
def test_store_rejects_invalid_ids(tmp_path, bad):
    store = AvatarStore(tmp_path)
    (tmp_path / "ABCDEF0123456789.npz").write_bytes(b"x")  # must never be opened via a bad id
    with pytest.raises(InputError, match=r"^unknown avatar id .*16 lowercase hex characters"):
        store.load(bad)


def test_store_unknown_id(tmp_path):
    with pytest.raises(InputError, match=r"^unknown avatar id '0123456789abcdef'; register the avatar first$"):
        AvatarStore(tmp_path).load("0123456789abcdef")
