"""The warp family's frames made beside the lip-sync on a torch device: head motion, mouth crop, warp, paste and
JPEG, batched. The same steps as ensemble/motion.py `render` and ensemble/mouth.py `cut`/`paste` do with OpenCV on
the orchestrator's CPU; the matrices come from the same functions (host, microseconds a frame), the pixels stay
on the device until the finished frames come back for JPEG. Served as the `lipsync_frames` model of the gpu variant
(export/contract/spec.py LIPSYNC_FRAMES, deploy/backends/torch_gpu): the orchestrator sends an avatar id, a pose
and visemes per frame and gets the frame's JPEG, so it does no pixel work.

Coordinates: OpenCV's pixel centres are integers, grid_sample's align_corners=True convention. Where OpenCV rounds
to uint8 between steps (the moved image, the crop) this rounds too. Frames differ from the CPU path in
interpolation and at borders: the moved head is sampled once (head motion and brow lift composed) where OpenCV
samples twice, the head region's border reflects about the edge pixel (OpenCV: BORDER_REFLECT), and a downscaled
crop's blur covers the whole frame (OpenCV: the crop's region); tests/test_frames_torch.py bounds the difference.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ensemble import motion, mouth
from ensemble.avatar import Avatar, encode_jpeg
from ensemble.lru import BytesLRU
from ensemble.motion import Pose
from export.contract.mouth import VISEMES

Lipsync = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (crops, visemes, mouth) -> crops
# The most frames composed at once: 64 rows in one piece reserved 3x the device memory of 32-row pieces and were
# slower (an H100, a close-up avatar: 14.9 against 4.7 GB, 61 against 38 ms; BENCHMARKS.md, "The late first-second
# drops are not the H200's")
COMPOSE_ROWS = 32


@dataclass
class DeviceAvatar:
    """One avatar's pixels and per-avatar constants on the device (made once, cached by avatar id)."""

    avatar: Avatar
    geometry: mouth.MouthGeometry
    image: torch.Tensor  # [3, H, W] float32, BGR 0..255
    region: tuple[int, int, int, int]  # the head region (y1, y2, x1, x2)
    mask: torch.Tensor  # [h, w] the head region's blend weight
    bump: torch.Tensor  # [h, w] the brow band's weight
    xs: torch.Tensor  # [h, w] region pixel x
    ys: torch.Tensor  # [h, w] region pixel y

    @classmethod
    def load(cls, avatar: Avatar, device: torch.device) -> "DeviceAvatar":
        ry1, ry2, rx1, rx2 = region = motion.head_region(avatar.image.shape, avatar.box)
        y1, y2, x1, x2 = avatar.box
        xs, ys, bump = motion.brow_grid((ry2 - ry1, rx2 - rx1), (y1 - ry1, y2 - ry1, x1 - rx1, x2 - rx1))

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.asarray(a, np.float32), device=device)  # a copy: the avatar's arrays are read-only

        return cls(avatar, mouth.avatar_geometry(avatar.image, avatar.keypoints),
                   put(avatar.image.transpose(2, 0, 1)), region, put(motion.feather_mask(avatar.image.shape, avatar.box)),
                   put(bump), put(xs), put(ys))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.image, self.mask, self.bump, self.xs, self.ys))


class FrameComposer:
    """Frames [n, 3, H, W] uint8 BGR (and their JPEGs) of one avatar for n poses and viseme rows.

    One upload of the batch's matrices and rows, one download of its frames: a synchronisation waits for the
    GPU, which a dozen other stage processes time-slice, so each costs far more in a busy server than alone. JPEG
    is encoded on `jpeg_threads` host threads (OpenCV releases the GIL): torchvision's nvJPEG path synchronises and
    copies from pageable memory several times per image, which made the served batch 4x slower than alone
    (BENCHMARKS.md, "GPU: one H200")."""

    def __init__(self, lipsync: Lipsync, device: str | torch.device = "cpu", max_avatar_bytes: int = 1 << 30,
                 jpeg_threads: int = 2, max_rows: int = COMPOSE_ROWS):
        self.lipsync = lipsync
        self.max_rows = max_rows
        self.device = torch.device(device)
        self._avatars: BytesLRU[str, DeviceAvatar] = BytesLRU(64, max_avatar_bytes)
        self._encoders = ThreadPoolExecutor(max_workers=jpeg_threads, thread_name_prefix="jpeg")

    def on_device(self, avatar: Avatar) -> DeviceAvatar:
        found = self._avatars.get(avatar.id)  # ids are content hashes (ensemble/avatar.py register)
        if found is None:
            found = DeviceAvatar.load(avatar, self.device)
            self._avatars.put(avatar.id, found, found.nbytes)
        return found

    def compose_jpegs(self, avatar: Avatar, poses: list[Pose], visemes: np.ndarray, quality: int) -> list[bytes]:
        """JPEG bytes of the frames of `poses` and viseme rows, composed max_rows at a time: a piece's device
        memory grows with its rows (whole float frames, and a close-up avatar's whole-frame blur; COMPOSE_ROWS)."""
        out: list[bytes] = []
        for start in range(0, len(poses), self.max_rows):
            rows = slice(start, start + self.max_rows)
            out += self.jpegs(self.compose(avatar, poses[rows], visemes[rows]), quality)
        return out

    @torch.inference_mode()
    def compose(self, avatar: Avatar, poses: list[Pose], visemes: np.ndarray) -> torch.Tensor:
        a = self.on_device(avatar)
        n = len(poses)
        ry1, _, rx1, _ = a.region
        fh = avatar.box[1] - avatar.box[0]
        maps = [mouth.crop_matrix(a.geometry, avatar.image.shape, avatar.box, p) for p in poses]
        host = np.concatenate([  # every per-frame number of the batch: one upload
            [cv2.invertAffineTransform(motion.head_matrix(avatar.box, (ry1, rx1), p)).ravel() for p in poses],
            [[p.brow * fh] for p in poses],
            [cv2.invertAffineTransform(m).ravel() for m in maps],
            [m.ravel() for m in maps],
            np.asarray(visemes, np.float32).reshape(n, -1),
            np.repeat(a.geometry.row()[None], n, axis=0)], axis=1).astype(np.float32)
        dev = torch.from_numpy(host).to(self.device)
        head_inv, lift, cut_inv, fwd = (dev[:, 0:6].reshape(n, 2, 3), dev[:, 6], dev[:, 7:13].reshape(n, 2, 3),
                                        dev[:, 13:19].reshape(n, 2, 3))
        frames = self.render(a, head_inv, lift)
        crops = self.cut(frames, cut_inv, mouth.crop_scale(maps[0]))
        warped = self.lipsync(crops, dev[:, 19:19 + VISEMES].contiguous(),
                              dev[:, 19 + VISEMES:].contiguous())
        rois = [mouth.crop_roi(m, avatar.image.shape, mouth.CROP_SIZE, pad=1) for m in maps]
        return self.paste(frames, crops, warped.float(), fwd, rois)

    def render(self, a: DeviceAvatar, inv: torch.Tensor, lift: torch.Tensor) -> torch.Tensor:
        """motion.render of every pose (`inv`: the inverse head matrices [n, 2, 3], `lift`: brow lift in pixels
        [n]): the head region moved (rotation, shift, brow lift), feathered in. Float frames, 0..255."""
        n = inv.shape[0]
        ry1, ry2, rx1, rx2 = a.region
        yb = a.ys + a.bump * lift[:, None, None]  # the brow band's source row, then the head's inverse map
        region = a.image[:, ry1:ry2, rx1:rx2]
        moved = F.grid_sample(region.expand(n, -1, -1, -1), _grid(inv, a.xs, yb, rx2 - rx1, ry2 - ry1),
                              mode="bilinear", padding_mode="reflection", align_corners=True).round()
        frames = a.image.expand(n, -1, -1, -1).clone()
        frames[:, :, ry1:ry2, rx1:rx2] = (moved * a.mask + region * (1 - a.mask)).round()
        return frames

    def cut(self, frames: torch.Tensor, inv: torch.Tensor, scale: float) -> torch.Tensor:
        """mouth.cut of every frame (`inv`: crop -> frame maps [n, 2, 3], `scale`: crop px per frame px): the crops
        [n, 3, S, S] float32 BGR 0..1."""
        size = mouth.CROP_SIZE
        _, _, height, width = frames.shape
        source = frames
        if scale < 0.75:
            source = _blur(frames, mouth.DOWNSCALE_BLUR / scale, cv2.CV_8U).round()
        u = torch.arange(size, device=frames.device, dtype=torch.float32)
        crops = F.grid_sample(source, _grid(inv, u[None, :], u[:, None], width, height), mode="bilinear",
                              padding_mode="border", align_corners=True)
        return crops.round() * (1 / 255)

    def paste(self, frames: torch.Tensor, crops: torch.Tensor, warped: torch.Tensor, fwd: torch.Tensor,
              rois: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """mouth.paste of every frame (`fwd`: frame -> crop maps [n, 2, 3], `rois`: mouth.crop_roi of each): the
        warp's change mapped back, blended by the replace weight; uint8."""
        size = crops.shape[-1]
        change = warped - crops
        replace = torch.clamp(change.abs().amax(dim=1, keepdim=True) * (1 / mouth.REPLACE_CHANGE), max=1.0)
        replace = _blur(replace, mouth.REPLACE_BLUR, cv2.CV_32F)
        stack = torch.cat([(change + replace * crops) * 255.0, replace], dim=1)  # [n, 4, S, S]
        x0, y0 = min(r[0] for r in rois), min(r[1] for r in rois)
        x1, y1 = max(r[2] for r in rois), max(r[3] for r in rois)
        if x1 > x0 and y1 > y0:
            xs = torch.arange(x0, x1, device=frames.device, dtype=torch.float32)[None, :]
            ys = torch.arange(y0, y1, device=frames.device, dtype=torch.float32)[:, None]
            mapped = F.grid_sample(stack, _grid(fwd, xs, ys, size, size), mode="bilinear", padding_mode="zeros",
                                   align_corners=True)
            region = frames[:, :, y0:y1, x0:x1]
            frames[:, :, y0:y1, x0:x1] = (region * (1 - mapped[:, 3:]) + mapped[:, :3]).round()
        return frames.clamp_(0, 255).to(torch.uint8)

    def jpegs(self, frames: torch.Tensor, quality: int) -> list[bytes]:
        """JPEG bytes of uint8 BGR frames [n, 3, H, W]: one download, then OpenCV on the encoder threads."""
        check_quality(quality)
        images = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return list(self._encoders.map(lambda image: encode_jpeg(image, quality=quality), images))


class FramesStage:
    """The `lipsync_frames` model's batches (export/runtime/batching.py BatchRunner feeds): rows grouped by avatar
    and JPEG quality, each group composed at once. `load` finds a registered avatar by id (AvatarStore.load: an
    unknown id is an InputError, which fails that request alone)."""

    def __init__(self, composer: FrameComposer, load: Callable[[str], Avatar]):
        self.composer = composer
        self.load = load

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [bytes(b).decode("ascii", "replace") for b in feeds["avatar_id"].reshape(-1)]
        qualities = [int(q) for q in feeds["quality"].reshape(-1)]
        poses = [Pose(*map(float, row)) for row in feeds["pose"]]
        visemes = np.asarray(feeds["visemes"], np.float32)
        frames = np.empty((len(ids), 1), dtype=object)
        groups: dict[tuple[str, int], list[int]] = {}
        for row, key in enumerate(zip(ids, qualities)):
            groups.setdefault(key, []).append(row)
        # every row checked before any pixel work: a bad row fails the batch at once, and the runner then
        # answers each request on its own (export/runtime/batching.py), only the bad one with an error
        for q in qualities:
            check_quality(q)
        avatars = {avatar_id: self.load(avatar_id) for avatar_id, _ in groups}
        for (avatar_id, quality), rows in groups.items():
            jpegs = self.composer.compose_jpegs(avatars[avatar_id], [poses[r] for r in rows], visemes[rows], quality)
            for r, jpeg in zip(rows, jpegs):
                frames[r, 0] = jpeg
        return {"frame": frames}


def check_quality(quality: int) -> None:
    if not 1 <= quality <= 100:
        raise ValueError(f"{quality} is not a JPEG quality in 1..100")


def _grid(m: torch.Tensor, x: torch.Tensor, y: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """grid_sample's grid [n, h, w, 2] (align_corners=True) of the 2 x 3 maps `m` [n, 2, 3] taken at pixel coordinates
    (x, y) (broadcast to [h, w], or [n, h, w]) into a source of width x height pixels."""
    m = m[:, :, :, None, None]
    u = m[:, 0, 0] * x + m[:, 0, 1] * y + m[:, 0, 2]
    v = m[:, 1, 0] * x + m[:, 1, 1] * y + m[:, 1, 2]
    return torch.stack((u * (2 / max(1, width - 1)) - 1, v * (2 / max(1, height - 1)) - 1), dim=-1)


def _blur(images: torch.Tensor, sigma: float, depth: int) -> torch.Tensor:
    """cv2.GaussianBlur(sigma) of [n, c, h, w] with OpenCV's kernel for that depth and its default border
    (reflect-101), separable."""
    ksize = int(round(sigma * (3 if depth == cv2.CV_8U else 4) * 2 + 1)) | 1
    k = torch.from_numpy(cv2.getGaussianKernel(ksize, sigma).astype(np.float32)[:, 0]).to(images.device)
    c, r = images.shape[1], ksize // 2
    x = F.pad(images, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, ksize), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, ksize, 1), groups=c)
