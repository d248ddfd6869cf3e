"""The SDK as a dependency: the talking-head-client wheel (client/pyproject.toml) built here, installed into a fresh
venv with nothing but its declared dependencies, imported as `talking_head.client`, and run for one turn (sync, with
typed events and a typed stream error) and one asyncio turn against the test server. Reuses pip's cache: about
30 s after the first run."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import asyncio, importlib.util, json, sys
from importlib.metadata import distributions

# nothing generic on the path: only the namespace
found = {m: importlib.util.find_spec(m) is not None for m in ("client", "export", "ensemble", "deploy", "loadtests")}
from talking_head.client import AudioEvent, DoneEvent, ServerError, TalkingHeadClient, TextEvent
from talking_head.client.aio import AsyncTalkingHeadClient
from talking_head.contract import events as ev

url, png = sys.argv[1], open(sys.argv[2], "rb").read()
with TalkingHeadClient(url, turn_timeout_s=120) as th:
    avatar = th.register_avatar(png)
    events = list(th.ask(avatar_id=avatar.id, text="Hello there.", options={"max_reply_tokens": 6}).typed())
    try:
        list(th.ask(avatar_id=avatar.id, text="Hello.", options={"top_k": 0}))
        status = None
    except ServerError as e:
        status, message = e.status, e.message

async def main():
    async with AsyncTalkingHeadClient(url, turn_timeout_s=120) as th:
        typed = [e async for e in th.ask(avatar_id=avatar.id, text="Thanks!", options={"max_reply_tokens": 6})]
        result = await th.turn(avatar_id=avatar.id, text="Bye.", options={"max_reply_tokens": 4, "video": False})
        return typed, result

typed, result = asyncio.run(main())
print(json.dumps({
    "generic_names_importable": found,
    "sync_kinds": [type(e).__name__ for e in events],
    "sync_done": isinstance(events[-1], DoneEvent) and events[-1].raw["type"] == ev.DONE,
    "audio_samples": sum(e.samples for e in events if isinstance(e, AudioEvent)),
    "status": status, "message": message,
    "async_done": isinstance(typed[-1], DoneEvent), "async_text": any(isinstance(e, TextEvent) for e in typed),
    "turn_reply": result.reply, "turn_audio": int(result.audio.size),
    "installed": sorted(d.metadata["Name"].lower() for d in distributions()),
}))
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT / "client")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("talking_head_client-*.whl")
    return whl


def test_the_wheel_holds_only_the_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"talking_head"}, top
    assert "talking_head/client/sdk.py" in names and "talking_head/contract/spec.py" in names
    assert "talking_head/client/setup.py" not in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: tritonclient[grpc]==2.51.0" in meta and "Requires-Dist: numpy<2,>=1.24" in meta
    assert 'Provides-Extra: media' in meta and 'Provides-Extra: mic' in meta
    for n in names:
        if n.endswith(".py"):
            text = zipfile.ZipFile(wheel).read(n).decode()
            assert "from export." not in text and "from client" not in text and "import client" not in text, n


def test_the_contract_modules_shipped_are_the_ones_the_client_imports():
    """client/setup.py's CONTRACT list = export.contract modules that importing every client module loads."""
    code = ("import sys, importlib, pathlib; [importlib.import_module('client.' + p.stem) for p in "
            "pathlib.Path('client').glob('*.py') if p.stem not in ('setup', '__main__')]; "
            "print(sorted(m.split('.')[2] for m in sys.modules if m.startswith('export.contract.')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    setup = (ROOT / "client" / "setup.py").read_text()
    shipped = set(json.loads(setup.split("CONTRACT = ")[1].split("\n")[0].replace("(", "[").replace(")", "]")
                             .replace("'", '"'))) - {"__init__"}
    assert set(json.loads(r.stdout.replace("'", '"'))) == shipped


@pytest.mark.server
def test_a_fresh_venv_with_only_the_wheel_runs_turns(wheel, server, tmp_path):
    from ensemble.avatar import demo_avatar_png

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout
    (tmp_path / "face.png").write_bytes(demo_avatar_png())
    (tmp_path / "run.py").write_text(SCRIPT)
    r = subprocess.run([str(py), "-I", str(tmp_path / "run.py"), server.options.grpc_url, str(tmp_path / "face.png")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not any(out["generic_names_importable"].values()), out["generic_names_importable"]
    assert out["sync_done"] and out["audio_samples"] > 0 and "VideoEvent" in out["sync_kinds"]
    assert out["status"] == "INVALID_ARGUMENT" and out["message"].startswith("invalid input:"), out
    assert out["async_done"] and out["async_text"] and out["turn_audio"] > 0
    installed = set(out["installed"])
    assert {"talking-head-client", "tritonclient", "numpy", "grpcio"} <= installed
    assert not installed & {"av", "opencv-python-headless", "soundfile", "torch", "locust", "onnxruntime"}, installed


def test_the_repository_itself_installs_no_generic_package():
    """The root pyproject.toml is the development checkout: `pip install -e .` (compat) only puts the checkout on
    sys.path, and a plain install copies no `client`, `export`, ... into site-packages (README.md)."""
    import tomllib

    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert root["tool"]["setuptools"]["packages"] == []
    assert "packages" not in root["tool"]["setuptools"].get("find", {})
    assert "editable_mode=compat" in (ROOT / "Makefile").read_text()
