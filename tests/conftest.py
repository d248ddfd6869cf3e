"""Shared fixtures: the exported tiny graphs and one real embedded Triton server per test session."""
from __future__ import annotations

import pytest

from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from export.contract.layout import MODEL_REPOSITORY

PORTS = server_ports()  # free ports: other servers may hold the usual ones


@pytest.fixture(scope="session")
def exported_repository():
    """The repository with the tiny preset exported (idempotent: skipped when up to date)."""
    from export.__main__ import main as export_main

    assert export_main(["--preset", "tiny"]) == 0
    return MODEL_REPOSITORY


@pytest.fixture(scope="session")
def server(exported_repository, tmp_path_factory):
    options = ServerOptions(repository=exported_repository, workdir=tmp_path_factory.mktemp("triton"), **PORTS)
    with EmbeddedServer(options) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    from client.sdk import TalkingHeadClient

    with TalkingHeadClient(server.options.grpc_url, turn_timeout_s=120) as c:
        yield c


@pytest.fixture(scope="session")
def avatar(client):
    from ensemble.avatar import demo_avatar_png

    return client.register_avatar(demo_avatar_png())
