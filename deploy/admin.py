"""Talking to a running server's admin and metrics endpoints: the admin-key headers, the orchestrator's
unload (readiness off while its turns finish), and its active-sessions gauge. Used by the launcher
(deploy/server.py) and the preStop drain (deploy/drain.py).
"""
from __future__ import annotations

from deploy import metrics_text
from ensemble.metrics import ACTIVE_SESSIONS
from export.contract.spec import TALKING_HEAD

ORCHESTRATOR = TALKING_HEAD.name
ADMIN_HEADER = "admin-key"  # the HTTP header; on gRPC Triton expects it as `triton-grpc-protocol-<header>`
ADMIN_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"

def admin_headers(key: str | None, grpc: bool = True) -> dict[str, str] | None:
    """The headers an admin call sends when ServerOptions.admin_key is set (None when it is not).

    Triton 2.51 checks `admin-key` on HTTP but `triton-grpc-protocol-admin-key` on gRPC.
    """
    if key is None:
        return None
    return {ADMIN_GRPC_HEADER if grpc else ADMIN_HEADER: key}


def active_sessions(metrics_url: str) -> float:
    """Sum of talking_head_active_sessions over every orchestrator instance (0 when absent)."""
    return metrics_text.total(metrics_text.scrape(metrics_url), ACTIVE_SESSIONS.name)


def unload_orchestrator(grpc_url: str, admin_key: str | None, root_certificates: str | None = None) -> None:
    """Ask Triton to unload talking_head (returns at once; Triton lets the turns in flight finish first)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(grpc_url, ssl=root_certificates is not None,
                                          root_certificates=root_certificates) as client:
        client.unload_model(ORCHESTRATOR, headers=admin_headers(admin_key), client_timeout=10)
