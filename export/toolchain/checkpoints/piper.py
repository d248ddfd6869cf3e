"""A Piper voice (`<voice>.onnx` + `<voice>.onnx.json`) -> `export.toolchain.models.vits.VitsModel`.

Piper publishes voices as the ONNX export of SynthesizerTrn.infer (piper_train/export_onnx.py, opset 15), not
as PyTorch checkpoints. The weights are the graph's initializers, read with the `onnx` library:

* most keep their state-dict names (`enc_p.encoder.attn_layers.0.conv_q.weight`, `dp.flows.3.proj.bias`,
  `dec.ups.0.weight`, `flow.flows.0.pre.weight`, ...); the decoder's weight norm was removed before export;
* the flow's WN convolutions were exported with weight norm still on: their folded weight is an anonymous
  constant (`onnx::Conv_8240`); it is named after the Conv node's bias (`flow.flows.0.enc.in_layers.0.bias` ->
  `...in_layers.0.weight`);
* the phoneme embedding is whatever the Gather reading the `input` ids uses (the exporter names it `sid` in
  some voices, `enc_p.emb.weight` in others);
* `dp.flows.0.logs` is folded into exp(-logs) (the Mul after `Sub(x, dp.flows.0.m)`): logs = -log(that).

Dimensions come from the tensor shapes, upsample rates and residual-block dilations from the Conv /
ConvTranspose attributes, so x-low, low, medium and high voices load the same way. Multi-speaker voices
(a `sid` graph input, num_speakers > 1) are refused. The voice's sample rate must be the contract's TTS rate
(export/contract/media.py TTS_MEL, 22050 Hz) and prod(upsample_rates) its hop (256), else ContractError.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.contract import media
from export.contract.piper_voice import PiperVoiceConfig, VoiceConfigError, read_voice_config
from export.toolchain.checkpoints.common import CheckpointError, load_state_dict_strict
from export.toolchain.checkpoints.contract_check import ContractError
from export.toolchain.models.vits import VitsConfig, VitsModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PiperFiles:
    onnx: Path
    config: Path


def locate_piper(path: str | os.PathLike, config: str | os.PathLike | None = None) -> PiperFiles:
    """The voice's .onnx (given, or the only one in a folder) and its config (`<onnx>.json` beside it, or
    `config.json`, or given)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.onnx"))
        if len(found) != 1:
            raise CheckpointError(f"{p}: {'no' if not found else len(found)} .onnx files in this folder; "
                                  f"pass the voice file ({[f.name for f in found]})")
        p = found[0]
    elif not p.is_file():
        raise CheckpointError(f"{p}: no such file or folder (a Piper voice is <name>.onnx + <name>.onnx.json)")
    if config is None:
        for cand in (p.with_name(p.name + ".json"), p.with_name("config.json")):
            if cand.is_file():
                config = cand
                break
        else:
            raise CheckpointError(f"{p}: no {p.name}.json (or config.json) beside it: Piper's voice config holds "
                                  f"the phoneme table and sample rate; pass config=")
    cfg = Path(config)
    if not cfg.is_file():
        raise CheckpointError(f"{cfg}: no such file (given as the Piper voice config)")
    return PiperFiles(p, cfg)


# ---------------------------------------------------------------- the ONNX graph

@dataclass
class PiperGraph:
    """What the loader takes from the graph: named weights and the layer attributes the shapes cannot tell."""

    weights: dict[str, np.ndarray]  # module parameter name -> array
    strides: dict[str, int]  # "dec.ups.0" -> ConvTranspose stride
    dilations: dict[str, int]  # "dec.resblocks.0.convs.1" / "flow.flows.0.enc.in_layers.1" -> Conv dilation
    inputs: list[str]  # graph input names


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def read_piper_graph(path: Path) -> PiperGraph:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError: not an ONNX file
        raise CheckpointError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    weights: dict[str, np.ndarray] = {}
    strides: dict[str, int] = {}
    dilations: dict[str, int] = {}
    for name in inits:
        if re.match(r"^(enc_p|dp|flow|dec|emb_g)\.", name):
            weights[name] = array(name)
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in g.node:
        if n.op_type not in ("Conv", "ConvTranspose") or len(n.input) < 2:
            continue
        w = n.input[1]
        layer = None
        if len(n.input) > 2 and n.input[2].endswith(".bias"):
            layer = n.input[2][: -len(".bias")]
        elif w.endswith(".weight"):
            layer = w[: -len(".weight")]
        if layer is None:
            continue
        if w in inits and not w.endswith(".weight"):
            weights[layer + ".weight"] = array(w)  # weight norm folded into an anonymous constant
        elif w not in inits and w in producers:
            raise CheckpointError(f"{path}: the weight of {layer} is computed in the graph ({producers[w].op_type}), "
                                  f"not stored: a voice exported with weight norm unfolded is not supported")
        stride, dilation = _attr(n, "strides", [1])[0], _attr(n, "dilations", [1])[0]
        if n.op_type == "ConvTranspose":
            strides[layer] = int(stride)
        dilations[layer] = int(dilation)
    if "enc_p.emb.weight" not in weights:
        ids_input = g.input[0].name if g.input else "input"
        emb = [n for n in consumers.get(ids_input, []) if n.op_type == "Gather" and n.input[0] in inits]
        if len(emb) != 1:
            raise CheckpointError(f"{path}: no phoneme embedding (a Gather of an initializer by the "
                                  f"{ids_input!r} ids): not a Piper VITS export")
        weights["enc_p.emb.weight"] = array(emb[0].input[0])
    if "dp.flows.0.logs" not in weights and "dp.flows.0.m" in inits:
        subs = [n for n in consumers.get("dp.flows.0.m", []) if n.op_type == "Sub"]
        muls = [m for s in subs for m in consumers.get(s.output[0], []) if m.op_type == "Mul"]
        consts = [i for m in muls for i in m.input if i in inits]
        if len(consts) != 1:
            raise CheckpointError(f"{path}: cannot find exp(-dp.flows.0.logs) after Sub(., dp.flows.0.m)")
        weights["dp.flows.0.logs"] = -np.log(array(consts[0]).astype(np.float64)).astype(np.float32)
    return PiperGraph(weights, strides, dilations, [i.name for i in g.input])


# ---------------------------------------------------------------- the architecture

def _count(weights: dict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over the weight names."""
    return sorted({int(m.group(1)) for k in weights if (m := re.match(pattern, k))})


def _shape(weights: dict, name: str, source: str) -> tuple[int, ...]:
    if name not in weights:
        raise CheckpointError(f"{source}: no {name}: not a Piper VITS voice (or an unsupported variant)")
    return tuple(weights[name].shape)


def config_from_graph(graph: PiperGraph, voice: PiperVoiceConfig, source: str) -> VitsConfig:
    w = graph.weights
    if "sid" in graph.inputs or voice.num_speakers > 1 or "emb_g.weight" in w or "dec.cond.weight" in w:
        raise CheckpointError(f"{source}: a multi-speaker voice ({voice.num_speakers} speakers); only single-speaker "
                              f"Piper voices are supported")
    n_vocab, hidden = _shape(w, "enc_p.emb.weight", source)
    inter = _shape(w, "enc_p.proj.weight", source)[0] // 2
    filt, _, kernel = _shape(w, "enc_p.encoder.ffn_layers.0.conv_1.weight", source)
    _, n_rel, k_ch = _shape(w, "enc_p.encoder.attn_layers.0.emb_rel_k", source)
    layers = _count(w, r"enc_p\.encoder\.attn_layers\.(\d+)\.")
    dp_ch, _, dp_k = _shape(w, "dp.convs.convs_sep.0.weight", source)
    dp_flows = _count(w, r"dp\.flows\.(\d+)\.")
    bins3 = _shape(w, f"dp.flows.{dp_flows[-1]}.proj.weight", source)[0]
    flows = _count(w, r"flow\.flows\.(\d+)\.")
    wn_layers = _count(w, r"flow\.flows\.0\.enc\.in_layers\.(\d+)\.")
    flow_k = _shape(w, "flow.flows.0.enc.in_layers.0.weight", source)[2]
    ups = _count(w, r"dec\.ups\.(\d+)\.")
    blocks = _count(w, r"dec\.resblocks\.(\d+)\.")
    resblock = "1" if any(".convs1." in k for k in w) else "2"
    if not ups or len(blocks) % len(ups):
        raise CheckpointError(f"{source}: {len(blocks)} decoder residual blocks for {len(ups)} upsampling layers")
    n_kernels = len(blocks) // len(ups)
    conv = "convs1" if resblock == "1" else "convs"
    rk, rd = [], []
    for j in range(n_kernels):
        rk.append(_shape(w, f"dec.resblocks.{j}.{conv}.0.weight", source)[2])
        convs = _count(w, rf"dec\.resblocks\.{j}\.{conv}\.(\d+)\.")
        rd.append(tuple(graph.dilations.get(f"dec.resblocks.{j}.{conv}.{i}", 1) for i in convs))
    missing_strides = [i for i in ups if f"dec.ups.{i}" not in graph.strides]
    if missing_strides:
        raise CheckpointError(f"{source}: no ConvTranspose node for dec.ups {missing_strides}")
    flow_dil = graph.dilations.get("flow.flows.0.enc.in_layers.1", 1) if len(wn_layers) > 1 else 1
    if dp_ch != hidden:
        raise CheckpointError(f"{source}: duration predictor width {dp_ch} != hidden width {hidden} "
                              f"(Piper's SDP uses filter_channels = in_channels)")
    if (bins3 + 1) % 3 or dp_flows[0] != 0 or len(dp_flows) < 2:
        raise CheckpointError(f"{source}: unexpected stochastic duration predictor (flows {dp_flows}, "
                              f"proj {bins3} rows)")
    return VitsConfig(
        n_vocab=n_vocab, hidden_channels=hidden, inter_channels=inter, filter_channels=filt,
        n_heads=hidden // k_ch, n_layers=len(layers), kernel_size=kernel, window_size=(n_rel - 1) // 2,
        dp_kernel_size=dp_k, dp_n_flows=(dp_flows[-1] + 1) // 2, dp_num_bins=(bins3 + 1) // 3,
        flow_kernel_size=flow_k, flow_dilation_rate=flow_dil, flow_n_layers=len(wn_layers),
        flow_n_flows=len(flows), resblock=resblock, resblock_kernel_sizes=tuple(rk),
        resblock_dilation_sizes=tuple(rd), upsample_rates=tuple(graph.strides[f"dec.ups.{i}"] for i in ups),
        upsample_initial_channel=_shape(w, "dec.conv_pre.weight", source)[0],
        upsample_kernel_sizes=tuple(_shape(w, f"dec.ups.{i}.weight", source)[2] for i in ups),
        sample_rate=voice.sample_rate)


def check_contract(config: VitsConfig, voice: PiperVoiceConfig, source: str) -> None:
    problems = []
    if voice.sample_rate != media.TTS_MEL.sample_rate:
        problems.append(f"sample rate {voice.sample_rate} Hz (audio.sample_rate in {voice.path}) != the contract's "
                        f"{media.TTS_MEL.sample_rate} Hz (export/contract/media.py TTS_MEL)")
    if config.hop_length != media.TTS_MEL.hop_length:
        problems.append(f"prod(upsample_rates {config.upsample_rates}) = {config.hop_length} samples per latent "
                        f"frame != the contract's hop {media.TTS_MEL.hop_length}")
    if problems:
        raise ContractError(f"{source}: " + "; ".join(problems))


def load_piper_voice(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
                     check: bool = True, dtype: torch.dtype = torch.float32) -> VitsModel:
    """VitsModel (eval) from a Piper voice file or a folder holding one. The module carries `.voice`
    (PiperVoiceConfig) and `.checkpoint_files` (PiperFiles). check: raise ContractError off the contract."""
    files = locate_piper(path, config)
    try:
        voice = read_voice_config(files.config)
    except VoiceConfigError as e:
        raise CheckpointError(str(e)) from e
    graph = read_piper_graph(files.onnx)
    source = str(files.onnx)
    cfg = config_from_graph(graph, voice, source)
    if cfg.n_vocab != voice.num_symbols:
        raise CheckpointError(f"{source}: the embedding has {cfg.n_vocab} rows but {files.config} says num_symbols "
                              f"{voice.num_symbols}: the config belongs to another voice")
    if check:
        check_contract(cfg, voice, source)
    model = VitsModel(cfg)
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in graph.weights.items()}
    unused = [k for k in state if k.startswith(("dp.flows.1.", "dp.post_", "enc_q."))]  # training-only modules
    load_state_dict_strict(model, state, source=source, ignore=unused)
    model = model.to(dtype).eval()
    model.voice = voice
    model.checkpoint_files = files
    log.info("%s: Piper VITS %s, %.1f M parameters, %d Hz", source, voice.quality or "voice",
             sum(p.numel() for p in model.parameters()) / 1e6, voice.sample_rate)
    return model


__all__ = ["ContractError", "PiperFiles", "PiperGraph", "check_contract", "config_from_graph", "load_piper_voice",
           "locate_piper", "read_piper_graph"]
