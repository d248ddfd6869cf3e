"""`python -m export --weights FAMILY=PATH` (export/toolchain/weights.py, export/__main__.py, export/contract/artifacts.py).

Small checkpoints in each family's official layout are written into tmp_path, exported into a
temporary model repository, and the ONNX graphs are compared with the modules the checkpoints were
saved from. The manifests must say which families are real and where their weights came from.
Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from export.__main__ import main as export_main
from export.contract import spec, text_frontend, vocab
from export.contract.presets import FastSpeech2Config, HiFiGANConfig, Qwen2Config, WhisperDims
from export.toolchain.checkpoints import save_safetensors
from export.toolchain.checkpoints.contract_check import ContractError, check_asr_dims
from export.toolchain.checkpoints.whisper import state_dict_to_hf
from export.toolchain.models import fastspeech2, hifigan, qwen2, whisper
from export.toolchain.weights import SEEDED_RANDOM, parse_weights_args

REPO = Path(__file__).resolve().parent.parent
VOCODER = HiFiGANConfig(upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8), upsample_initial_channel=24,
                        resblock="2", resblock_kernel_sizes=(3, 5), resblock_dilation_sizes=((1, 2), (2, 6)))
TTS = FastSpeech2Config(encoder_layer=1, encoder_hidden=32, decoder_layer=1, decoder_hidden=32, conv_filter_size=64,
                        variance_predictor_filter_size=32, n_bins=16, max_seq_len=200, postnet_embedding_dim=32,
                        postnet_n_convolutions=2)
LLM = Qwen2Config(vocab_size=vocab.TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=4096)
ASR = WhisperDims(n_audio_state=16, n_audio_head=2, n_audio_layer=1, n_vocab=vocab.TINY_VOCAB, n_text_state=16,
                  n_text_head=2, n_text_layer=1)
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


# ----------------------------------------------------------------------------- checkpoints in official layouts

def vocoder_config(h: HiFiGANConfig = VOCODER, **over) -> dict:
    cfg = {"resblock": h.resblock, "num_gpus": 0, "batch_size": 16, "upsample_rates": list(h.upsample_rates),
           "upsample_kernel_sizes": list(h.upsample_kernel_sizes), "upsample_initial_channel": h.upsample_initial_channel,
           "resblock_kernel_sizes": list(h.resblock_kernel_sizes),
           "resblock_dilation_sizes": [list(d) for d in h.resblock_dilation_sizes], "segment_size": 8192,
           "num_mels": 80, "num_freq": 1025, "n_fft": 1024, "hop_size": 256, "win_size": 1024,
           "sampling_rate": 22050, "fmin": 0, "fmax": 8000, "fmax_for_loss": None}
    cfg.update(over)
    return cfg


def write_vocoder(folder: Path, seed: int = 0, **config_over) -> tuple[Path, torch.nn.Module]:
    """hifi-gan's generator_v1 + config.json; returns (file, the generator with weight norm removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = hifigan.build(VOCODER, seed)
    torch.save({"generator": ref.state_dict()}, folder / "generator_v1")
    (folder / "config.json").write_text(json.dumps(vocoder_config(**config_over)))
    ref.remove_weight_norm()
    return folder / "generator_v1", ref


def write_tts(folder: Path, seed: int = 0, sampling_rate: int = 22050) -> tuple[Path, torch.nn.Module]:
    """ming024's 900000.pth.tar + model.yaml + preprocess.yaml + a lexicon beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = fastspeech2.build(TTS, seed)
    torch.save({"model": ref.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, folder / "900000.pth.tar")
    c = TTS
    (folder / "model.yaml").write_text(yaml.safe_dump({
        "transformer": {"encoder_layer": c.encoder_layer, "encoder_head": c.encoder_head,
                        "encoder_hidden": c.encoder_hidden, "decoder_layer": c.decoder_layer,
                        "decoder_head": c.decoder_head, "decoder_hidden": c.decoder_hidden,
                        "conv_filter_size": c.conv_filter_size, "conv_kernel_size": list(c.conv_kernel_size)},
        "variance_predictor": {"filter_size": c.variance_predictor_filter_size,
                               "kernel_size": c.variance_predictor_kernel_size},
        "variance_embedding": {"pitch_quantization": "linear", "energy_quantization": "linear", "n_bins": c.n_bins},
        "multi_speaker": False, "max_seq_len": c.max_seq_len}))
    (folder / "preprocess.yaml").write_text(yaml.safe_dump({"preprocessing": {
        "text": {"text_cleaners": ["english_cleaners"], "language": "en"},
        "audio": {"sampling_rate": sampling_rate, "max_wav_value": 32768.0},
        "stft": {"filter_length": 1024, "hop_length": 256, "win_length": 1024},
        "mel": {"n_mel_channels": 80, "mel_fmin": 0, "mel_fmax": 8000},
        "pitch": {"feature": "phoneme_level"}, "energy": {"feature": "phoneme_level"}}}))
    (folder / "librispeech-lexicon.txt").write_text("HELLO\tHH AH0 L OW1\nWORLD\tW ER1 L D\n")
    return folder / "900000.pth.tar", ref


def write_llm(folder: Path, seed: int = 0, tokenizer: bool = True) -> tuple[Path, torch.nn.Module]:
    """A Hugging Face Qwen2 folder: config.json, model.safetensors (tied head left out), tokenizer.json,
    tokenizer_config.json with a chat template."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = qwen2.build(LLM, seed)
    c = LLM
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "vocab_size": c.vocab_size, "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": True, "use_sliding_window": False}))
    sd = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    save_safetensors(sd, folder / "model.safetensors", {"format": "pt"})
    if tokenizer:
        vocab.save(folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE,
                                                              "eos_token": "<|im_end|>"}))
    return folder, ref


def write_asr(folder: Path, seed: int = 0, n_mels: int = 80) -> tuple[Path, torch.nn.Module]:
    """A Hugging Face Whisper folder (openai/whisper-tiny's keys, shrunk) with tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = whisper.build(ASR, seed)
    d = ASR
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper", "activation_function": "gelu",
        "d_model": d.n_audio_state, "encoder_layers": d.n_audio_layer, "encoder_attention_heads": d.n_audio_head,
        "decoder_layers": d.n_text_layer, "decoder_attention_heads": d.n_text_head,
        "encoder_ffn_dim": 4 * d.n_audio_state, "decoder_ffn_dim": 4 * d.n_text_state, "num_mel_bins": n_mels,
        "vocab_size": d.n_vocab, "max_source_positions": d.n_audio_ctx, "max_target_positions": d.n_text_ctx,
        "scale_embedding": False, "tie_word_embeddings": True}))
    sd = state_dict_to_hf(ref)
    if n_mels != 80:
        sd["model.encoder.conv1.weight"] = torch.zeros(d.n_audio_state, n_mels, 3)
    save_safetensors(sd, folder / "model.safetensors", {"format": "pt"})
    vocab.save(folder / "tokenizer.json")
    return folder, ref


def export(repo: Path, *args: str) -> int:
    return export_main(["--preset", "tiny", "--repository", str(repo), "--no-download", *args])


def manifest(repo: Path) -> dict:
    return json.loads((repo / "talking_head" / "1" / "export.json").read_text())


def stage_key(repo: Path, stage: str) -> dict:
    return json.loads((repo / stage / "1" / "export.json").read_text())["key"]


def run_onnx(path: Path, **feeds: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


# ----------------------------------------------------------------------------- arguments

def test_parse_weights_args():
    assert parse_weights_args(["vocoder=/a/b", "LLM = Qwen/Qwen2.5-0.5B-Instruct"]) == {
        "vocoder": "/a/b", "llm": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert parse_weights_args(None) == {}
    for bad, words in ((["vocoder"], "FAMILY=PATH"), (["speaker=x"], "unknown family 'speaker'"),
                       (["tts=a", "tts=b"], "tts given twice"), (["asr="], "FAMILY=PATH")):
        with pytest.raises(ValueError, match=words):
            parse_weights_args(bad)


def test_bad_weights_flag_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        export(tmp_path / "repo", "--weights", "speaker=x")
    assert err.value.code == 2 and "unknown family 'speaker'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the vocoder, end to end

def test_cli_vocoder_weights_export_the_checkpoint(tmp_path):
    """The command line of the issue, as a subprocess."""
    ckpt, ref = write_vocoder(tmp_path / "ckpt", seed=7)
    repo = tmp_path / "repo"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "export", "--preset", "tiny", "--repository", str(repo),
                           "--weights", f"vocoder={tmp_path / 'ckpt'}", "--models", "hifigan"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"REAL vocoder ({tmp_path / 'ckpt'})" in proc.stdout
    assert "SEEDED RANDOM asr, llm, tts, lipsync" in proc.stdout
    assert "audio contract: vocoder (config.json, upsample 8x8x4) agree" in proc.stdout
    assert "parity" in proc.stdout and "FAIL" not in proc.stdout

    mel = (np.random.default_rng(0).random((2, 80, 17), dtype=np.float32) * 13 - 11).astype(np.float32)
    (audio,) = run_onnx(repo / "hifigan" / "1" / "model.onnx", mel=mel)
    with torch.no_grad():
        want = ref(torch.from_numpy(mel)).squeeze(1).numpy()
    assert audio.shape == (2, 17 * 256)
    np.testing.assert_allclose(audio, want, rtol=0, atol=1e-5)

    info = manifest(repo)
    assert info["weights"]["vocoder"]["source"] == str(tmp_path / "ckpt")
    assert set(info["weights"]["vocoder"]["files"]) == {str((tmp_path / "ckpt" / n).resolve())
                                                         for n in ("generator_v1", "config.json")}
    assert all(info["weights"][f] == SEEDED_RANDOM for f in ("asr", "llm", "tts", "lipsync"))
    assert info["dims"]["hifigan"]["upsample_initial_channel"] == 24  # from config.json, not the preset's 32
    assert info["tts_frontend"] == "characters"
    key = stage_key(repo, "hifigan")
    files = {Path(f["path"]).name: f for f in key["weights"]["files"]}
    assert files["generator_v1"]["size"] == ckpt.stat().st_size
    assert files["generator_v1"]["mtime_ns"] == ckpt.stat().st_mtime_ns
    assert set(files) == {"generator_v1", "config.json"} and key["weights"]["loader"]
    # the gpu variant (PyTorch on CUDA) serves the same real weights: saved beside the graph, loaded by load_graph
    from export.contract.artifacts import manifest_preset
    from export.runtime.torch_runtime import load_graph

    assert (repo / "hifigan" / "1" / "weights.safetensors").is_file()
    served = load_graph(spec.HIFIGAN, manifest_preset(info), 0, "cpu", "fp32", repo / "hifigan" / "1" / "weights.safetensors")
    with torch.no_grad():
        np.testing.assert_allclose(served(torch.from_numpy(mel)).numpy(), want, rtol=0, atol=1e-5)


def test_changing_weights_re_exports(tmp_path, capsys):
    ckpt, _ = write_vocoder(tmp_path / "ckpt", seed=1)
    repo = tmp_path / "repo"
    args = ["--weights", f"vocoder={ckpt}", "--models", "hifigan", "--no-parity"]
    assert export(repo, *args) == 0
    assert export(repo, *args) == 0
    assert "up to date, skipped: hifigan" in capsys.readouterr().out
    _, ref = write_vocoder(tmp_path / "ckpt", seed=2)  # new weights in the same file
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert export(repo, *args) == 0
    assert "skipped" not in capsys.readouterr().out
    mel = np.full((1, 80, 5), -5.0, dtype=np.float32)
    (audio,) = run_onnx(repo / "hifigan" / "1" / "model.onnx", mel=mel)
    with torch.no_grad():
        np.testing.assert_allclose(audio, ref(torch.from_numpy(mel)).squeeze(1).numpy(), rtol=0, atol=1e-5)
    # back to seeded random: the key differs again, so it re-exports
    assert export(repo, "--models", "hifigan", "--no-parity") == 0
    out = capsys.readouterr().out
    assert "skipped" not in out and "SEEDED RANDOM" in out
    assert "weights" not in stage_key(repo, "hifigan")
    assert manifest(repo)["weights"]["vocoder"] == SEEDED_RANDOM


# ----------------------------------------------------------------------------- TTS + vocoder, the contract

def test_contract_mismatch_between_tts_and_vocoder_stops_the_export(tmp_path, capsys):
    write_tts(tmp_path / "tts", sampling_rate=22050)
    write_vocoder(tmp_path / "voc", sampling_rate=16000)
    rc = export(tmp_path / "repo", "--weights", f"tts={tmp_path / 'tts'}", "--weights", f"vocoder={tmp_path / 'voc'}",
                "--models", "fastspeech2", "hifigan")
    err = capsys.readouterr().err
    assert rc == 2 and "ContractError" in err
    assert f"sample_rate: TTS 22050 ({tmp_path / 'tts' / 'preprocess.yaml'}: preprocessing.audio.sampling_rate), " \
           f"vocoder 16000 ({tmp_path / 'voc' / 'config.json'}: sampling_rate)" in err
    assert not (tmp_path / "repo" / "fastspeech2").exists()


def test_tts_and_vocoder_weights_together(tmp_path, capsys):
    _, tts_ref = write_tts(tmp_path / "tts", seed=3)
    _, voc_ref = write_vocoder(tmp_path / "voc", seed=4)
    repo = tmp_path / "repo"
    assert export(repo, "--weights", f"tts={tmp_path / 'tts'}", "--weights", f"vocoder={tmp_path / 'voc'}",
                  "--models", "fastspeech2", "hifigan") == 0
    out = capsys.readouterr().out
    assert "audio contract: TTS (preprocess.yaml) and vocoder (config.json, upsample 8x8x4) agree" in out
    assert "REAL tts" in out and "vocoder" in out and "SEEDED RANDOM asr, llm, lipsync" in out
    ids = text_frontend.arpabet_to_ids("HH AH0 L OW1 W ER1 L D")
    phonemes = np.array([ids], dtype=np.int64)
    mel, mel_len, _ = run_onnx(repo / "fastspeech2" / "1" / "model.onnx", phonemes=phonemes,
                            phoneme_lengths=np.array([[len(ids)]], dtype=np.int64),
                            controls=np.ones((1, 3), dtype=np.float32))
    with torch.no_grad():
        want_mel, want_len, _ = fastspeech2.TtsGraph(tts_ref)(torch.from_numpy(phonemes), torch.tensor([[len(ids)]]),
                                                          torch.ones(1, 3))
    assert mel_len.tolist() == want_len.tolist()
    np.testing.assert_allclose(mel, want_mel.numpy(), rtol=0, atol=1e-4)
    info = manifest(repo)
    assert info["tts_frontend"] == "arpabet" and info["tts_lexicon"] == "tts_lexicon.txt"
    assert (repo / "talking_head" / "1" / "tts_lexicon.txt").read_text().startswith("HELLO")
    assert info["dims"]["fastspeech2"]["encoder_hidden"] == 32
    assert info["weights"]["tts"]["source"] == str(tmp_path / "tts")


# ----------------------------------------------------------------------------- LLM and ASR: tokenizers, dims

def test_llm_weights_bring_their_tokenizer_and_chat_template(tmp_path, capsys):
    folder, ref = write_llm(tmp_path / "qwen")
    repo = tmp_path / "repo"
    assert export(repo, "--weights", f"llm={folder}", "--models", "llm") == 0
    art = repo / "talking_head" / "1"
    assert (art / "llm_tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert (art / "llm_chat_template.jinja").read_text() == CHAT_TEMPLATE
    info = manifest(repo)
    assert info["llm_chat_template"] == "llm_chat_template.jinja"
    assert info["llm_special_tokens"] == {"eos_token": "<|im_end|>"}
    assert info["dims"]["llm"]["num_hidden_layers"] == 3 and info["dims"]["llm"]["hidden_size"] == 32
    # the graph's shapes follow the checkpoint: 3 layers, 1 KV head of 8 (the tiny preset: 2 layers, 2 x 16)
    ids = np.array([[5, 9, 11]], dtype=np.int64)
    past = np.zeros((1, 3, 2, 1, 0, 8), dtype=np.float32)
    logits, present = run_onnx(repo / "llm" / "1" / "model.onnx", input_ids=ids, past_kv=past)
    assert present.shape == (1, 3, 2, 1, 3, 8)
    with torch.no_grad():
        want, _ = ref(torch.from_numpy(ids), torch.from_numpy(past))
    np.testing.assert_allclose(logits, want.numpy(), rtol=0, atol=1e-4)
    # a later export without LLM weights puts the tiny tokenizer back and drops the template
    assert export(repo, "--models", "llm", "--no-parity") == 0
    assert not (art / "llm_chat_template.jinja").exists() and "llm_chat_template" not in manifest(repo)


def test_llm_without_tokenizer_is_refused(tmp_path, capsys):
    folder, _ = write_llm(tmp_path / "qwen", tokenizer=False)
    assert export(tmp_path / "repo", "--weights", f"llm={folder}", "--models", "llm") == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_asr_weights(tmp_path):
    folder, ref = write_asr(tmp_path / "whisper", seed=2)
    repo = tmp_path / "repo"
    assert export(repo, "--weights", f"asr={folder}", "--models", "asr_encoder", "asr_decoder") == 0
    assert (repo / "talking_head" / "1" / "asr_tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert manifest(repo)["dims"]["asr"]["n_audio_state"] == 16
    mel = np.random.default_rng(1).standard_normal((1, 80, 3000)).astype(np.float32)
    (features,) = run_onnx(repo / "asr_encoder" / "1" / "model.onnx", mel=mel)
    assert features.shape == (1, 1500, 16)
    with torch.no_grad():
        np.testing.assert_allclose(features, ref.encoder(torch.from_numpy(mel)).numpy(), rtol=0, atol=1e-4)
    for stage in ("asr_encoder", "asr_decoder"):
        assert stage_key(repo, stage)["weights"]["source"] == str(folder)


def test_asr_contract():
    check_asr_dims(ASR, "ok")
    with pytest.raises(ContractError, match=r"n_mels: checkpoint 128 != 80 \(export/contract/media.py ASR_MEL.n_mels\)"):
        check_asr_dims(WhisperDims(n_mels=128), "large-v3")
    with pytest.raises(ContractError, match="n_audio_ctx: checkpoint 750"):
        check_asr_dims(WhisperDims(n_audio_ctx=750), "short")


def test_missing_local_path_is_a_clear_error(tmp_path, capsys):
    assert export(tmp_path / "repo", "--weights", f"vocoder={tmp_path / 'nowhere'}", "--models", "hifigan") == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert export(tmp_path / "repo", "--weights", "lipsync=someone/wav2lip", "--models", "wav2lip") == 2
    assert "downloading from the Hugging Face Hub is turned off" in capsys.readouterr().err
