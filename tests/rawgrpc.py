"""Raw gRPC requests to the orchestrator, for tests that send what the SDK would refuse to send."""
from __future__ import annotations

import queue

import numpy as np
import tritonclient.grpc as grpcclient

from export.contract import events as ev
from export.contract import spec


def infer_input(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
    x = grpcclient.InferInput(name, list(value.shape), dtype)
    x.set_data_from_numpy(value)
    return x


def bytes_array(v: bytes) -> np.ndarray:
    return np.array([v], dtype=np.object_)


def raw_turn(url: str, inputs: list, timeout_s: float = 60) -> tuple[list[ev.Event], str | None]:
    """One request over a raw gRPC stream: (events, error message or None)."""
    q: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(url) as c:
        c.start_stream(callback=lambda result, error: q.put((result, error)))
        c.async_stream_infer(spec.TALKING_HEAD.name, inputs, enable_empty_final_response=True)
        events, error = [], None
        while True:
            result, err = q.get(timeout=timeout_s)
            if err is not None:
                error = str(err)
                break
            if result.get_output("event") is not None:
                events.append(ev.Event.from_json(result.as_numpy("event")[0]))
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        c.stop_stream()
    return events, error
