"""Where things live in a checkout: the one place that names these paths."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository checkout
MODEL_REPOSITORY = ROOT / "model_repository"  # the Triton model repository (configs checked in, graphs exported)
BUILD = ROOT / "build"  # caches and build outputs, never committed

# Triton's default ports (the embedded server binds them on loopback unless told otherwise).
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
GRPC_URL = f"localhost:{GRPC_PORT}"  # where the client, canary and load tests look by default
METRICS_URL = f"localhost:{METRICS_PORT}"
