"""The tiny word-level tokenizer (export/contract/vocab.py)."""
from __future__ import annotations

from tokenizers import Tokenizer

from export.contract import vocab
from export.contract.presets import TINY_VOCAB


def test_exactly_tiny_vocab_entries():
    tok = vocab.build_tokenizer()
    assert tok.get_vocab_size(with_added_tokens=True) == TINY_VOCAB == 512
    assert len(tok.get_vocab()) == 512
    assert sorted(tok.get_vocab().values()) == list(range(512))


def test_specials_first_and_single_ids():
    tok = vocab.build_tokenizer()
    for i, s in enumerate(vocab.SPECIALS):
        assert tok.token_to_id(s) == i
        assert tok.encode(s).ids == [i]
        assert tok.encode(f"hello {s} there").ids == [tok.token_to_id("hello"), i, tok.token_to_id("there")]
    for i, p in enumerate(vocab.PUNCTUATION):
        assert tok.token_to_id(p) == len(vocab.SPECIALS) + i


def test_round_trip_known_words():
    tok = vocab.build_tokenizer()
    for text in ["hello, how are you today? i'm fine, thanks!",
                 "i do not know what you mean. can you tell me again?",
                 "that's a well-known story."]:
        enc = tok.encode(text)
        assert vocab.UNK not in enc.tokens
        assert tok.decode(enc.ids) == text
    assert tok.encode("Hello World").tokens == ["hello", "world"]  # lower-cased
    assert tok.encode("zyzzyva").tokens == [vocab.UNK]


def test_chat_prompt_keeps_specials():
    tok = vocab.build_tokenizer()
    prompt = vocab.chatml_prompt("hello there")
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n")
    enc = tok.encode(prompt)
    start, end = tok.token_to_id(vocab.IM_START), tok.token_to_id(vocab.IM_END)
    assert enc.ids.count(start) == 3 and enc.ids.count(end) == 2
    assert enc.tokens[-2:] == [vocab.IM_START, "assistant"]
    assert vocab.UNK not in enc.tokens


def test_deterministic_and_saves(tmp_path):
    a, b = vocab.build_tokenizer(), vocab.build_tokenizer()
    assert a.to_str() == b.to_str()
    path = tmp_path / "tokenizer.json"
    vocab.save(str(path))
    loaded = Tokenizer.from_file(str(path))
    text = vocab.chatml_prompt("what time is it?")
    assert loaded.encode(text).ids == a.encode(text).ids
    assert loaded.decode(a.encode("it's fine.").ids) == "it's fine."
