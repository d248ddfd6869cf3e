"""Triton glue for the orchestrator (decoupled, async BLS). The logic is ensemble/service.py."""
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ensemble import metrics
from ensemble.errors import DeadlineExceeded, InputError, Overloaded, wire_message
from ensemble.pipeline import Cancelled
from ensemble.service import Service, ServiceConfig
from export.contract.spec import BY_NAME, TALKING_HEAD

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
FRAME_WORKERS = 2


class StageError(RuntimeError):
    pass


async def bls(model: str, inputs: dict, timeout_s: float) -> dict:
    """One stage call with the turn's remaining time as its timeout; the response just received is checked."""
    request = pb_utils.InferenceRequest(
        model_name=model, inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()],
        requested_output_names=[t.name for t in BY_NAME[model].answer(inputs)], timeout=max(1, int(timeout_s * 1e6)))
    response = await request.async_exec()
    if response.has_error():
        raise StageError(f"{model}: {response.error().message()}")
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


class TritonPythonModel:
    def initialize(self, args):
        if not pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"])):
            raise pb_utils.TritonModelException("talking_head must use the decoupled transaction policy")
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        try:
            settings = ServiceConfig.from_parameters(params)
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        self.service = Service.load(Path(args["model_repository"]) / args["model_version"], config=settings,
                                    recorder=TritonMetrics(), log=pb_utils.Logger.log_info)
        # compositing and JPEG encoding off the event loop that serves requests, audio and cancels
        self.service.frame_workers = ThreadPoolExecutor(max_workers=FRAME_WORKERS, thread_name_prefix="frames")
        self.service.speech_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
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
            await self.service.handle(inputs, bls, emit, is_cancelled=request.is_cancelled,
                                      request_id=request.request_id())
        except InputError as e:
            error = f"invalid input: {e}", pb_utils.TritonError.INVALID_ARG
        except Overloaded as e:
            error = str(e), pb_utils.TritonError.UNAVAILABLE
        except DeadlineExceeded as e:  # the remaining work was dropped
            error = str(e), pb_utils.TritonError.INTERNAL
        except Cancelled:
            error = "turn cancelled by the client", pb_utils.TritonError.CANCELLED
        except Exception as e:  # a stage failed: this turn fails, the server keeps serving
            error = f"internal error: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL
        finally:
            self.inflight -= 1
            if error is not None:
                message, code = error
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(wire_message(message), code)),
                            flags=FINAL)
            else:
                sender.send(flags=FINAL)

    def finalize(self):
        self.service.frame_workers.shutdown(wait=False, cancel_futures=True)
        self.service.speech_worker.shutdown(wait=False, cancel_futures=True)
        if self.inflight:
            pb_utils.Logger.log_warn(f"talking_head unloading with {self.inflight} turn(s) in flight")


class TritonMetrics:
    """ensemble.metrics.Recorder on Triton's metrics endpoint (pb_utils.MetricFamily)."""

    KINDS = {"histogram": "HISTOGRAM", "gauge": "GAUGE", "counter": "COUNTER"}

    def __init__(self):
        self.families = {m.name: pb_utils.MetricFamily(name=m.name, description=m.help,
                                                       kind=getattr(pb_utils.MetricFamily, self.KINDS[m.kind]))
                         for m in metrics.ALL}
        self.children = {}
        metrics.create_children(self)  # counters and gauges of known labels exported at 0 before first use

    def _child(self, metric, labels):
        key = (metric.name, tuple(sorted(labels.items())))
        if key not in self.children:
            extra = {"buckets": list(metric.buckets)} if metric.buckets else {}
            self.children[key] = self.families[metric.name].Metric(labels=labels, **extra)
        return self.children[key]

    def observe(self, metric, value, **labels):
        self._child(metric, labels).observe(value)

    def inc(self, metric, by=1.0, **labels):
        self._child(metric, labels).increment(by)

    def set(self, metric, value, **labels):
        self._child(metric, labels).set(value)


def _bytes_tensor(raw: bytes):
    return np.array([raw], dtype=np.object_)


def _frame_tensor(jpeg: bytes):
    return np.frombuffer(jpeg, dtype=np.uint8)
