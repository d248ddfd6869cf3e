"""ming024/FastSpeech2 checkpoints -> `export.toolchain.models.fastspeech2.FastSpeech2`.

The layout ming024's train.py writes (and its released LJSpeech / AISHELL3 / LibriTTS models use):

* `output/ckpt/LJSpeech/900000.pth.tar`: `torch.save({"model": model.state_dict(), "optimizer": ...})`
  (read with `weights_only=True`); the state-dict names are ours (`encoder.src_word_emb.weight`,
  `encoder.position_enc`, `variance_adaptor.pitch_bins`, `postnet.convolutions.0.1.running_mean`, ...).
* `config/LJSpeech/model.yaml`: transformer (encoder_layer, encoder_head, encoder_hidden,
  decoder_layer, decoder_head, decoder_hidden, conv_filter_size, conv_kernel_size),
  variance_predictor (filter_size, kernel_size), variance_embedding (pitch_quantization,
  energy_quantization, n_bins), multi_speaker, max_seq_len.
* `config/LJSpeech/preprocess.yaml`: preprocessing.audio.sampling_rate, stft (filter_length,
  hop_length, win_length), mel (n_mel_channels, mel_fmin, mel_fmax), pitch/energy feature level;
  path.lexicon_path (the g2p lexicon).
* `preprocessed_data/LJSpeech/stats.json`: {"pitch": [min, max, mean, std], "energy": [...]}, which
  ming024 turns into the quantization bins (they are also in the state dict, which wins).

`load_fastspeech2(path)` takes the checkpoint file, or a folder holding one `*.pth.tar` (the highest
step when there are several), with model.yaml / preprocess.yaml / stats.json / a `*lexicon*.txt`
beside it or given by keyword. Without model.yaml the dimensions are read from the tensor shapes
(the attention head count is not in any shape: ming024's 2 is assumed, and said). The model's
dimensions always come from the checkpoint, never from a preset.

What our module cannot compute the same way is a CheckpointError: multi-speaker models (a
speaker embedding), frame-level pitch/energy, a symbol table other than ming024's 361 symbols.
The audio settings of preprocess.yaml are checked against export/contract/media.py (ContractError).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from export.contract import text_frontend
from export.contract.presets import FastSpeech2Config
from export.toolchain.checkpoints.common import (
    CheckpointError,
    load_state_dict_strict,
    read_json,
    read_torch,
    unwrap_state_dict,
)
from export.toolchain.checkpoints.contract_check import AudioSettings, check_tts_audio, tts_audio_from_preprocess
from export.toolchain.models.fastspeech2 import FastSpeech2

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".ckpt", ".tar")
DEFAULT_HEADS = 2  # ming024's model.yaml for LJSpeech, AISHELL3 and LibriTTS


@dataclass(frozen=True)
class FastSpeech2Files:
    checkpoint: Path
    model_yaml: Path | None = None
    preprocess_yaml: Path | None = None
    stats_json: Path | None = None
    lexicon: Path | None = None

    def all(self) -> list[Path]:
        return [p for p in (self.checkpoint, self.model_yaml, self.preprocess_yaml, self.stats_json, self.lexicon)
                if p is not None]


def read_yaml(path: str | os.PathLike) -> dict:
    try:
        import yaml
    except ImportError:
        raise CheckpointError(f"{path}: reading ming024's YAML configs needs PyYAML (pip install PyYAML)") from None
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: cannot read YAML ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def _step(p: Path) -> int:
    m = re.match(r"(\d+)", p.name)
    return int(m.group(1)) if m else -1


def _find_lexicon(checkpoint: Path, preprocess_yaml: Path | None, preprocess: dict | None) -> Path | None:
    found = sorted(checkpoint.parent.glob("*lexicon*.txt"))
    if found:
        return found[0]
    rel = ((preprocess or {}).get("path") or {}).get("lexicon_path")
    if rel and preprocess_yaml is not None:
        rel = Path(rel)
        if rel.is_absolute():
            return rel if rel.is_file() else None
        for base in [preprocess_yaml.parent, *preprocess_yaml.parent.parents][:4]:  # config/LJSpeech/ -> repo root
            if (base / rel).is_file():
                return base / rel
    return None


def locate_fastspeech2(path: str | os.PathLike, *, model_yaml=None, preprocess_yaml=None, stats=None,
                       lexicon=None) -> FastSpeech2Files:
    """The checkpoint and the config files that go with it (given, else beside it)."""
    p = Path(path)
    if p.is_dir():
        ckpts = [f for f in p.iterdir() if f.is_file() and f.name.endswith(CHECKPOINT_SUFFIXES)]
        if not ckpts:
            raise CheckpointError(f"{p}: no ming024 FastSpeech2 checkpoint (*.pth.tar) in this folder")
        if len(ckpts) > 1:
            stepped = sorted((f for f in ckpts if _step(f) >= 0), key=_step)
            if not stepped:
                raise CheckpointError(f"{p}: several checkpoints ({sorted(f.name for f in ckpts)}); pass one")
            log.info("%s: %d checkpoints, using the highest step %s", p, len(ckpts), stepped[-1].name)
            ckpts = [stepped[-1]]
        p = ckpts[0]
    elif not p.is_file():
        raise CheckpointError(f"{p}: no such file or folder")

    def pick(given, name: str) -> Path | None:
        if given is not None:
            if not Path(given).is_file():
                raise CheckpointError(f"{given}: no such file (given as the FastSpeech2 {name})")
            return Path(given)
        return p.parent / name if (p.parent / name).is_file() else None

    pre = pick(preprocess_yaml, "preprocess.yaml")
    lex = pick(lexicon, "lexicon") if lexicon is not None else _find_lexicon(p, pre, read_yaml(pre) if pre else None)
    return FastSpeech2Files(p, pick(model_yaml, "model.yaml"), pre, pick(stats, "stats.json"), lex)


def read_fastspeech2_state_dict(file: Path) -> dict[str, Tensor]:
    """The `model` state dict of a ming024 checkpoint (a bare state dict is accepted too)."""
    return unwrap_state_dict(read_torch(file), file, ("model", "state_dict"),
                             "a ming024 FastSpeech2 checkpoint is {'model': state_dict, 'optimizer': ...}")


def _count(sd: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _shape(sd: dict, key: str, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{source}: {key} is missing, so this is not a ming024 FastSpeech2 state dict")
    return tuple(sd[key].shape)


def config_from_ming024(sd: dict[str, Tensor], model_cfg: dict | None, preprocess_cfg: dict | None,
                        source: str) -> FastSpeech2Config:
    """FastSpeech2Config from model.yaml / preprocess.yaml where given, the tensor shapes otherwise.

    The symbol count and the postnet (fixed in ming024's code, not in its configs) always come from
    the shapes; a config value that disagrees with a shape shows up as a shape mismatch when loading.
    """
    emb = _shape(sd, "encoder.src_word_emb.weight", source)
    w1 = _shape(sd, "encoder.layer_stack.0.pos_ffn.w_1.weight", source)
    w2 = _shape(sd, "encoder.layer_stack.0.pos_ffn.w_2.weight", source)
    vp = _shape(sd, "variance_adaptor.duration_predictor.conv_layer.conv1d_1.conv.weight", source)
    post0 = _shape(sd, "postnet.convolutions.0.0.conv.weight", source)
    inferred = dict(
        n_symbols=emb[0], encoder_layer=_count(sd, "encoder.layer_stack."), encoder_head=DEFAULT_HEADS,
        encoder_hidden=emb[1], decoder_layer=_count(sd, "decoder.layer_stack."), decoder_head=DEFAULT_HEADS,
        decoder_hidden=_shape(sd, "mel_linear.weight", source)[1], conv_filter_size=w1[0],
        conv_kernel_size=(w1[2], w2[2]), variance_predictor_filter_size=vp[0], variance_predictor_kernel_size=vp[2],
        n_bins=_shape(sd, "variance_adaptor.pitch_embedding.weight", source)[0],
        max_seq_len=_shape(sd, "encoder.position_enc", source)[1] - 1,
        n_mel_channels=_shape(sd, "mel_linear.weight", source)[0],
        postnet_embedding_dim=post0[0], postnet_kernel_size=post0[2],
        postnet_n_convolutions=_count(sd, "postnet.convolutions."))
    problems = []
    if model_cfg is None:
        log.warning("%s: no model.yaml; dimensions read from the tensor shapes, attention heads assumed %d "
                    "(ming024's; no shape shows them)", source, DEFAULT_HEADS)
        values = inferred
    else:
        t = model_cfg.get("transformer") or {}
        vp_cfg = model_cfg.get("variance_predictor") or {}
        ve = model_cfg.get("variance_embedding") or {}
        values = dict(inferred)
        for ours, (section, key) in {
                "encoder_layer": (t, "encoder_layer"), "encoder_head": (t, "encoder_head"),
                "encoder_hidden": (t, "encoder_hidden"), "decoder_layer": (t, "decoder_layer"),
                "decoder_head": (t, "decoder_head"), "decoder_hidden": (t, "decoder_hidden"),
                "conv_filter_size": (t, "conv_filter_size"), "conv_kernel_size": (t, "conv_kernel_size"),
                "variance_predictor_filter_size": (vp_cfg, "filter_size"),
                "variance_predictor_kernel_size": (vp_cfg, "kernel_size"), "n_bins": (ve, "n_bins"),
                "max_seq_len": (model_cfg, "max_seq_len")}.items():
            if key in section and section[key] is not None:
                values[ours] = tuple(int(x) for x in section[key]) if ours == "conv_kernel_size" else int(section[key])
        if model_cfg.get("multi_speaker"):
            problems.append("multi_speaker: true (export/toolchain/models/fastspeech2.py has no speaker embedding; "
                            "the TTS spec takes no speaker id)")
        if (model_cfg.get("gst") or {}).get("use_gst"):
            problems.append("gst.use_gst: true (no global style tokens in our module)")
        for q in ("pitch_quantization", "energy_quantization"):
            if ve.get(q, "linear") not in ("linear", "log"):
                problems.append(f"variance_embedding.{q}: {ve[q]!r} (ming024 knows 'linear' and 'log')")
        if values["encoder_hidden"] % values["encoder_head"] or values["decoder_hidden"] % values["decoder_head"]:
            problems.append("encoder/decoder hidden size not a multiple of its head count")
    if preprocess_cfg is not None:
        pre = preprocess_cfg.get("preprocessing") or {}
        for var in ("pitch", "energy"):
            level = (pre.get(var) or {}).get("feature", "phoneme_level")
            if level != "phoneme_level":
                problems.append(f"preprocessing.{var}.feature: {level!r} (our variance adaptor predicts "
                                f"phoneme-level {var}, as ming024's LJSpeech model)")
        lang = (pre.get("text") or {}).get("language", "en")
        if lang != "en":
            log.warning("%s: preprocess.yaml says language %r; export/contract/g2p.py is an English front end", source, lang)
        n_mels = (pre.get("mel") or {}).get("n_mel_channels")
        if n_mels is not None:
            values["n_mel_channels"] = int(n_mels)
    if values["n_symbols"] != text_frontend.N_SYMBOLS:
        problems.append(f"encoder.src_word_emb.weight has {values['n_symbols']} rows, ming024's symbol table "
                        f"(export/contract/text_frontend.py) has {text_frontend.N_SYMBOLS}: trained with another symbol table")
    if "speaker_emb.weight" in sd and not any("multi_speaker" in p for p in problems):
        problems.append("speaker_emb.weight present: a multi-speaker model (not supported)")
    if problems:
        raise CheckpointError(f"{source}: unsupported FastSpeech2 variant: " + "; ".join(problems))
    return FastSpeech2Config(**values)


def _bins(stats: list, n_bins: int, quantization: str) -> Tensor:
    lo, hi = float(stats[0]), float(stats[1])
    if quantization == "log":
        return torch.exp(torch.linspace(math.log(lo), math.log(hi), n_bins - 1))
    return torch.linspace(lo, hi, n_bins - 1)


def _apply_stats(sd: dict, stats_file: Path, model_cfg: dict | None, n_bins: int, source: str) -> None:
    """Fill pitch_bins / energy_bins from stats.json when the state dict lacks them; warn when they disagree."""
    stats = read_json(stats_file)
    ve = (model_cfg or {}).get("variance_embedding") or {}
    for var in ("pitch", "energy"):
        if not isinstance(stats.get(var), list) or len(stats[var]) < 2:
            raise CheckpointError(f"{stats_file}: no '{var}': [min, max, mean, std]")
        bins = _bins(stats[var], n_bins, ve.get(f"{var}_quantization", "linear"))
        key = f"variance_adaptor.{var}_bins"
        if key not in sd:
            sd[key] = bins
        elif sd[key].shape == bins.shape and not torch.allclose(sd[key].float(), bins, rtol=1e-4, atol=1e-4):
            log.warning("%s: %s differs from the bins %s implies; using the checkpoint's", source, key, stats_file)


def load_fastspeech2(path: str | os.PathLike, *, model_yaml: str | os.PathLike | None = None,
                     preprocess_yaml: str | os.PathLike | None = None, stats: str | os.PathLike | None = None,
                     lexicon: str | os.PathLike | None = None, check_contract: bool = True,
                     dtype: torch.dtype = torch.float32) -> FastSpeech2:
    """FastSpeech2 in eval mode from a ming024 checkpoint (a local `.pth.tar`, or a folder holding one;
    export/toolchain/weights.py fetches hub ids).

    The returned module carries `.checkpoint_files` (FastSpeech2Files: what was read, the lexicon
    for export/contract/g2p.py included) and `.audio_settings` (AudioSettings from preprocess.yaml, or only
    the mel count from the shapes when there is no preprocess.yaml).
    check_contract: raise ContractError when preprocess.yaml disagrees with export/contract/media.py TTS_MEL.
    """
    files = locate_fastspeech2(path, model_yaml=model_yaml,
                               preprocess_yaml=preprocess_yaml, stats=stats, lexicon=lexicon)
    source = str(files.checkpoint)
    model_cfg = read_yaml(files.model_yaml) if files.model_yaml else None
    pre_cfg = read_yaml(files.preprocess_yaml) if files.preprocess_yaml else None
    sd = read_fastspeech2_state_dict(files.checkpoint)
    config = config_from_ming024(sd, model_cfg, pre_cfg, source)
    if files.preprocess_yaml is not None:
        audio = tts_audio_from_preprocess(pre_cfg, str(files.preprocess_yaml))
    else:
        log.warning("%s: no preprocess.yaml beside it; only the mel count (%d, from mel_linear.weight) can be "
                    "checked against the audio contract", source, config.n_mel_channels)
        audio = AudioSettings("TTS", "", {"n_mels": config.n_mel_channels},
                              {"n_mels": f"{source}: mel_linear.weight rows"}, complete=False)
    if check_contract:
        check_tts_audio(tts=audio)
    if files.stats_json is not None:
        _apply_stats(sd, files.stats_json, model_cfg, config.n_bins, source)
    model = FastSpeech2(config)
    for key, value in model.state_dict().items():  # checkpoints from before BatchNorm counted batches
        if key.endswith(".num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
    load_state_dict_strict(model, sd, source=source)
    model = model.to(dtype).eval()
    model.checkpoint_files = files
    model.audio_settings = audio
    return model
