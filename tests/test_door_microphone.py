"""A live microphone through the front door (deploy/front_door) in front of the real server: its chunks spend seconds
of audio, not requests (a microphone sends more requests a second than `Limits.rate`), a session's chunks hold one
turn slot together, and audio sent faster than the key's microphone budget is refused for that key only."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from client import media
from client.sdk import ServerError, TalkingHeadClient
from deploy.front_door import FrontDoorOptions, FrontDoorThread
from deploy.front_door.quota import ApiKeys, Limits
from export.contract import events as ev
from export.contract import media as C

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}
SHORT = {"min_silence_ms": 400, "max_reply_tokens": 8}


@pytest.fixture(scope="module")
def question(tmp_path_factory) -> np.ndarray:
    """A spoken question between pauses (about 3.5 s)."""
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is required (make test installs it)"
    wav = tmp_path_factory.mktemp("mic") / "q.wav"
    subprocess.run([espeak, "-w", str(wav), "Please tell me a story about the sea."], check=True)
    pause = np.zeros(C.INPUT_SAMPLE_RATE, np.float32)
    return np.concatenate([pause * 0.5, media.read_audio(wav, rate=C.INPUT_SAMPLE_RATE), pause])


def door_options(server, **limits) -> FrontDoorOptions:
    return FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys(KEYS),
                            limits=Limits(**limits))


def test_a_live_microphone_goes_through_the_front_door(server, question):
    """The SDK's microphone sends 31 chunks a second, paced as spoken, past a request rate of 5 a second and with one
    turn slot: until 2026-12-07 each chunk spent a request and held a slot until answered, so the stream was refused
    after its burst (`rate limit: request ...`) or as soon as two chunks were in flight at once (`too many turns`:
    with 4 slots, under a load of 6 real-model turns, 0.17 s into the recording)."""
    with FrontDoorThread(door_options(server, rate=5, burst=5, max_turns=1)) as door, \
            TalkingHeadClient(door.url, api_key=KEYS["alice"]) as c:
        avatar = c.register_avatar(_png()).id
        events = list(c.microphone(session="live", avatar_id=avatar, audio=question, options=SHORT))
    assert [e.data["state"] for e in events if e.type == ev.VAD] == ["speech_start", "turn_end"]
    dones = [e.data for e in events if e.type == ev.DONE]
    assert len(dones) == 1 and dones[0]["transcript"], dones
    assert any(e.type == ev.AUDIO for e in events) and any(e.type == ev.VIDEO for e in events)


def test_microphone_audio_faster_than_the_keys_budget_is_refused_for_that_key_only(server, question):
    # max_turns (each chunk is in flight until answered) high enough that the audio budget is what refuses
    with FrontDoorThread(door_options(server, mic_rate=1.0, mic_burst_s=1.0, max_turns=64)) as door:
        with TalkingHeadClient(door.url, api_key=KEYS["alice"]) as alice, \
                TalkingHeadClient(door.url, api_key=KEYS["bob"]) as bob:
            avatar = alice.register_avatar(_png()).id
            with pytest.raises(ServerError, match=r"microphone limit: microphone chunk .* refused, more than 1 s of "
                                                  r"microphone audio a second \(burst 1 s\) for this API key"):
                list(alice.microphone(session="flood", avatar_id=avatar, audio=question, realtime=False,
                                      options=SHORT))
            events = list(bob.microphone(session="mine", avatar_id=avatar, audio=question[:C.INPUT_SAMPLE_RATE // 2],
                                         realtime=False, options=SHORT))  # 0.5 s: within bob's own burst
            assert [e.type for e in events if e.type == ev.VAD] == []  # silence, but not refused
            assert alice.turn(avatar_id=avatar, text="Hi.", options=SHORT).done is not None  # requests: their own


def _png() -> bytes:
    from ensemble.avatar import demo_avatar_png

    return demo_avatar_png()
