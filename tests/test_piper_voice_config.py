"""The voice json (export/contract/piper_voice.py) and Piper's phoneme -> id layout (export/contract/phonemes.py)."""
import json
from collections import Counter

import pytest
from piper_ref import SENTENCES, TEXT

from export.contract.piper_voice import VoiceConfigError, read_voice_config


@pytest.fixture(scope="module")
def voice(voice_path):
    return read_voice_config(voice_path.with_name(voice_path.name + ".json"))


def test_ids_layout(voice, raw_phonemizer):
    missing = Counter()
    ids = raw_phonemizer.phoneme_ids(["h", "ə", "l", "ˈ", "o", "ʊ", "!", "☃"], missing)
    assert ids == SENTENCES[0]  # ^ _ h _ ə _ l _ ˈ _ o _ ʊ _ ! _ $ (the snowman is skipped)
    assert missing == Counter({"☃": 1})
    assert voice.scales() == [0.667, 1.0, 0.8] and voice.scales(speed=2.0)[1] == 0.5


def test_text_matches_piper_phonemize(pp, raw_phonemizer):
    assert [list(u.ids) for u in raw_phonemizer.utterances(TEXT)] == SENTENCES
    assert [pp.phoneme_ids_espeak(s) for s in pp.phonemize_espeak(TEXT, "en-us")] == SENTENCES


def test_bad_configs(voice_path, tmp_path):
    meta = json.loads(voice_path.with_name(voice_path.name + ".json").read_text())
    f = tmp_path / "v.json"
    for change, message in ((lambda m: m.pop("audio"), "audio.sample_rate"),
                            (lambda m: m["phoneme_id_map"].pop("^"), "lacks"),
                            (lambda m: m["phoneme_id_map"].update({"a": "x"}), "lists of ints")):
        m = json.loads(json.dumps(meta))
        change(m)
        f.write_text(json.dumps(m))
        with pytest.raises(VoiceConfigError, match=message):
            read_voice_config(f)
    f.write_text("{not json")
    with pytest.raises(VoiceConfigError, match="cannot read JSON"):
        read_voice_config(f)
