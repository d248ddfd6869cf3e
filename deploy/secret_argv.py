"""The admin key off tritonserver's command line: Triton 2.51 takes it only in a flag, which `ps` and
/proc/PID/cmdline show to every local user. `hide` puts a placeholder there instead and has deploy/secret_argv.c
(preloaded, built here with the C compiler or prebuilt in the image: HIDE_ARGV_LIB) swap the key in from its
0600 file before tritonserver's main() reads its arguments (RELIABILITY.md, "Restricted admin APIs").
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PLACEHOLDER = "@SECRET_ARGV@"
FILE_ENV = "SECRET_ARGV_FILE"  # the file the library reads the secret from
LIBRARY_ENV = "HIDE_ARGV_LIB"  # a prebuilt library (deploy/Dockerfile builds one); else built on first use
SOURCE = Path(__file__).with_name("secret_argv.c")
LIBRARY = "libsecret_argv.so"


class Unavailable(RuntimeError):
    """The library cannot be had here (no C compiler, a build error, a prebuilt path that is not a file)."""


def library(build_dir: Path) -> Path:
    """The preloadable library: HIDE_ARGV_LIB's, or built from SOURCE into build_dir (once per source version)."""
    prebuilt = os.environ.get(LIBRARY_ENV)
    if prebuilt:
        if not Path(prebuilt).is_file():
            raise Unavailable(f"{LIBRARY_ENV}={prebuilt} is not a file")
        return Path(prebuilt)
    out = build_dir / hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12] / LIBRARY
    if out.is_file():
        return out
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise Unavailable(f"no C compiler ({os.environ.get('CC', 'cc')}) to build {SOURCE.name}; "
                          f"set {LIBRARY_ENV} to a prebuilt {LIBRARY}")
    tmp = out.with_name(LIBRARY + f".{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        built = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(SOURCE)],
                               capture_output=True, text=True)
        if built.returncode:
            raise Unavailable(f"building {SOURCE.name} failed: {built.stderr.strip()[-500:]}")
        tmp.replace(out)
    except OSError as e:
        raise Unavailable(f"building {SOURCE.name} in {out.parent}: {e}") from e
    return out


def hide(command: list[str], env: dict[str, str], secret: str | None, secret_file: Path,
         build_dir: Path) -> tuple[list[str], dict[str, str]]:
    """`command` with `secret` replaced by the placeholder and the environment that swaps it back in at start
    (`secret_file` must hold it, mode 0600). Unchanged when there is no secret; when the library cannot be had,
    unchanged too, with a warning on stderr saying why (the secret is then on the command line)."""
    if not secret or not any(secret in arg for arg in command):
        return command, env
    try:
        lib = library(build_dir)
    except Unavailable as e:
        print(f"warning: the admin key stays on tritonserver's command line (visible in ps): {e}", file=sys.stderr)
        return command, env
    env = dict(env)
    env[FILE_ENV] = str(secret_file)
    env["LD_PRELOAD"] = ":".join(filter(None, [str(lib), env.get("LD_PRELOAD")]))
    return [arg.replace(secret, PLACEHOLDER) for arg in command], env
