"""gRPC over TLS and the restricted admin APIs, on a second real server (ports 18700-18702).

A throw-away CA and a server certificate for localhost are made at test time with the openssl
command-line tool (deploy.tls.make_self_signed). One server serves both checks:
ServerOptions(tls=..., admin_key=...).
"""
from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.sdk import ConnectionFailed, TalkingHeadClient
from deploy import secret_argv
from deploy.admin import ADMIN_GRPC_HEADER, admin_headers
from deploy.processes import server_ports, stubs
from deploy.server import ADMIN_APIS, EmbeddedServer, ServerOptions
from deploy.tls import make_self_signed
from ensemble.avatar import demo_avatar_png

pytestmark = pytest.mark.server

PORTS = server_ports()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def admin_key():
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def tls_server(exported_repository, tmp_path_factory, tls, admin_key):
    options = ServerOptions(repository=exported_repository, workdir=tmp_path_factory.mktemp("triton-tls"),
                            tls=tls, admin_key=admin_key, **PORTS)
    with EmbeddedServer(options) as s:
        print(f"\nTLS + admin-key server ready in {s.started_s:.1f} s")
        yield s


@pytest.fixture(scope="module")
def grpc_admin(tls_server, tls):
    with grpcclient.InferenceServerClient(tls_server.options.grpc_url, ssl=True,
                                          root_certificates=str(tls.root_cert)) as c:
        yield c


def test_server_flags():
    from deploy.tls import TLSFiles

    files = TLSFiles(Path("s.pem"), Path("s.key"), Path("ca.pem"))
    args = ServerOptions(tls=files, admin_key="k" * 20).security_args()
    assert args[:4] == ["--grpc-use-ssl=true", "--grpc-server-cert=s.pem", "--grpc-server-key=s.key",
                        "--grpc-root-cert=ca.pem"]
    key = f"admin-key={'k' * 20}"
    assert args[4:] == [f"--grpc-restricted-protocol={','.join(ADMIN_APIS)}:{key}",
                        f"--http-restricted-api={','.join(ADMIN_APIS)},inference:{key}"]  # HTTP serves no turns
    # the admin APIs are never left open: without a key, a random per-run key
    assert ServerOptions(model_control="none").admin_key_generated
    generated = ServerOptions()
    assert generated.admin_key_generated and len(generated.admin_key) >= 32
    assert generated.admin_key != ServerOptions().admin_key
    assert f"--grpc-restricted-protocol={','.join(ADMIN_APIS)}:admin-key={generated.admin_key}" in generated.security_args()
    for bad in ("short", "a,b:c=d" * 4, "with space in the key"):
        with pytest.raises(ValueError, match="admin_key"):
            ServerOptions(admin_key=bad)


def test_text_turn_over_tls(tls_server, tls):
    with TalkingHeadClient(tls_server.options.grpc_url, ssl=True, root_certificates=str(tls.root_cert),
                           turn_timeout_s=120) as th:
        avatar = th.register_avatar(demo_avatar_png())
        result = th.turn(avatar_id=avatar.id, text="Hello over TLS.", options={"max_reply_tokens": 16})
    assert result.done is not None and result.audio.size > 0 and len(result.frames) > 0
    print(f"TLS text turn: first audio {result.time_to_first_audio_s:.3f} s, total {result.total_s:.3f} s")


def test_canary_over_tls(tls_server, tls):
    from deploy import canary

    url = tls_server.options.grpc_url
    assert canary.main(["--url", url, "--timeout", "60", "--root-certificates", str(tls.root_cert)]) == 0
    assert canary.main(["--url", url, "--timeout", "10"]) == 1  # a plaintext probe cannot pass


def test_plaintext_client_is_refused_clearly(tls_server):
    with TalkingHeadClient(tls_server.options.grpc_url, request_timeout_s=10) as th:
        with pytest.raises(ConnectionFailed) as info:
            th.register_avatar(demo_avatar_png())
    message = str(info.value)
    print(f"plaintext client: {message}")
    assert message.startswith(f"cannot reach Triton at {tls_server.options.grpc_url}")
    assert "Socket closed" in message or "failed to connect" in message


def test_client_trusting_another_ca_is_refused(tls_server, tmp_path):
    other = make_self_signed(tmp_path / "other")
    with TalkingHeadClient(tls_server.options.grpc_url, ssl=True, root_certificates=str(other.root_cert),
                           request_timeout_s=10) as th:
        with pytest.raises(ConnectionFailed) as info:
            th.register_avatar(demo_avatar_png())
    print(f"client with another CA: {info.value}")
    assert "handshake failed" in str(info.value).lower() or "certificate" in str(info.value).lower()


def _refused(call) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.message())


def test_admin_apis_need_the_admin_key(grpc_admin, admin_key):
    restricted = f"This protocol is restricted, expecting header '{ADMIN_GRPC_HEADER}'"
    # model-repository: load / unload without the header are refused by the restriction
    for call in (lambda: grpc_admin.unload_model("llm"), lambda: grpc_admin.load_model("llm"),
                 lambda: grpc_admin.get_model_repository_index()):
        assert _refused(call) == restricted
    # statistics, model-config, trace, logging: the same
    for call in (lambda: grpc_admin.get_inference_statistics(), lambda: grpc_admin.get_model_config("llm"),
                 lambda: grpc_admin.get_trace_settings(), lambda: grpc_admin.get_log_settings()):
        assert _refused(call) == restricted
    # a wrong key, or the HTTP header name on gRPC, does not open them
    assert _refused(lambda: grpc_admin.get_inference_statistics(headers={ADMIN_GRPC_HEADER: "wrong"})) == restricted
    assert _refused(lambda: grpc_admin.get_inference_statistics(headers={"admin-key": admin_key})) == restricted
    # with the key: statistics and the repository index answer
    headers = admin_headers(admin_key)
    stats = grpc_admin.get_inference_statistics(headers=headers, as_json=True)
    assert {m["name"] for m in stats["model_stats"]} >= {"talking_head", "llm", "avatar_registry"}
    index = grpc_admin.get_model_repository_index(headers=headers, as_json=True)
    assert {m["name"]: m.get("state") for m in index["models"]}["llm"] == "READY"
    # health, metadata and inference stay open (probes, canary and clients need no key)
    assert grpc_admin.is_server_ready() and grpc_admin.is_model_ready("talking_head")
    assert grpc_admin.get_model_metadata("talking_head").name == "talking_head"


def test_the_admin_key_is_not_on_any_command_line(tls_server, admin_key):
    """tritonserver got the key (the admin tests above pass with it) from its 0600 file through deploy/secret_argv:
    `ps` shows the placeholder, and its stubs inherit neither the library nor the file's name."""
    server = Path(f"/proc/{tls_server.process.pid}")
    cmdline = (server / "cmdline").read_bytes().decode()
    assert admin_key not in cmdline and cmdline.count(secret_argv.PLACEHOLDER) == 2
    assert (tls_server.options.admin_key_file.stat().st_mode & 0o777) == 0o600
    children = stubs(tls_server.process.pid)
    assert children
    for stub in children:
        proc = Path(f"/proc/{stub.pid}")
        assert admin_key.encode() not in (proc / "cmdline").read_bytes()
        environ = (proc / "environ").read_bytes()
        assert secret_argv.FILE_ENV.encode() not in environ and secret_argv.LIBRARY.encode() not in environ


def test_http_admin_apis_need_the_admin_key(tls_server, admin_key):
    url = f"http://localhost:{tls_server.options.http_port}"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{url}/v2/models/stats", timeout=5)
    assert info.value.code == 403
    assert b"This API is restricted, expecting header 'admin-key'" in info.value.read()
    request = urllib.request.Request(f"{url}/v2/models/stats", headers=admin_headers(admin_key, grpc=False))
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as r:  # health stays open
        assert r.status == 200
