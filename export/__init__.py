"""The models' side of the service, in three floors that import downwards only:

    export/runtime/    serve time: batching, session caches, CUDA-graph runners (the stage backends' code)
    export/toolchain/  build time: PyTorch models, checkpoint loaders, ONNX export, TensorRT build, configs
    export/contract/   torch-free: media contract, presets, model I/O specs, tokenizers, wire events

The orchestrator (ensemble/) and the client (client/) import export.contract only. The command lines
live at this level: `python -m export`, `python -m export.trt`, `python -m export.render_configs`.
"""
