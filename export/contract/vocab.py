"""The tiny preset's word-level tokenizer (exactly `presets.TINY_VOCAB` = 512 entries).

One vocabulary serves the tiny ASR decoder and the tiny LLM (both have 512-token
vocabularies): ids 0-7 are the Whisper/ChatML special tokens, 8-13 punctuation,
the rest a fixed list of common conversational English words. Text is lower-cased;
contractions ("don't", "it's") are single words; anything else maps to `<unk>`.

    python -m export.contract.vocab OUT.json   # writes tokenizer.json
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from export.contract.presets import TINY_VOCAB

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
STARTOFTRANSCRIPT = "<|startoftranscript|>"
EN = "<|en|>"
TRANSCRIBE = "<|transcribe|>"
NOTIMESTAMPS = "<|notimestamps|>"
UNK = "<unk>"
SPECIALS = (ENDOFTEXT, IM_START, IM_END, STARTOFTRANSCRIPT, EN, TRANSCRIBE, NOTIMESTAMPS, UNK)
PUNCTUATION = (".", ",", "?", "!", "'", "-")

# 498 words: 512 - 8 specials - 6 punctuation marks. Order fixes the ids; append nothing.
WORDS = tuple("""
    the a an and or but if so because then than that this these those there here what which who when
    where why how i me my you your he him his she her it its we us our they them their is am are was
    were be been being have has had having do does did doing done will would should can could may
    might must not no yes yeah okay ok oh hi hello hey bye goodbye please thanks thank welcome sorry
    sure well just very really too also only even still already again always never sometimes often
    maybe perhaps about above after before below between by down during for from in into of off on
    out over through to under until up with without at as like around near far all any both each few
    more most other some such own same much many lot little less enough every everyone everything
    someone something anyone anything nothing nobody one two three four five six seven eight nine
    ten first second last next new old good bad great nice best better worse worst big small long
    short high low right left wrong true false early late young happy sad fine easy hard free full
    open close real important different possible able ready quick fast slow hot cold warm cool
    beautiful day days night morning afternoon evening today tomorrow yesterday week month year
    years time times now soon later minute minutes hour hours moment world life people person man
    woman child children friend friends family home house room school work job money name way place
    thing things part point problem question answer idea story word words number water food music
    book movie game weather city country car phone computer help hand eye head face voice language
    english love fun kind bit go goes going went gone get gets getting got come comes coming came
    make makes making made know knows knew known think thinks thinking thought take takes taking
    took see sees seeing saw seen want wants wanted look looks looking looked use uses using used
    find found give gives gave tell tells told ask asks asked feel feels felt try tries trying tried
    leave call called keep kept let put say says said saying talk talking speak speaking listen hear
    heard mean means meant need needs needed start started stop show play run move live lived
    believe bring happen happened write read learn change understand remember forget wait stay watch
    follow hope likes liked loves enjoy explain sound sounds meet guess wish worry care matter turn
    don't doesn't didn't can't won't isn't aren't wasn't haven't i'm i'll i've you're it's that's
    there's what's let's he's she's we're they're assistant system user helpful hmm um uh wow
    awesome interesting exactly definitely absolutely certainly probably actually basically anyway
    honestly together everybody somebody else almost quite once another while since against along
    across behind inside outside dog cat plan team buy information picture video red blue green
    black white light
""".split())

DEFAULT_SYSTEM = "You are a helpful assistant."  # the tiny ChatML prompt's system message

# A word (letters/digits, contractions kept whole) or any single other non-space character.
_PIECE = r"\w+(?:'\w+)*|[^\w\s]"


def vocabulary() -> list[str]:
    """All entries in id order."""
    entries = [*SPECIALS, *PUNCTUATION, *WORDS]
    assert len(entries) == len(set(entries)) == TINY_VOCAB, (len(entries), len(set(entries)))
    return entries


def build_tokenizer() -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\u2019", "'"),
                                           normalizers.Lowercase()])
    # keep the pieces matching _PIECE, drop the whitespace between them
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECE), behavior="removed", invert=True)
    # words joined by single spaces; no space before . , ? ! and none around "-"
    tok.decoder = decoders.Sequence([
        decoders.WordPiece(prefix="##", cleanup=False),  # prepends " " to every token but the first
        *(decoders.Replace(" " + p, p) for p in (".", ",", "?", "!", "-")),
        decoders.Fuse(),
        decoders.Replace("- ", "-"),
    ])
    # the specials are matched before normalization and pre-tokenization, as single ids
    tok.add_special_tokens(list(SPECIALS))
    return tok


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens the orchestrator drives the ASR decoder and the LLM with, as token strings; the export
    writes them into the manifest from the checkpoint's tokenizer (export/contract/artifacts.py)."""

    asr_prompt: tuple[str, ...]  # what a transcription starts with (.en Whisper models: no language/task tokens)
    asr_end: str  # ends a transcript
    llm_stop: tuple[str, ...]  # any of these ends a reply
    llm_banned: tuple[str, ...] = ()  # never sampled (they would open a new chat turn)

    def to_json(self) -> dict:
        return {"asr_prompt": list(self.asr_prompt), "asr_end": self.asr_end, "llm_stop": list(self.llm_stop),
                "llm_banned": list(self.llm_banned)}

    @classmethod
    def from_json(cls, d: dict) -> "SpecialTokens":
        return cls(tuple(d["asr_prompt"]), d["asr_end"], tuple(d["llm_stop"]), tuple(d.get("llm_banned", ())))


# the tiny vocabulary's: multilingual Whisper's prompt, ChatML's stops
TINY_SPECIAL_TOKENS = SpecialTokens(asr_prompt=(STARTOFTRANSCRIPT, EN, TRANSCRIBE, NOTIMESTAMPS), asr_end=ENDOFTEXT,
                                    llm_stop=(IM_END, ENDOFTEXT), llm_banned=(IM_START, STARTOFTRANSCRIPT))


def save(path: str) -> None:
    build_tokenizer().save(str(path))


def chatml_prompt(user_text: str, system: str = DEFAULT_SYSTEM) -> str:
    """Qwen2's ChatML template with the generation prompt appended."""
    return (f"{IM_START}system\n{system}{IM_END}\n"
            f"{IM_START}user\n{user_text}{IM_END}\n"
            f"{IM_START}assistant\n")


if __name__ == "__main__":
    save(sys.argv[1] if len(sys.argv) > 1 else "tokenizer.json")
