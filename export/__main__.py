"""Export the stage models of a preset to ONNX in the model repository.

    python -m export --preset tiny           # the CPU demo's graphs (seconds)
    python -m export --preset base           # real model sizes (minutes, ~2.6 GB)
    python -m export --weights vocoder=LJ_V1 --weights llm=Qwen/Qwen2.5-0.5B-Instruct   # real checkpoints

Idempotent: a graph is skipped when its manifest says it was exported from the
same preset, seed and model code. Every graph is checked with onnx.checker and
compared with PyTorch through ONNX Runtime on fresh inputs (max relative error
printed; fp32 limit 1e-4). Weights are seeded random unless real checkpoints
are given with --weights FAMILY=PATH_OR_HUB_ID (asr, llm, tts, vocoder, lipsync;
repeatable; see export/toolchain/weights.py): such a family's dimensions then come from
its checkpoint, and its source (files, sizes, mtimes) is part of the up-to-date key.

The VAD stage is no PyTorch graph: its own step (export/toolchain/vad.py) wraps silero VAD's ONNX graph from
the silero-vad wheel and compares the wrapper with the original through ONNX Runtime.
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
from export.toolchain import onnx_export, vad, weights
from export.toolchain.checkpoints.common import CheckpointError
from export.toolchain.graphs import build_graphs, parameter_count

STAGE_NAMES = [s.name for s in spec.STAGES]
MODELS = STAGE_NAMES + [s.name for s in spec.INPUT_STAGES]  # what --models accepts: the PyTorch stages and the VAD


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model sizes (default: tiny)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="model repository to write into")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=MODELS, help="export only these stages")
    ap.add_argument("--force", action="store_true", help="export even when the manifest says up to date")
    ap.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    ap.add_argument("--weights", action="append", default=[], metavar="FAMILY=PATH_OR_HUB_ID",
                    help=f"real checkpoint for one family ({', '.join(weights.FAMILIES)}): a local file or folder, "
                         f"or a Hugging Face Hub id when a network is there; repeatable")
    ap.add_argument("--no-download", action="store_true", help="never download --weights hub ids (local paths only)")
    args = ap.parse_args(argv)
    try:
        weight_specs = weights.parse_weights_args(args.weights)
    except ValueError as e:
        ap.error(str(e))

    torch.set_num_threads(max(1, torch.get_num_threads()))
    preset = get_preset(args.preset)
    t_all = time.perf_counter()
    if not weight_specs:
        print(f"export: preset {preset.name} ({preset.notes}), seed {args.seed}; weights are SEEDED RANDOM"
              f" (no real checkpoints given), so speech, words and lips are noise", flush=True)
    else:
        print(f"export: preset {preset.name} ({preset.notes}), seed {args.seed}; loading real checkpoints for "
              f"{', '.join(weight_specs)}", flush=True)
    try:
        loaded = weights.load_weights(weight_specs, allow_download=not args.no_download)
    except CheckpointError as e:
        print(f"export: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if loaded:
        preset = weights.preset_from_checkpoints(preset, loaded)
        print(f"  weights: {weights.summary(loaded)}", flush=True)
    key_base = {"preset": preset.name, "seed": args.seed, "code": code_digest(), "opset": onnx_export.OPSET}

    def stage_key(n: str) -> dict:
        key = {**key_base, "model": n}
        real = weights.weights_key(weights.STAGE_FAMILY[n], loaded)
        if real is not None:
            key["weights"] = real
        return key

    failed = []
    if spec.VAD.name in args.models:
        try:
            print(vad.write_vad(args.repository, force=args.force, check_parity=not args.no_parity), flush=True)
        except vad.VadSourceMissing as e:
            print(f"export: {e}", file=sys.stderr)
            return 2
        except AssertionError as e:
            print(f"{e}", flush=True)
            failed.append(spec.VAD.name)
    todo = [n for n in args.models if n in STAGE_NAMES
            and (args.force or not up_to_date(args.repository / n / "1" / "export.json", stage_key(n)))]
    skipped = [n for n in args.models if n in STAGE_NAMES and n not in todo]
    if skipped:
        print(f"  up to date, skipped: {', '.join(skipped)}")
    if todo:
        t = time.perf_counter()
        graphs = build_graphs(preset, args.seed, todo, modules=weights.modules_of(loaded))
        print(f"  built {len(graphs)} PyTorch graph(s) in {time.perf_counter() - t:.1f} s", flush=True)
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
                save_weights(graph, folder, real=weights.STAGE_FAMILY[name] in loaded)
                (folder / "export.json").write_text(json.dumps({"key": stage_key(name)}, indent=2))
    tokenizer = {fam: loaded[fam].tokenizer_file if fam in loaded else None for fam in ("asr", "llm")}
    write_orchestrator_artifacts(
        args.repository / spec.TALKING_HEAD.name / "1", preset.name, args.seed, weights.weights_manifest(loaded),
        asr_tokenizer=tokenizer["asr"], llm_tokenizer=tokenizer["llm"],
        chat_template=loaded["llm"].chat_template if "llm" in loaded else None,
        tts_lexicon=loaded["tts"].lexicon if "tts" in loaded else None,
        tts_frontend="arpabet" if "tts" in loaded else "characters",
        dims={fam: dataclasses.asdict(getattr(preset, fam)) for fam in weights.FAMILIES} if loaded else None)
    print(f"export: done in {time.perf_counter() - t_all:.1f} s -> {args.repository}", flush=True)
    if failed:
        print(f"export: parity FAILED for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
