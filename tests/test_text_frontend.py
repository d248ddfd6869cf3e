"""Symbol table and text -> ids (export/contract/text_frontend.py)."""
from __future__ import annotations

import pytest

from export.contract import text_frontend as tf
from export.contract.presets import FastSpeech2Config, get_preset


def test_table_size_matches_the_model():
    assert len(tf.symbols) + 1 == tf.N_SYMBOLS == FastSpeech2Config().n_symbols == 361
    assert get_preset("tiny").fastspeech2.n_symbols == tf.N_SYMBOLS
    assert len(set(tf.symbols)) == len(tf.symbols)


def test_table_order_is_ming024s():
    s = tf.symbols
    assert s[0] == "_" and s[1] == "-" and "".join(s[2:12]) == "!'(),.:;? "
    assert "".join(s[12:64]) == "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    assert s[64] == "@AA" and s[147] == "@ZH"
    assert s[148] == "@b" and s[170] == "@zh" and s[171] == "@a1" and s[355] == "@vn5" and s[356] == "@rr"
    assert s[-3:] == ["@sp", "@spn", "@sil"]


def test_text_to_ids_in_range_and_cleaned():
    ids = tf.text_to_ids("  Hello,   Dr. Smith!  Café costs 42 dollars; (ok?) \"quoted\" #tag  ")
    assert ids and all(0 < i < tf.N_SYMBOLS for i in ids)
    assert tf.ids_to_text(ids) == "hello, doctor smith! cafe costs forty two dollars; (ok?) quoted tag"
    assert tf.text_to_ids("a") == [tf.symbols.index("a")]
    assert tf.text_to_ids("") == [] and tf.text_to_ids("   ") == []


def test_arpabet_paths():
    ids = tf.arpabet_to_ids(["HH", "AH0", "L", "OW1", ",", "sil", "@sp"])
    assert [tf.symbols[i] for i in ids] == ["@HH", "@AH0", "@L", "@OW1", "@sp", "@sil", "@sp"]
    assert tf.arpabet_to_ids("HH AH0") == ids[:2]
    mixed = tf.text_to_ids("say {HH AH0 L OW1} now")
    assert tf.ids_to_text(mixed) == "say {HH AH0 L OW1} now"
    assert all(0 < i < tf.N_SYMBOLS for i in mixed)
    with pytest.raises(ValueError):
        tf.arpabet_to_ids(["XX9"])


def test_numbers():
    assert tf.english_cleaners("1,234.5") == "one thousand two hundred thirty four point five"
    assert tf.english_cleaners("I have 2000000 cats") == "i have two million cats"
    assert tf.number_to_words(105) == "one hundred five"
