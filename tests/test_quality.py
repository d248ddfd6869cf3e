"""Quality gates on the real weight set, served by a real tritonserver: it hears (ASR word error rate), answers
(LLM), speaks intelligibly (the voice and the HiFi-GAN vocoder through the ASR) and moves its lips with the voice
(mouth opening measured on the frames against the audio). The figures come from loadtests/quality.py, the same
code `python -m loadtests.quality` prints them with. Seeded random weights fail every gate (the last test)."""
from __future__ import annotations

import pytest

from client.sdk import TalkingHeadClient
from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from loadtests import quality

pytestmark = pytest.mark.server

ASR_WER_MAX = 0.15
VOICE_WER_MAX = 0.10
VOCODER_WER_MAX = 0.10
AV_R_MIN = 0.5
CLOSED_IN_SILENCE_MIN = 0.9


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A server on the real weight set (model_repository, exported as the demo does), the demo avatar, one warm-up
    turn."""
    repo = quality.export_real_repository()
    options = ServerOptions(repository=repo, workdir=tmp_path_factory.mktemp("real"), **server_ports())
    with EmbeddedServer(options) as server, TalkingHeadClient(options.grpc_url, turn_timeout_s=300) as client:
        avatar = client.register_avatar(demo_avatar_png())
        quality.say(client, avatar.id, "Hello.")  # loads every stage's first batch before anything is measured
        yield server, client, avatar


def test_asr_hears_espeak_speech(real):
    _, client, avatar = real
    wer, pairs = quality.asr_wer(client, avatar.id)
    print(f"\nASR WER {wer:.1%} on {len(pairs)} sentences")
    assert len(pairs) >= 20 and wer <= ASR_WER_MAX, pairs


def test_the_voice_is_understood(real):
    _, client, avatar = real
    wer, pairs = quality.voice_wer(client, avatar.id)
    print(f"\nvoice WER {wer:.1%} on {len(pairs)} sentences")
    assert len(pairs) >= 20 and wer <= VOICE_WER_MAX, pairs


def test_hifigan_vocoder_resynthesis_is_understood(real):
    server, client, avatar = real
    wer, pairs = quality.vocoder_wer(client, avatar.id, quality.hifigan_graph())
    print(f"\nHiFi-GAN WER {wer:.1%} on {len(pairs)} sentences")
    assert wer <= VOCODER_WER_MAX, pairs


def test_llm_answers_streams_stops_and_speaks_its_first_sentence_early(real):
    _, client, avatar = real
    checks = quality.llm_checks(client, avatar.id)
    assert checks["paris"], checks["fact_reply"]
    assert checks["fact_text_events"] >= 3 and checks["fact_stopped"]  # streamed token by token, ended by itself
    assert checks["long_pieces"] >= 3 and checks["first_piece_before_reply_ends"], checks["long_reply"]
    assert checks["first_audio_before_reply_ends"]


def test_lips_move_with_the_voice(real):
    _, client, avatar = real
    result = quality.say(client, avatar.id, quality.AV_TEXT)
    sync = quality.av_sync(result, avatar.face_box, demo_avatar_png())
    print(f"\nA/V {sync}")
    assert sync["frames"] >= 0.9 * len(range(0, result.frame_indices[-1] + 1))
    assert sync["pearson_r"] >= AV_R_MIN and sync["closed_in_silence"] >= CLOSED_IN_SILENCE_MIN, sync


def test_random_weights_fail_the_gates(client, avatar):
    """The tiny seeded random models (tests/conftest.py's server) miss the gates by far: they test something."""
    wer, pairs = quality.asr_wer(client, avatar.id, quality.SENTENCES[:4])
    assert wer > 3 * ASR_WER_MAX, pairs
    checks = quality.llm_checks(client, avatar.id)
    assert not checks["paris"]
    sync = quality.av_sync(quality.say(client, avatar.id, quality.AV_TEXT), avatar.face_box, demo_avatar_png())
    assert sync["pearson_r"] < AV_R_MIN, sync
