"""Test-only lip-sync stage (tests/test_faults.py): the real ONNX graph through the `ort_cpu` runner,
except that it raises for every request whose reference face has a colour channel that is all zero.

No camera gives such a face, so only the avatar the test registers for it (the demo face with its
blue channel zeroed) makes this stage fail, request by request, the way a stage bug or a runtime
error would: the other requests of the same batch are answered normally. Served by Triton's stock
`python` backend from a copy of the repository that only the test builds; production never loads it.
"""

from deploy.backends.ort_cpu.model import ort_runner
from deploy.stage_backend import make_model

MARK = "faulty_stage: refusing a face with an empty colour channel (the fault test's marker)"


def faulty_runner(spec, config, args):
    # the python backend sets default_model_filename to model.py (this file); the graph is model.onnx
    runner = ort_runner(spec, {**config, "default_model_filename": "model.onnx"}, args)
    run = runner.run

    def run_or_raise(requests):
        results = run(requests)
        for i, feeds in enumerate(requests):
            faces = feeds.get("faces")  # [n, C, H, W] face crops (Wav2Lip's: masked crop, then the reference)
            if faces is not None and (faces[:, -3:].max(axis=(2, 3)) == 0).any():
                results[i] = RuntimeError(f"{spec.name}: {MARK}")
        return results

    runner.run = run_or_raise
    return runner


TritonPythonModel = make_model(faulty_runner)
