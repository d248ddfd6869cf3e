"""The mouth warp's contract (lip-sync without learned weights): crop size, viseme and geometry vectors.

Torch-free: the toolchain's graph (export/toolchain/models/mouth_warp.py) and the orchestrator (ensemble/visemes.py
makes the viseme rows, ensemble/mouth.py cuts the crops and pastes them back) read the same constants.

The `mouth_warp` stage sees one square crop of CROP_SIZE x CROP_SIZE pixels centred on the mouth, upright with the
face, CROP_EYE_SPANS eye distances wide; it answers the crop with the lips, jaw and chin moved and a mouth interior
drawn where the lips part. Coordinates in `mouth` rows are the crop's normalised ones (grid_sample's, align_corners
False): x to the right and y down, -1 and +1 at the outer edges of the border pixels, so one pixel is 2 / CROP_SIZE.
"""
from __future__ import annotations

# 128: at the demo avatar's scale (512 px portrait, eyes 43 px apart) a crop of 3 eye distances is 129 px, so the
# crop is cut and pasted at ~1:1; the lips are ~40 px wide in it (Wav2Lip's whole face is 96). Inputs and outputs
# are 3 x 128 x 128 FP32 = 196 kB each per frame, the same order as Wav2Lip's 6 x 96 x 96 + 3 x 96 x 96.
CROP_SIZE = 128
CROP_EYE_SPANS = 3.0  # crop side / distance between the eye centres (BlazeFace keypoints)
MOUTH_HALF_WIDTH_EYE_SPANS = 0.45  # default mouth half width / eye distance (corners not detected)
MOUTH_BELOW_KEYPOINT_EYE_SPANS = -0.05  # lip line below BlazeFace's mouth_center, in eye distances (it sits low)

# One row of `visemes` per frame: what the mouth does (ensemble/visemes.py makes them from phoneme timings).
VISEME_PARAMS = (
    "open",  # jaw and lip opening, 0 (rest) .. 1 (wide "aa")
    "spread",  # lip corners: -1 rounded/protruded ("oo", "w") .. 0 neutral .. +1 spread ("ee")
    "press",  # lip closure for p, b, m: 0 .. 1 (lips meet and press, whatever the avatar's own rest opening)
    "dental",  # lower lip up under the upper teeth for f, v: 0 .. 1
    "teeth",  # teeth shown: 0 .. 1 (upper lip lifted a little, teeth bands taller)
)
VISEMES = len(VISEME_PARAMS)  # K = 5

# One row of `mouth` per frame: where the avatar's lips are in the crop, at rest (ensemble/mouth.py).
MOUTH_PARAMS = (
    "x",  # lip line centre, normalised crop x
    "y",  # lip line centre, normalised crop y
    "half_width",  # mouth corner to centre, normalised crop units (> 0)
    "gap_up",  # rest opening above the lip line at the centre (the avatar's own teeth/parted lips), crop units >= 0
    "gap_down",  # rest opening below the lip line at the centre, crop units >= 0
    "smile",  # corner lift: the lip line is y - smile * half_width * (dx / half_width)^2 (0: straight)
)
MOUTH_DIMS = len(MOUTH_PARAMS)  # 6
