"""Sessions (ensemble/sessions.py): owned by the token that opened them, bounded without evicting a busy one."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ensemble.errors import Overloaded
from ensemble.sessions import Sessions

A, B = "token-of-client-a-000", "token-of-client-b-111"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_each_token_has_its_own_sessions():
    """The same id under another token is another session: no reaching someone else's, no claiming an id first,
    and peeking tells nothing about whether another client uses it."""
    sessions = Sessions()
    s = sessions.get("talk", A)
    assert sessions.get("talk", A) is s and sessions.peek("talk", A) is s
    assert sessions.peek("talk", B) is None  # A's session is not B's, and not seen from B
    b = sessions.get("talk", B)
    assert b is not s and b.token == B and s.token == A and len(sessions) == 2
    assert sessions.get("talk", A) is s and sessions.get("talk", B) is b


def test_a_flood_of_new_sessions_never_evicts_a_busy_one():
    """1100 new ids in a row (issue 15's attack) forget idle sessions, not a reply in flight or a half-spoken turn;
    once only busy sessions are left, a new one is refused rather than one of them dropped."""
    sessions = Sessions(max_open=4)
    replying = sessions.get("replying", A)
    replying.turn = object()
    speaking = sessions.get("speaking", A)
    speaking.mic = SimpleNamespace(in_turn=True)
    for k in range(1100):
        sessions.get(f"flood-{k}", B)
    assert sessions.peek("replying", A) is replying and sessions.peek("speaking", A) is speaking
    assert len(sessions) == 4
    for k in range(1098, 1100):
        sessions.peek(f"flood-{k}", B).turn = object()  # the flood's last two now reply too: all four are busy
    with pytest.raises(Overloaded, match="4 sessions are open and busy"):
        sessions.get("one-more", B)
    speaking.mic.in_turn = False  # the user stopped speaking: that session may go now
    sessions.get("one-more", B)
    assert sessions.peek("speaking", A) is None and sessions.peek("replying", A) is replying


def test_an_idle_session_is_forgotten_after_idle_s_and_its_id_can_be_opened_again():
    clock = Clock()
    sessions = Sessions(idle_s=10.0, clock=clock)
    sessions.get("old", A)
    clock.t = 11.0
    assert sessions.get("old", B).token == B  # forgotten: a new conversation under the same id


def test_a_client_over_its_own_limit_forgets_its_own_sessions_never_anothers():
    """Per-client bounds instead of global eviction: B opening many sessions cycles through its own idle ones; A's
    idle conversation stays; when all of B's are busy, B's next one is refused, and A may still open one."""
    sessions = Sessions(max_open=100, max_per_client=3)
    a = sessions.get("a-idle", A)
    for k in range(50):
        sessions.get(f"b-{k}", B)
    assert sessions.peek("a-idle", A) is a and len(sessions) == 4
    assert [sessions.peek(f"b-{k}", B) is not None for k in (46, 47, 48, 49)] == [False, True, True, True]
    for k in (47, 48, 49):
        sessions.peek(f"b-{k}", B).turn = object()
    with pytest.raises(Overloaded, match="this client has 3 sessions open and busy \\(limit 3 per client\\)"):
        sessions.get("b-more", B)
    sessions.get("a-more", A)
    assert len(sessions) == 5


def test_a_full_house_takes_room_from_the_client_holding_the_most():
    sessions = Sessions(max_open=4, max_per_client=10)
    a = sessions.get("a-idle", A)
    for k in range(3):
        sessions.get(f"b-{k}", B)
    sessions.get("b-3", B)  # full: B holds the most, so its least recently used idle session goes, not A's
    assert sessions.peek("a-idle", A) is a and sessions.peek("b-0", B) is None and len(sessions) == 4
