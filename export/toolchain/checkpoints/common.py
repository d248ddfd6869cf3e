"""Reading released checkpoints: where they are, how their tensors are stored, strict loading.

* `resolve(path_or_hub_id, allow_download)`: a local folder or file, or a Hugging Face Hub id
  (`openai/whisper-tiny`) fetched with `huggingface_hub.snapshot_download` (imported lazily;
  without it, or offline, a `CheckpointError` says to pass a local path).
* `read_state_dict(path)`: `model.safetensors`, sharded safetensors through
  `model.safetensors.index.json`, `pytorch_model.bin` (and its sharded index), or a single
  `.safetensors` / `.bin` / `.pt` file. Torch pickles are read with `weights_only=True`.
  Safetensors go through the `safetensors` package when it is installed, else through the
  small reader below (the format is an 8-byte header length, a JSON header, raw bytes).
* `load_state_dict_strict(module, state_dict, source=..., rename=..., ignore=...)`: every
  missing key, every unexpected key and every shape mismatch in one `CheckpointError`.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_SINGLE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_JSON = "tokenizer.json"

# what a hub download fetches: configs, tokenizer files, chat templates, safetensors weights
HUB_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model")
HUB_TORCH_PATTERNS = ("pytorch_model*.bin",)  # only when the repository has no safetensors


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read or loaded into our modules (the message says why)."""


# ----------------------------------------------------------------------------- locating

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def resolve(path_or_hub_id: str | os.PathLike, allow_download: bool = True, *,
            cache_dir: str | os.PathLike | None = None, revision: str | None = None) -> Path:
    """A local checkpoint folder/file as it is, or a hub id downloaded (safetensors + configs + tokenizer).

    Downloads only when `allow_download` and `huggingface_hub` is importable; with HF_HUB_OFFLINE=1
    only an already-cached snapshot is used. Every failure is a CheckpointError that says to pass
    a local path instead.
    """
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        return path
    name = str(path_or_hub_id)
    if not _HUB_ID.match(name):
        raise CheckpointError(f"{name}: no such file or folder (and it is not a Hugging Face Hub id "
                              f"like 'openai/whisper-tiny')")
    local_hint = (f"pass a local path instead: a folder holding config.json and the weights "
                  f"(e.g. made on a machine with a network by `hf download {name} --local-dir DIR`)")
    if not allow_download:
        raise CheckpointError(f"{name}: no such local file or folder, and downloading from the Hugging Face "
                              f"Hub is turned off; {local_hint}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{name}: no such local file or folder, and `huggingface_hub` is not installed "
                              f"to download it (pip install huggingface_hub); {local_hint}") from None
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")

    def fetch(patterns) -> Path:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                      allow_patterns=list(patterns)))

    try:
        folder = fetch(HUB_PATTERNS)
        if not any(folder.glob("*.safetensors")):
            folder = fetch(HUB_PATTERNS + HUB_TORCH_PATTERNS)
    except Exception as e:  # network, auth, missing repo, offline cache miss: all read the same to the user
        why = "offline (HF_HUB_OFFLINE) and not in the local cache" if offline else "download failed"
        raise CheckpointError(f"{name}: not a local path and {why} ({type(e).__name__}: {e}); "
                              f"{local_hint}") from e
    return folder


# ----------------------------------------------------------------------------- reading

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors_builtin(path: Path) -> dict[str, Tensor]:
    """The safetensors format without the package: u64 header size, JSON header, little-endian data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {key} has dtype {info['dtype']}, which this reader "
                                  f"does not handle (install `safetensors`)")
        begin, end = info["data_offsets"]
        shape = list(info["shape"])
        t = torch.frombuffer(data, dtype=dtype, count=(end - begin) // torch.empty((), dtype=dtype).element_size(),
                             offset=begin) if end > begin else torch.empty(0, dtype=dtype)
        out[key] = t.reshape(shape)
    return out


def _write_safetensors_builtin(tensors: Mapping[str, Tensor], path: Path, metadata: dict | None) -> None:
    names = {v: k for k, v in _ST_DTYPES.items()}
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for raw in blobs:
            f.write(raw)


def save_safetensors(tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write a safetensors file (the `safetensors` package when installed, else the same format by hand)."""
    path = Path(path)
    try:
        from safetensors.torch import save_file
    except ImportError:
        _write_safetensors_builtin(tensors, path, metadata)
        return
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    path = Path(path)
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    try:
        return load_file(str(path), device="cpu") if load_file is not None else _read_safetensors_builtin(path)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def read_torch(path: str | os.PathLike) -> object:
    """A torch pickle (.pt/.bin) with `weights_only=True`: tensors, dicts, lists, numbers, strings only."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint with weights_only=True "
                              f"({type(e).__name__}: {e})") from e


def unwrap_state_dict(ckpt: object, file: Path, keys: tuple[str, ...], layout: str, hint: str = "") -> dict[str, Tensor]:
    """The state dict inside a training checkpoint ({key: state_dict, "optimizer": ...}) or a bare
    state dict, without DataParallel's `module.` prefix. layout/hint describe the expected file."""
    sd = None
    if isinstance(ckpt, dict):
        sd = next((ckpt[k] for k in keys if isinstance(ckpt.get(k), dict)), None)
        if sd is None and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
            sd = ckpt
    if sd is None:
        got = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{file}: {layout}, this one has {got}{hint}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def _read_sharded(index_path: Path, read: Callable[[Path], Mapping[str, Tensor]]) -> dict[str, Tensor]:
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no 'weight_map' in the shard index")
    out: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard} is listed but {shard_path} does not exist")
        tensors = read(shard_path)
        for key in (k for k, s in weight_map.items() if s == shard):
            if key not in tensors:
                raise CheckpointError(f"{index_path}: {key} is mapped to {shard}, which does not hold it")
        out.update(tensors)
    return out


def _torch_state_dict(path: Path) -> dict[str, Tensor]:
    obj = read_torch(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat {{name: tensor}} state dict")
    return obj


def weight_files(folder: Path) -> list[Path]:
    """The weight files a HF-layout folder holds, in the order read_state_dict prefers them."""
    return [folder / n for n in (SAFETENSORS_INDEX, SAFETENSORS_SINGLE, TORCH_INDEX, TORCH_SINGLE)
            if (folder / n).is_file()]


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a checkpoint folder (HF layout, single or sharded) or of one weight file."""
    path = Path(path)
    if path.is_file():
        if path.name.endswith(".index.json"):
            read = read_safetensors if ".safetensors" in path.name else _torch_state_dict
            return _read_sharded(path, read)
        if path.suffix == ".safetensors":
            return read_safetensors(path)
        return _torch_state_dict(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or folder")
    found = weight_files(path)
    if not found:
        others = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" (it has {others}: pass one of them)" if others else ""
        raise CheckpointError(f"{path}: no {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, {TORCH_SINGLE} "
                              f"or {TORCH_INDEX}{hint}")
    return read_state_dict(found[0])


def load_tokenizer(path: str | os.PathLike):
    """`tokenizers.Tokenizer` from a tokenizer.json file, or from the one in a folder; None when absent."""
    path = Path(path)
    file = path / TOKENIZER_JSON if path.is_dir() else path
    if not file.is_file():
        return None
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:
        raise CheckpointError(f"{file}: cannot be read by the `tokenizers` library ({e})") from e


# ----------------------------------------------------------------------------- loading

def _shape(t) -> str:
    return "[" + ", ".join(str(int(d)) for d in t.shape) + "]"


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Tensor], *, source: str,
                           rename: Mapping[str, str] | Callable[[str], str] | None = None,
                           ignore: Iterable[str] = ()) -> nn.Module:
    """Copy a checkpoint into `module` or raise one CheckpointError listing every problem.

    rename: checkpoint key -> module key, a dict (keys it lacks pass unchanged) or a function.
    ignore: checkpoint keys (fnmatch patterns) dropped before matching (e.g. "*.rotary_emb.inv_freq").
    Compared against `module.state_dict()` (parameters and persistent buffers); values are cast
    to the module's dtypes. Shape mismatches read
    "model.layers.0.mlp.up_proj.weight: checkpoint has [4864, 896], model expects [4864, 64]".
    """
    ignore = tuple(ignore)
    if rename is None:
        to_model: Callable[[str], str] = lambda k: k  # noqa: E731
        to_ckpt: dict[str, str] = {}
    elif callable(rename):
        to_model, to_ckpt = rename, {}
    else:
        mapping = dict(rename)
        to_model = lambda k: mapping.get(k, k)  # noqa: E731
        to_ckpt = {v: k for k, v in mapping.items()}

    def label(ckpt_key: str, model_key: str) -> str:
        return ckpt_key if ckpt_key == model_key else f"{ckpt_key} (-> {model_key})"

    expected = module.state_dict()
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # module key -> the checkpoint key that claimed it
    unexpected, mismatched, duplicates = [], [], []
    for key, value in state_dict.items():
        if any(fnmatch.fnmatchcase(key, pat) for pat in ignore):
            continue
        target = to_model(key)
        if target in origin:
            duplicates.append(f"{key} and {origin[target]} both map to {target}")
            continue
        if target not in expected:
            unexpected.append(label(key, target))
            continue
        origin[target] = key
        if not isinstance(value, Tensor):
            mismatched.append(f"{label(key, target)}: checkpoint has a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(expected[target].shape):
            mismatched.append(f"{label(key, target)}: checkpoint has {_shape(value)}, "
                              f"model expects {_shape(expected[target])}")
        else:
            renamed[target] = value
    # a key whose tensor had the wrong shape is reported once, as a mismatch
    missing = [k if k not in to_ckpt else f"{k} (checkpoint key {to_ckpt[k]})"
               for k in expected if k not in origin]

    if missing or unexpected or mismatched or duplicates:
        parts = [f"cannot load {source} into {type(module).__name__}: {len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(mismatched)} shape mismatch"
                 f"{'es' if len(mismatched) != 1 else ''}"
                 + (f", {len(duplicates)} duplicate" if duplicates else "")]
        for title, items in (("missing (the model has them, the checkpoint does not)", missing),
                             ("unexpected (the checkpoint has them, the model does not)", unexpected),
                             ("shape mismatch", mismatched), ("duplicate", duplicates)):
            if items:
                parts.append(f"  {title}:")
                parts.extend(f"    {item}" for item in items)
        raise CheckpointError("\n".join(parts))
    module.load_state_dict(renamed, strict=True)
    return module

