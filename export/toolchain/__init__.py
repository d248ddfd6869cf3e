"""Build time (torch): models/, checkpoints/, graphs, ONNX export, TensorRT build and parity, configs.

Imports export.contract; never export.runtime, ensemble or client.
"""
