"""The load generator image, built without Docker: its exact install set in a fresh venv, its files, its commands.

deploy/Dockerfile's `loadgen` stage installs `requirements-load.txt` (plus the numpy pin every stage repeats) and
copies client/, ensemble/, export/ and loadtests/ into /opt/loadgen. This test parses those lines, makes the same
thing in a temporary folder (a fresh venv with only that install set, pip's cache reused; a copy of only those
folders, no repository root on the path), and runs the image's commands from it: the headless run
(`python -m loadtests.run`, which starts `locust -f loadtests/locustfile.py` as the image's entrypoint does) for a few
seconds against the test server, and the default command's `locust -f loadtests/locustfile.py --help`. About a minute
with a warm pip cache.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from manifests import ROOT, compose, dockerfile_stages

pytestmark = pytest.mark.server


def loadgen_stage() -> dict:
    return dockerfile_stages()["loadgen"]


def image_pip_args() -> list[str]:
    """The arguments of the stage's `pip install` (one RUN; `&&`-chained checks after it dropped)."""
    (line,) = [x for x in loadgen_stage()["lines"] if re.search(r"\bpip install\b", x)]
    words = shlex.split(line.split("&&")[0])
    return words[words.index("install") + 1:]


def image_folders() -> list[str]:
    out = []
    for line in loadgen_stage()["lines"]:
        m = re.fullmatch(r"COPY --from=src /src/(\w+)/ (\w+)/", line)
        if m:
            assert m.group(1) == m.group(2), line
            out.append(m.group(1))
    return out


def test_the_image_installs_requirements_load_txt_only():
    args = image_pip_args()
    assert args == ["numpy==1.26.4", "-r", "requirements-load.txt"], args
    assert "COPY requirements-load.txt ./" in loadgen_stage()["lines"]
    assert set(image_folders()) == {"client", "ensemble", "export", "loadtests"}  # no deploy/: nothing may need it


def test_one_locust_version_everywhere():
    """requirements-load.txt is the single source: the developer venv runs its locust, the Dockerfile names none."""
    from importlib.metadata import version  # never `import locust` here: it monkey-patches the test process

    pins = dict(re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", (ROOT / "requirements-load.txt").read_text(), re.M))
    assert pins["locust"] == version("locust")
    assert not [x for x in loadgen_stage()["lines"] if "locust==" in x]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(python of a fresh venv with the image's install set, the /opt/loadgen copy)."""
    base = tmp_path_factory.mktemp("loadgen-image")
    venv, app = base / "venv", base / "opt-loadgen"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *image_pip_args()],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    for folder in image_folders():
        shutil.copytree(ROOT / folder, app / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))
    (app / "results").mkdir()
    return py, app


def image_env(app: Path) -> dict[str, str]:
    """The image's ENV (PYTHONPATH, LOADTEST_OUT) and nothing of this repository on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PYTHONPATH": str(app), "PYTHONDONTWRITEBYTECODE": "1", "LOADTEST_OUT": str(app / "results" / "load")}


def test_the_install_set_is_the_pinned_one(image):
    py, _ = image
    code = "import numpy, locust, tritonclient.grpc, skimage; print(numpy.__version__, locust.__version__)"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["1.26.4", "2.18.4"], r.stdout + r.stderr


def test_the_default_command_loads_its_locustfile(image):
    """The entrypoint `locust` with compose's arguments (`-f loadtests/locustfile.py ...`): --help parses the
    locustfile, its imports and its own options."""
    py, app = image
    cmd = compose()["services"]["locust"]["command"]
    r = subprocess.run([str(py.parent / "locust"), *cmd, "--help"], cwd=app, env=image_env(app),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "--speech-ratio" in r.stdout and "--turn-options" in r.stdout


def test_the_headless_command_runs_turns_against_the_server(image, server):
    """deploy/README.md's headless / in-cluster command, for a few seconds, from the image's files only: spoken and
    typed turns, the demo avatar (scikit-image), espeak-ng questions; results under $LOADTEST_OUT."""
    py, app = image
    r = subprocess.run([str(py), "-m", "loadtests.run", "--host", server.options.grpc_url, "--users", "2",
                        "--spawn-rate", "2", "--duration", "6s", "--turns", "2", "--think", "0.1,0.2",
                        "--stop-timeout", "60", "--fail-on-error"], cwd=app, env=image_env(app),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((app / "results" / "load_summary.json").read_text())
    assert summary["completed"] >= 2 and summary["failed"] == 0, summary["failures"]
    assert summary["by_kind"]["speech"]["turns"] >= 1 or summary["by_kind"]["text"]["turns"] >= 2
    with open(app / "results" / "load_stats.csv") as f:
        assert any(line.startswith("TTFA,") for line in f), "TTFA rows in locust's CSV"
