"""The Triton glue every stage backend shares: gather requests, run one batch, answer each.

A Python-based backend's model.py is one line over this: it names the function
that makes a `BatchRunner` for the model (ONNX Runtime on CPU, PyTorch on CUDA).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import triton_python_backend_utils as pb_utils

from export.contract.spec import BY_NAME, ModelSpec
from export.runtime.batching import BatchRunner

RunnerFactory = Callable[[ModelSpec, dict, dict], BatchRunner]


def make_model(factory: RunnerFactory):
    """A TritonPythonModel class whose runner comes from factory(spec, model_config, args)."""

    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            name = config["name"]
            if name not in BY_NAME:
                raise pb_utils.TritonModelException(f"no I/O spec named {name!r} in export/contract/spec.py")
            self.spec = BY_NAME[name]
            # the config's inputs: the spec's, plus those a variant adds (export/contract/spec.py SessionState)
            self.input_names = [i["name"] for i in config.get("input", [])] or [t.name for t in self.spec.inputs]
            try:
                self.runner = factory(self.spec, config, args)
            except FileNotFoundError as e:
                raise pb_utils.TritonModelException(f"{name}: {e}") from None
            self.runner.bounds = input_bounds(version_dir(args))

        def execute(self, requests):
            feeds = []
            for r in requests:
                tensors = {name: pb_utils.get_input_tensor_by_name(r, name) for name in self.input_names}
                feeds.append({k: v.as_numpy() for k, v in tensors.items() if v is not None})
            responses = []
            for result in self.runner.run(feeds):
                if isinstance(result, Exception):  # ValueError: the request itself does not fit (batching.py)
                    code = pb_utils.TritonError.INVALID_ARG if isinstance(result, ValueError) else pb_utils.TritonError.INTERNAL
                    responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result), code)))
                else:
                    responses.append(pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(n, a) for n, a in result.items()]))
            return responses

    return TritonPythonModel


def input_bounds(folder: Path) -> dict[str, list]:
    """The values each input may hold, as the export wrote them beside the graph (export.json `input_bounds`)."""
    manifest = folder / "export.json"
    return json.loads(manifest.read_text()).get("input_bounds", {}) if manifest.is_file() else {}


def parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]
