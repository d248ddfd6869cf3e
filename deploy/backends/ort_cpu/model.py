"""Python-based Triton backend `ort_cpu`: a stage's ONNX graph on ONNX Runtime, CPU.

Glue only: Triton's dynamic batcher gathers requests, `ensemble.batching`
pads them into one batch, runs the graph once and splits the outputs back.
The stage's I/O spec is looked up by model name in export/spec.py.
"""
import json
import os
from pathlib import Path

import triton_python_backend_utils as pb_utils

from ensemble.batching import onnx_runner
from export.spec import BY_NAME


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = config["name"]
        if name not in BY_NAME:
            raise pb_utils.TritonModelException(f"ort_cpu: no I/O spec named {name!r} in export/spec.py")
        self.spec = BY_NAME[name]
        path = Path(args["model_repository"]) / args["model_version"] / config.get("default_model_filename", "model.onnx")
        if not path.exists():
            raise pb_utils.TritonModelException(f"{name}: {path} is missing; run `python -m export` first")
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_threads", {}).get("string_value", min(2, os.cpu_count() or 1)))
        self.runner = onnx_runner(self.spec, path, threads)

    def execute(self, requests):
        feeds = [{t.name: pb_utils.get_input_tensor_by_name(r, t.name).as_numpy()
                  for t in self.spec.inputs if pb_utils.get_input_tensor_by_name(r, t.name) is not None}
                 for r in requests]
        responses = []
        for result in self.runner.run(feeds):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result))))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(n, a) for n, a in result.items()]))
        return responses
