"""Serve time: the stage backends' code (batching, session-keyed caches, CUDA-graph runners).

batching.py is numpy + ONNX Runtime only (the CPU stubs import it); the torch runtimes build their
modules from export.toolchain.
"""
