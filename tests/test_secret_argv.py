"""deploy/secret_argv: a secret reaches a program's main() but not its /proc/PID/cmdline (the admin key and
tritonserver; tests/test_tls.py checks the real server). The library runs for real, preloaded into Python: its
sys.argv comes from main()'s argv, /proc/self/cmdline from the original argument memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import secret_argv

SECRET = "s3cret-KEY_0123456789abcdef"
SHOW = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'cmdline': open('/proc/self/cmdline', 'rb')"
        ".read().decode(), 'file': os.environ.get('SECRET_ARGV_FILE'), 'preload': os.environ.get('LD_PRELOAD')}))")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return secret_argv.library(tmp_path_factory.mktemp("secret_argv"))


def _key_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "admin-key"
    path.write_text(text)
    path.chmod(0o600)
    return path


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_the_program_reads_the_secret_and_its_command_line_shows_the_placeholder(tmp_path, built, monkeypatch):
    monkeypatch.setenv(secret_argv.LIBRARY_ENV, str(built))
    command = [sys.executable, "-c", SHOW, f"--grpc-restricted-protocol=statistics:admin-key={SECRET}", "--plain",
               f"--http-restricted-api=inference:admin-key={SECRET}"]
    env = {**os.environ, "LD_PRELOAD": "/nonexistent/other.so"}
    hidden, env = secret_argv.hide(command, env, SECRET, _key_file(tmp_path, SECRET + "\n"), tmp_path)
    assert SECRET not in " ".join(hidden) and secret_argv.PLACEHOLDER in hidden[3]
    out = _run(hidden, env)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["argv"] == command[3:]  # main() got the secret, in place
    assert SECRET not in seen["cmdline"] and seen["cmdline"].count(secret_argv.PLACEHOLDER) == 2  # ps does not
    assert seen["file"] is None  # children learn neither the file nor the library
    assert seen["preload"] == "/nonexistent/other.so"  # another preloaded library is kept


@pytest.mark.parametrize("content, why", [(None, "No such file"), ("\n", "holds no secret")])
def test_a_missing_or_empty_secret_file_stops_the_program_before_main(tmp_path, built, content, why, monkeypatch):
    monkeypatch.setenv(secret_argv.LIBRARY_ENV, str(built))
    path = tmp_path / "admin-key" if content is None else _key_file(tmp_path, content)
    hidden, env = secret_argv.hide([sys.executable, "-c", "print('main ran')", f"key={SECRET}"], dict(os.environ),
                                   SECRET, path, tmp_path)
    out = _run(hidden, env)
    assert out.returncode == 78 and "main ran" not in out.stdout and why in out.stderr


def test_without_a_secret_nothing_changes(tmp_path):
    command, env = ["tritonserver", "--model-repository=x"], {"PATH": "/bin"}
    assert secret_argv.hide(command, env, None, tmp_path / "k", tmp_path) == (command, env)
    assert secret_argv.hide(command, env, SECRET, tmp_path / "k", tmp_path) == (command, env)  # not in it


def test_without_a_compiler_the_secret_stays_and_a_warning_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(secret_argv.LIBRARY_ENV, raising=False)
    monkeypatch.setenv("CC", "no-such-compiler")
    command = ["tritonserver", f"--grpc-restricted-protocol=statistics:admin-key={SECRET}"]
    assert secret_argv.hide(command, {}, SECRET, tmp_path / "k", tmp_path / "fresh") == (command, {})
    assert "stays on tritonserver's command line" in capsys.readouterr().err


def test_a_prebuilt_library_that_is_not_there_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(secret_argv.LIBRARY_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(secret_argv.Unavailable, match="missing.so is not a file"):
        secret_argv.library(tmp_path)


def test_the_library_is_built_once_per_source_version(tmp_path, monkeypatch):
    monkeypatch.delenv(secret_argv.LIBRARY_ENV, raising=False)
    first = secret_argv.library(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert secret_argv.library(tmp_path) == first and first.stat().st_mtime_ns == mtime
