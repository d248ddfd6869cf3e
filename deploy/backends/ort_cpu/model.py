"""Python-based Triton backend `ort_cpu`: a stage's ONNX graph on ONNX Runtime, CPU (glue only)."""
import os

from deploy.stage_backend import make_model, parameter, version_dir
from export.runtime.batching import onnx_runner


def ort_runner(spec, config, args):
    path = version_dir(args) / config.get("default_model_filename", "model.onnx")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python -m export` first")
    threads = int(parameter(config, "intra_op_threads", str(min(2, os.cpu_count() or 1))))
    return onnx_runner(spec, path, threads)


TritonPythonModel = make_model(ort_runner)
