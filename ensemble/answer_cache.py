"""Answer cache: frequent exchanges (greetings, thanks, goodbyes) rendered once, replayed at once.

The key is everything that shapes what the client receives: the user's text normalized
(`normalize`), the avatar, the voice (speed, pitch, energy), the render settings (video,
frame stride, JPEG quality, reply length, sampling) and the model versions (the export
manifest's digest). Only texts on the configured list are cached, so open-ended turns
never are. The first turn of a listed text (or a `prerender` request) records its events;
later ones replay them with a fresh turn id and fresh timestamps: the same event types,
text, audio and frames, only sooner.
Entries are bounded by bytes; the least recently used is evicted first (of the client holding the most). Each client
(its `session_token`; behind the front door, its API key; from the gateway, its browser's) may hold at most
`max_bytes / owner_share` of it: past that its own oldest entries go, so no client can flush what others cached (a
key once emptied it with a few 256-token, `ignore_eos` prerenders under different seeds); a quarter holds one
client's prerender of every listed phrase. A full cache takes room from the clients holding the most first (least
recently used among theirs), so a few clients at their share cannot flush one that holds less either (six gateway
clients at their quarter once pushed a victim's cached "hello" out: RELIABILITY.md, "A tenth pass").
"""
from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from ensemble.options import TurnOptions
from export.contract.events import Event

DEFAULT_PHRASES = ("hello", "hi", "hey", "good morning", "good afternoon", "good evening", "how are you",
                   "thank you", "thanks", "goodbye", "bye", "see you")
_NOT_WORD = re.compile(r"[^\w' ]+")


def normalize(text: str) -> str:
    """Case-, accent-width- and punctuation-insensitive form: 'Hello!!  ' and 'hello' are one key."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NOT_WORD.sub(" ", text).split())


# options that change what a cached answer looks or sounds like
RENDER_OPTIONS = ("video", "speed", "pitch", "energy", "jpeg_quality", "frame_stride", "max_reply_tokens",
                  "temperature", "top_k", "seed", "ignore_eos")


@dataclass(frozen=True)
class CacheKey:
    text: str
    avatar_id: str
    render: tuple
    models: str


def event_bytes(e: Event) -> int:
    return len(e.to_json()) + (e.audio.nbytes if e.audio is not None else 0) + (len(e.frame) if e.frame else 0)


class AnswerCache:
    def __init__(self, phrases: Iterable[str] = DEFAULT_PHRASES, max_bytes: int = 256 * 1024**2,
                 owner_share: int = 4):
        self.phrases = frozenset(normalize(p) for p in phrases)
        self.max_bytes = max_bytes
        self.max_owner_bytes = max_bytes // owner_share  # what one client's entries may take
        self._entries: OrderedDict[CacheKey, tuple[list[Event], int, str]] = OrderedDict()
        self._owner_bytes: dict[str, int] = {}
        self.bytes = 0

    def key(self, text: str, avatar_id: str, options: TurnOptions, models: str) -> CacheKey | None:
        """The cache key of a turn, or None when its text is not a cached exchange (or the turn is the
        naive benchmark baseline, which must run every stage)."""
        norm = normalize(text)
        if norm not in self.phrases or not options.streaming:
            return None
        return CacheKey(norm, avatar_id, tuple(getattr(options, k) for k in RENDER_OPTIONS), models)

    def get(self, key: CacheKey) -> list[Event] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: CacheKey, events: list[Event], owner: str = "") -> bool:
        """Store a completed turn's events for `owner` (the client's token); False when it is not kept (one answer
        alone exceeds what a client may hold, or the room a full cache needed was taken from it)."""
        size = sum(event_bytes(e) for e in events)
        if size > self.max_owner_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (list(events), size, owner)
        self.bytes += size
        self._owner_bytes[owner] = self._owner_bytes.get(owner, 0) + size
        while self._owner_bytes[owner] > self.max_owner_bytes:  # the owner's own oldest first
            self._drop(next(k for k, (_, _, o) in self._entries.items() if o == owner))
        while self.bytes > self.max_bytes:  # a full cache takes room from the clients holding the most, oldest first
            most = max(self._owner_bytes.values())
            self._drop(next(k for k, (_, _, o) in self._entries.items() if self._owner_bytes[o] == most))
        return key in self._entries

    def _drop(self, key: CacheKey) -> None:
        _, size, owner = self._entries.pop(key)
        self.bytes -= size
        self._owner_bytes[owner] -= size
        if not self._owner_bytes[owner]:
            del self._owner_bytes[owner]

    def __len__(self) -> int:
        return len(self._entries)
