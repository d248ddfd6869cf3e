"""Triton glue for the orchestrator (decoupled, async BLS). The logic is ensemble/service.py."""
import asyncio
import json
from pathlib import Path

import numpy as np

import triton_python_backend_utils as pb_utils

from ensemble.errors import InputError
from ensemble.pipeline import Cancelled
from ensemble.service import Service
from export.spec import BY_NAME, TALKING_HEAD

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class StageError(RuntimeError):
    pass


async def bls(model: str, inputs: dict) -> dict:
    """One stage call; the response just received is checked for an error."""
    request = pb_utils.InferenceRequest(
        model_name=model, inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()],
        requested_output_names=[t.name for t in BY_NAME[model].outputs])
    response = await request.async_exec()
    if response.has_error():
        raise StageError(f"{model}: {response.error().message()}")
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


class TritonPythonModel:
    def initialize(self, args):
        if not pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"])):
            raise pb_utils.TritonModelException("talking_head must use the decoupled transaction policy")
        self.service = Service.load(Path(args["model_repository"]) / args["model_version"])
        self.inflight = 0

    async def execute(self, requests):
        await asyncio.gather(*(self.serve(r) for r in requests))
        return None

    async def serve(self, request):
        sender = request.get_response_sender()
        inputs = {t.name: pb_utils.get_input_tensor_by_name(request, t.name) for t in TALKING_HEAD.inputs}
        inputs = {k: v.as_numpy() for k, v in inputs.items() if v is not None}

        def emit(event):
            tensors = [pb_utils.Tensor("event", _bytes_tensor(event.to_json()))]
            if event.audio is not None:
                tensors.append(pb_utils.Tensor("audio_chunk", event.audio))
            if event.frame is not None:
                tensors.append(pb_utils.Tensor("frame", _frame_tensor(event.frame)))
            sender.send(pb_utils.InferenceResponse(output_tensors=tensors))

        self.inflight += 1
        error = None
        try:
            await self.service.handle(inputs, bls, emit, is_cancelled=request.is_cancelled)
        except InputError as e:
            error = pb_utils.TritonError(f"invalid input: {e}", pb_utils.TritonError.INVALID_ARG)
        except Cancelled:
            error = pb_utils.TritonError("turn cancelled by the client", pb_utils.TritonError.CANCELLED)
        except Exception as e:  # a stage failed: this turn fails, the server keeps serving
            error = pb_utils.TritonError(f"internal error: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)
        finally:
            self.inflight -= 1
            if error is not None:
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            else:
                sender.send(flags=FINAL)

    def finalize(self):
        if self.inflight:
            pb_utils.Logger.log_warn(f"talking_head unloading with {self.inflight} turn(s) in flight")


def _bytes_tensor(raw: bytes):
    return np.array([raw], dtype=np.object_)


def _frame_tensor(jpeg: bytes):
    return np.frombuffer(jpeg, dtype=np.uint8)
