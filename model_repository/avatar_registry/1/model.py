"""Triton glue for avatar registration. The logic is ensemble/avatar.py; faces come from the face_detector stage."""
import numpy as np
import triton_python_backend_utils as pb_utils

from ensemble.avatar import AvatarStore, register
from ensemble.draining import draining
from ensemble.errors import InputError, wire_message
from ensemble.options import Limits
from ensemble.service import default_avatar_dir
from export.contract.spec import FACE_DETECTOR

DETECT_TIMEOUT_S = 10.0  # one face_detector call (at most max_batch_size windows)


class StageError(RuntimeError):
    """The face_detector stage failed or is not loaded."""


def detect_faces(images: np.ndarray) -> dict:
    """ensemble.face.Detect through BLS: windows [B, 3, 128, 128] uint8 RGB -> scores, boxes, keypoints.
    Synchronous: registration runs outside any turn's event loop, one request at a time per instance."""
    request = pb_utils.InferenceRequest(
        model_name=FACE_DETECTOR.name, inputs=[pb_utils.Tensor(FACE_DETECTOR.inputs[0].name, images)],
        requested_output_names=[t.name for t in FACE_DETECTOR.outputs], timeout=int(DETECT_TIMEOUT_S * 1e6))
    response = request.exec()
    if response.has_error():
        raise StageError(f"{FACE_DETECTOR.name}: {response.error().message()}")
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


class TritonPythonModel:
    def initialize(self, args):
        self.limits = Limits()
        self.store = AvatarStore(default_avatar_dir(), max_avatars=self.limits.max_avatars,
                                 max_bytes=self.limits.max_avatar_store_bytes,
                                 max_memory_bytes=self.limits.max_avatar_memory_bytes)

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
                              min_side=self.limits.min_avatar_side, detect=detect_faces)
            self.store.save(avatar)
        except InputError as e:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(wire_message(f"invalid input: {e}"), pb_utils.TritonError.INVALID_ARG))
        except StageError as e:  # the detector is down: the client may retry, here or on another replica
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                wire_message(f"face detection unavailable: {e}"), pb_utils.TritonError.UNAVAILABLE))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("avatar_id", np.array([avatar.id.encode()], dtype=np.object_)),
            pb_utils.Tensor("face_box", np.asarray(_xyxy(avatar.box), dtype=np.int32)),
            pb_utils.Tensor("message", np.array([avatar.message.encode()], dtype=np.object_)),
        ])


def _xyxy(box):
    """Avatar.box is Wav2Lip's (y1, y2, x1, x2); the API answers x0, y0, x1, y1."""
    y1, y2, x1, x2 = box
    return [x1, y1, x2, y2]
