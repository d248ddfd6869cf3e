"""Avatar registration (decode, find the face, crop like Wav2Lip), Wav2Lip I/O, and storage.

The face comes from the `face_detector` stage (MediaPipe BlazeFace) through ensemble/face.py: `register` takes
its `detect` callable (a BLS call in the avatar registry, ONNX Runtime in tests).

Decompression bombs: the byte size is checked first, then width and height are read from the
PNG (IHDR) or JPEG (SOFn) header and the pixel count checked BEFORE OpenCV decodes anything.
Only PNG and JPEG are accepted, so there is no other format whose header we would have to trust
OpenCV to bound (OpenCV's own OPENCV_IO_MAX_IMAGE_PIXELS is process-global, so it is not used).
After decoding, the decoded size is checked again.

Bounded (issue 15): an image whose longer side exceeds AvatarOptions.max_side (1024 px) is downscaled to it
(cv2.INTER_AREA) right after decoding, so the face search, the stored image, box and keypoints, every frame
and the face box the registry answers are in that size: a 4096 x 4096 upload is stored as 3 MB, not 50 MB.
The AvatarStore's in-memory cache is bounded in bytes as well as in count (`MEMORY_BYTES`, 256 MiB).
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import cv2
import numpy as np

from ensemble.errors import InputError
from ensemble.face import Detect, FaceOptions, choose_face
from ensemble.lru import BytesLRU
from ensemble.options import Limits
from export.contract import face as F
from export.contract import media as C

UNDECODABLE = "avatar image could not be decoded (not an image or corrupt)"
_ID = re.compile(r"[0-9a-f]{16}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# a progressive JPEG has ~10 scans (libjpeg's scripts 6-10) and each is a pass over the whole image: a 2 MB file of
# 58608 tiny scans took ~80 s to decode (libjpeg-turbo's own "scan limit" guards against the same)
MAX_JPEG_SCANS = 100
# ... and a pass costs in proportion to the pixels: 100 legal scans of a 4096x4096 JPEG took 1.2 s (the registry's
# one instance busy for every client). Scans x megapixels is bounded too; a 10-scan progressive photo passes up to
# 40 MP, past any size the registry takes
MAX_JPEG_SCAN_MEGAPIXELS = 400
MEMORY_BYTES = Limits.max_avatar_memory_bytes  # an AvatarStore's in-memory cache by default


@dataclass(frozen=True)
class AvatarOptions:
    # Wav2Lip's --pads (top, bottom, left, right), as fractions of the face box's height (top, bottom) and width
    # (left, right), so that a photo and its 8x upscale crop the same: 0.1 of a 100-pixel box is Wav2Lip's 10
    pads: tuple[float, float, float, float] = (0.0, 0.1, 0.0, 0.0)
    face: FaceOptions = FaceOptions()  # the face search (ensemble/face.py)
    # an image whose longer side is larger is downscaled to this (cv2.INTER_AREA) before the face search and
    # everything stored: the stored image, box and keypoints are in the downscaled size; smaller ones are untouched
    max_side: int = 1024

    def __post_init__(self) -> None:
        if self.max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {self.max_side}")


@dataclass(frozen=True)
class Avatar:
    id: str  # first 16 hex chars of sha256(image bytes)
    image: np.ndarray  # full image, HxWx3 uint8 BGR (read-only)
    box: tuple[int, int, int, int]  # face crop y1, y2, x1, x2 (Wav2Lip's coords order), padded and clamped
    face: np.ndarray  # the crop resized to FACE_SIZE x FACE_SIZE x 3 uint8 BGR (read-only)
    faces_found: int  # faces the detector found; the largest is used
    message: str  # human-readable registration note (e.g. several faces found)
    # [6, 2] float32 (x, y) image pixels of the face used, export.contract.face.KEYPOINTS order (eyes, nose tip,
    # mouth centre, ear tragions; read-only): where the mouth is, for the lip-sync warp
    keypoints: np.ndarray

    def point(self, name: str) -> tuple[float, float]:
        """One keypoint by name, e.g. "mouth_center"."""
        x, y = self.keypoints[F.KEYPOINTS.index(name)]
        return float(x), float(y)

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays: what a cached avatar holds in memory."""
        return self.image.nbytes + self.face.nbytes + self.keypoints.nbytes


def stored_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) an image is stored at: downscaled, keeping its aspect, to max_side on its longer side."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    if width >= height:
        return max_side, max(1, round(height * max_side / longer))
    return max(1, round(width * max_side / longer)), max_side


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header, without decoding; InputError otherwise."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InputError(UNDECODABLE)
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                raise InputError(UNDECODABLE)
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
                i += 2
                continue
            if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                break
            (length,) = struct.unpack(">H", data[i + 2:i + 4])
            if marker in _JPEG_SOF:
                if length < 7 or i + 9 > len(data):
                    break
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
        raise InputError(UNDECODABLE)
    raise InputError(UNDECODABLE[:-1] + "; PNG and JPEG are accepted)")


def register(image_bytes: bytes, max_bytes: int, max_pixels: int, *, detect: Detect, min_side: int = 64,
             options: AvatarOptions = AvatarOptions()) -> Avatar:
    """Validate, decode and analyse an avatar image; InputError names any problem.

    Checked before anything is decoded: type, emptiness, byte size, format (PNG or JPEG), the header's width x height
    against max_pixels and min_side (both as sent and as stored), and a JPEG's scans (MAX_JPEG_SCANS, and
    MAX_JPEG_SCAN_MEGAPIXELS over its pixels). An image whose longer side exceeds options.max_side is downscaled to
    it before anything else (`stored_size`): the avatar's image, box and keypoints are in that size, and the message
    says so. detect: the face_detector stage (ensemble/face.py). Several faces: the largest is used and the message
    says so. No face, or one too small: InputError.
    """
    if not isinstance(image_bytes, (bytes, bytearray, memoryview)):
        raise InputError(f"avatar image must be bytes, got {type(image_bytes).__name__}")
    data = bytes(image_bytes)
    if not data:
        raise InputError("avatar image is empty")
    if len(data) > max_bytes:
        raise InputError(f"avatar image is {len(data)} bytes; the limit is {max_bytes}")
    width, height = image_size(data)
    if width == 0 or height == 0:
        raise InputError(UNDECODABLE)
    if width * height > max_pixels:
        raise InputError(f"avatar image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if min(width, height) < min_side:
        raise InputError(f"avatar image is {width}x{height} pixels; width and height must be at least {min_side}")
    scans = data.count(b"\xff\xda") if data.startswith(b"\xff\xd8") else 0  # SOS markers (0xFF is stuffed elsewhere)
    if scans > MAX_JPEG_SCANS:
        raise InputError(f"avatar image is a JPEG of {scans} scans; the limit is {MAX_JPEG_SCANS} (a progressive JPEG "
                         f"has about 10)")
    if scans * width * height > MAX_JPEG_SCAN_MEGAPIXELS * 1e6:
        raise InputError(f"avatar image is a JPEG of {scans} scans of {width}x{height} pixels; each scan is a pass "
                         f"over every pixel, and the limit is {MAX_JPEG_SCAN_MEGAPIXELS} million pixels in all "
                         f"(at most {int(MAX_JPEG_SCAN_MEGAPIXELS * 1e6 // (width * height))} scans at this size; a "
                         f"progressive JPEG has about 10)")
    small = stored_size(width, height, options.max_side)
    if min(small) < min_side:
        raise InputError(f"avatar image is {width}x{height} pixels, {small[0]}x{small[1]} once downscaled to "
                         f"{options.max_side} on its longer side; width and height must be at least {min_side} "
                         f"(use a less elongated image)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise InputError(UNDECODABLE)
    if image.shape[0] * image.shape[1] > max_pixels:  # belt and braces: the header said otherwise
        raise InputError(f"avatar image is {image.shape[1]}x{image.shape[0]} pixels; the limit is {max_pixels}")
    decoded = image.shape[1], image.shape[0]  # the decoded size (EXIF orientation may swap the header's)
    small = stored_size(*decoded, options.max_side)
    if small != decoded:
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    found, search, message = choose_face(image, detect, options.face, bgr=True)
    if small != decoded:
        message += f" (image downscaled from {decoded[0]}x{decoded[1]} to {small[0]}x{small[1]})"
    x0, y0, x1, y1 = found.box
    top, bottom, left, right = options.pads
    ih, iw = image.shape[:2]
    box = (max(0, round(y0 - top * found.height)), min(ih, round(y1 + bottom * found.height)),
           max(0, round(x0 - left * found.width)), min(iw, round(x1 + right * found.width)))
    if box[1] - box[0] < 2 or box[3] - box[2] < 2:  # a face box almost wholly outside the image
        raise InputError("the face found lies outside the avatar image; use a photo with the whole face in it")
    face = face_crop(image, box)
    keypoints = np.asarray(found.keypoints, np.float32)
    return Avatar(sha256(data).hexdigest()[:16], _frozen(image), box, _frozen(face), len(search.faces), message,
                  _frozen(keypoints))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------- Wav2Lip I/O


def face_crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The face box of `image` resized to FACE_SIZE x FACE_SIZE (what Wav2Lip sees)."""
    y1, y2, x1, x2 = box
    return cv2.resize(image[y1:y2, x1:x2], (C.FACE_SIZE, C.FACE_SIZE))


def wav2lip_faces(avatar: Avatar, image: np.ndarray | None = None) -> np.ndarray:
    """Wav2Lip's face input [6, 96, 96] float32: lower-half-masked crop then reference crop, BGR, /255.

    image: the avatar image as moved for this frame (ensemble.motion.render); default the still image."""
    face = avatar.face if image is None else face_crop(image, avatar.box)
    masked = face.copy()
    masked[C.FACE_SIZE // 2:] = 0
    return (np.concatenate([masked, face], axis=2).transpose(2, 0, 1) / 255.0).astype(np.float32)


def composite(avatar: Avatar, face96: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """Paste a generated face [3, 96, 96] (BGR, 0..1) into a copy of the avatar image (or of `image`, the
    frame's moved avatar image), as Wav2Lip does (x255, truncate to uint8, cv2.resize to the crop box)."""
    f = np.asarray(face96)
    if f.shape != (3, C.FACE_SIZE, C.FACE_SIZE):
        raise ValueError(f"face96 must be [3, {C.FACE_SIZE}, {C.FACE_SIZE}], got {f.shape}")
    p = np.clip(f.transpose(1, 2, 0) * 255.0, 0, 255).astype(np.uint8)
    y1, y2, x1, x2 = avatar.box
    out = (avatar.image if image is None else image).copy()
    out[y1:y2, x1:x2] = cv2.resize(p, (x2 - x1, y2 - y1))
    return out


def encode_jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    """BGR uint8 image -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def demo_avatar_png() -> bytes:
    """scikit-image's `astronaut` (public-domain NASA portrait of Eileen Collins) as PNG."""
    from skimage import data  # heavy import; only needed for the demo

    ok, buf = cv2.imencode(".png", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


# --------------------------------------------------------------------------- storage


NOT_REGISTERED = "register the avatar first"  # in the error for an id the store does not hold (any more)


class AvatarStore:
    """Avatars as <root>/<id>.npz, with an in-memory LRU of at most `capacity` loaded avatars and
    `max_memory_bytes` bytes of them (Avatar.nbytes; default MEMORY_BYTES, None: unbounded). Thread-safe.

    The files are bounded too: `save` keeps at most `max_avatars` files and `max_bytes` bytes of
    them, evicting the least recently used (file mtime: set by `save`, refreshed by every `load`).
    Eviction, not refusal: a full store must not stop new clients from registering, and an evicted
    avatar is recovered by registering its image again (the id is the image's hash, so it is the
    same id). A turn for an evicted avatar gets "unknown avatar id ...; register the avatar first"
    unless a serving process still holds it in memory (a turn in flight holds its avatar and writes it back when
    the frame stage no longer finds it: ensemble/pipeline.py). Several processes share one root (the
    registry writes, the orchestrator reads and writes back); only `save` evicts.
    """

    def __init__(self, root: Path, capacity: int = 64, *, max_avatars: int | None = None,
                 max_bytes: int | None = None, max_memory_bytes: int | None = MEMORY_BYTES) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if max_avatars is not None and max_avatars < 1:
            raise ValueError("max_avatars must be >= 1")
        self.root = Path(root)  # directory holding <id>.npz files
        self.capacity = capacity  # avatars kept in memory
        self.max_memory_bytes = max_memory_bytes  # bytes of avatars kept in memory (None: unbounded)
        self.max_avatars = max_avatars  # avatar files kept on disk (None: unbounded)
        self.max_bytes = max_bytes  # bytes of avatar files kept on disk (None: unbounded)
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: BytesLRU[str, Avatar] = BytesLRU(capacity, max_memory_bytes)

    @staticmethod
    def check_id(avatar_id: str | bytes) -> str:
        """The id as str if it is 16 lowercase hex characters, else InputError (no filesystem access)."""
        if isinstance(avatar_id, (bytes, bytearray)):
            try:
                avatar_id = bytes(avatar_id).decode("ascii")
            except UnicodeDecodeError:
                avatar_id = repr(bytes(avatar_id))
        if not isinstance(avatar_id, str) or not _ID.fullmatch(avatar_id):
            shown = avatar_id[:40] if isinstance(avatar_id, str) else type(avatar_id).__name__
            raise InputError(f"unknown avatar id {shown!r} (avatar ids are 16 lowercase hex characters)")
        return avatar_id

    def _path(self, avatar_id: str) -> Path:
        return self.root / f"{avatar_id}.npz"

    def save(self, avatar: Avatar) -> list[str]:
        """Write the avatar (atomically), then evict beyond the bounds; returns the ids evicted."""
        avatar_id = self.check_id(avatar.id)
        fd, tmp = tempfile.mkstemp(prefix=f".{avatar_id}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, image=avatar.image, box=np.asarray(avatar.box, np.int64), face=avatar.face,
                         faces_found=np.int64(avatar.faces_found), message=np.str_(avatar.message),
                         keypoints=avatar.keypoints)
            os.replace(tmp, self._path(avatar_id))
            _touch(self._path(avatar_id))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._remember(avatar)
        return self.evict(keep=avatar_id)

    def evict(self, keep: str | None = None) -> list[str]:
        """Delete the least recently used avatar files beyond max_avatars / max_bytes; the ids deleted."""
        if self.max_avatars is None and self.max_bytes is None:
            return []
        files = []
        for path in self.root.glob("*.npz"):
            try:
                st = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            files.append((st.st_mtime_ns, path.name, path, st.st_size))
        files.sort()  # oldest first
        count, total = len(files), sum(f[3] for f in files)
        evicted = []
        for _, _, path, size in files:
            over_count = self.max_avatars is not None and count > self.max_avatars
            over_bytes = self.max_bytes is not None and total > self.max_bytes
            if not (over_count or over_bytes):
                break
            if path.stem == keep:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            count, total = count - 1, total - size
            evicted.append(path.stem)
            self._cache.pop(path.stem)
        return evicted

    def stored_ids(self) -> list[str]:
        """Ids on disk, least recently used first."""
        files = []
        for path in self.root.glob("*.npz"):
            try:
                files.append((path.stat().st_mtime_ns, path.stem))
            except FileNotFoundError:
                continue
        return [i for _, i in sorted(files)]

    def load(self, avatar_id: str | bytes) -> Avatar:
        avatar_id = self.check_id(avatar_id)
        path = self._path(avatar_id)
        cached = self._cache.get(avatar_id)
        if cached is not None:
            _touch(path, missing_ok=True)  # recently used: the registry's eviction keeps it longer
            return cached
        unknown = InputError(f"unknown avatar id {avatar_id!r}; {NOT_REGISTERED}")
        if not path.is_file():
            raise unknown
        try:
            with np.load(path, allow_pickle=False) as z:
                if "keypoints" not in z.files:  # stored before face keypoints: its face box came from Haar
                    raise InputError(f"avatar {avatar_id!r} was registered by an older version; register it again")
                y1, y2, x1, x2 = (int(v) for v in z["box"])
                avatar = Avatar(avatar_id, _frozen(z["image"]), (y1, y2, x1, x2), _frozen(z["face"]),
                                int(z["faces_found"]), str(z["message"]), _frozen(z["keypoints"]))
        except FileNotFoundError:  # evicted between the check and the read
            raise unknown from None
        _touch(path, missing_ok=True)
        self._remember(avatar)
        return avatar

    def _remember(self, avatar: Avatar) -> None:
        self._cache.put(avatar.id, avatar, avatar.nbytes)  # an avatar over max_memory_bytes alone is not kept

    def cached_ids(self) -> list[str]:
        """Ids in memory, least recently used first."""
        return self._cache.keys()

    def cached_bytes(self) -> int:
        """Bytes of the avatars in memory (Avatar.nbytes), at most max_memory_bytes."""
        return self._cache.bytes


def _touch(path: Path, missing_ok: bool = False) -> None:
    """Set the file's mtime to now (its last use, for the store's LRU eviction)."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except FileNotFoundError:
        if not missing_ok:
            raise
