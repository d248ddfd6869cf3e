"""Triton glue for avatar registration. The logic is ensemble/avatar.py."""
import numpy as np
import triton_python_backend_utils as pb_utils

from ensemble.avatar import AvatarStore, FaceDetector, register
from ensemble.draining import draining
from ensemble.errors import InputError
from ensemble.options import Limits
from ensemble.service import default_avatar_dir


class TritonPythonModel:
    def initialize(self, args):
        self.limits = Limits()
        self.store = AvatarStore(default_avatar_dir(), max_avatars=self.limits.max_avatars,
                                 max_bytes=self.limits.max_avatar_store_bytes)
        self.detector = FaceDetector()

    def execute(self, requests):
        return [self.register(r) for r in requests]

    def register(self, request):
        if draining():
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                "server is shutting down; register the avatar on another replica", pb_utils.TritonError.UNAVAILABLE))
        try:
            raw = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            if raw.size != 1 or not isinstance(raw[0], bytes):
                raise InputError("`image` must hold one encoded image (bytes)")
            avatar = register(raw[0], max_bytes=self.limits.max_avatar_bytes, max_pixels=self.limits.max_avatar_pixels,
                              min_side=self.limits.min_avatar_side, detector=self.detector)
            self.store.save(avatar)
        except InputError as e:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"invalid input: {e}", pb_utils.TritonError.INVALID_ARG))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("avatar_id", np.array([avatar.id.encode()], dtype=np.object_)),
            pb_utils.Tensor("face_box", np.asarray(_xyxy(avatar.box), dtype=np.int32)),
            pb_utils.Tensor("message", np.array([avatar.message.encode()], dtype=np.object_)),
        ])


def _xyxy(box):
    """Avatar.box is Wav2Lip's (y1, y2, x1, x2); the API answers x0, y0, x1, y1."""
    y1, y2, x1, x2 = box
    return [x1, y1, x2, y2]
