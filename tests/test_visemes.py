"""ensemble/visemes.py: phoneme timings -> viseme rows per 25 fps frame, streamed piece by piece."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble.visemes import (
    DENTAL,
    OPEN,
    PRESS,
    SPREAD,
    VisemeOptions,
    VisemeTrack,
    track,
)
from export.contract import media
from export.toolchain.models.mouth_warp import PRESS_RANGE

SHUT = PRESS_RANGE[1]  # press at which the warp shuts the lips fully


def frames_over(start: float, end: float, fps: int = media.VIDEO_FPS) -> range:
    """Frames whose 40 ms window overlaps [start, end)."""
    return range(int(np.floor(start * fps)), int(np.ceil(end * fps)))


def frames_inside(start: float, end: float, fps: int = media.VIDEO_FPS) -> range:
    """Frames whose shown time (40 ms from f / fps + lead) lies wholly inside [start, end)."""
    lead = VisemeOptions().lead_s
    return range(int(np.ceil((start - lead) * fps)), int(np.floor((end - lead) * fps)))


def test_rows_cover_the_audio_on_the_frame_clock(reply):
    rows = track(reply.phones, end_s=reply.audio.size / media.OUTPUT_SAMPLE_RATE)
    assert len(track(reply.phones)) == len(rows)  # the phones end where the audio does
    assert rows.shape == (media.video_frames_for_samples(reply.audio.size), 5)
    assert rows.dtype == np.float32
    assert np.all(rows[:, OPEN] >= 0) and np.all(rows[:, OPEN] <= 1)
    assert np.all(np.abs(rows[:, SPREAD]) <= 1)


def test_every_bilabial_reaches_closure(reply):
    rows = track(reply.phones)
    found = 0
    for symbol, start, length in reply.phones:
        if symbol in ("p", "b", "m"):
            found += 1
            frames = [f for f in frames_over(start, start + length) if f < len(rows)]
            assert max(rows[f, PRESS] for f in frames) >= SHUT, (symbol, start, rows[frames, PRESS])
    assert found >= 5


def test_a_short_bilabial_between_open_vowels_still_closes():
    phones = [("a", 0.2, 0.12), ("m", 0.32, 0.025), ("a", 0.345, 0.12), (".", 0.465, 0.3)]
    rows = track(phones)
    m = list(frames_over(0.32, 0.345))
    assert rows[m, PRESS].max() >= SHUT
    assert rows[frames_over(0.2, 0.3), OPEN].max() > 0.6  # the vowels still open
    assert rows[frames_over(0.37, 0.46), PRESS].min() < 0.2  # and the lips part again


def test_labiodental_and_rounding():
    rows = track([("f", 0.2, 0.08), ("u", 0.28, 0.15), (".", 0.43, 0.3)])
    assert rows[frames_over(0.2, 0.28), DENTAL].max() > 0.8
    assert rows[frames_over(0.3, 0.43), SPREAD].min() < -0.6
    # anticipation: the lips start rounding before the vowel starts
    assert rows[int(0.26 * media.VIDEO_FPS), SPREAD] < rows[int(0.1 * media.VIDEO_FPS), SPREAD] - 0.1


def test_silence_is_closed_and_relaxed(reply):
    rows = track(reply.phones)
    checked = 0
    for symbol, start, length in reply.phones:
        if symbol in ".,!?" and length >= 0:
            # the whole pause: punctuation plus the pads after it (Piper gives them the silence)
            k = reply.phones.index((symbol, start, length))
            end = start + length
            while k + 1 < len(reply.phones) and reply.phones[k + 1][0] in ("", " "):
                k += 1
                end = reply.phones[k][1] + reply.phones[k][2]
            inner = [f for f in frames_inside(start + 0.06, end - 0.06) if f < len(rows)]
            if len(inner) >= 1:
                checked += 1
                assert rows[inner, OPEN].max() < 0.08, (symbol, start, rows[inner])
                assert rows[inner, PRESS].max() < 0.1
                assert np.abs(rows[inner, SPREAD]).max() < 0.3  # lip rounding relaxes more slowly than the jaw
    assert checked >= 1


def test_streamed_pieces_match_the_whole_reply(reply):
    end = reply.audio.size / media.OUTPUT_SAMPLE_RATE
    whole = track(reply.phones, end_s=end)
    t = VisemeTrack()
    parts = [t.push(p) for p in reply.pieces]
    parts.append(t.finish(end))
    streamed = np.concatenate(parts)
    assert streamed.shape == whole.shape
    o = VisemeOptions()
    boundaries = np.cumsum([len(p) for p in parts[:-2]])  # where each piece's returned frames end
    # a piece's held-back frames come with the next push, anticipating it; frames before them cannot know the next
    # piece: they may differ from the whole reply's within the horizon, and only slightly (pieces end in a pause)
    horizon = int(np.ceil((o.horizon_s + o.lead_s) * media.VIDEO_FPS))
    may_differ = np.zeros(len(whole), bool)
    for b in boundaries:
        may_differ[max(0, b - horizon):b] = True
    np.testing.assert_allclose(streamed[~may_differ], whole[~may_differ], atol=1e-6)
    assert np.abs(streamed - whole).max() < 0.05
    # continuing smoothly: the step at a boundary is no larger than the steps within the pieces
    steps = np.abs(np.diff(streamed, axis=0)).max(axis=1)
    inside = np.delete(steps, boundaries - 1)
    for b in boundaries:
        assert steps[b - 1] <= inside.max() + 1e-6


def test_frames_by_index_equal_pushed_rows(reply):
    pushed = track(reply.phones, end_s=reply.audio.size / media.OUTPUT_SAMPLE_RATE)
    t = VisemeTrack()
    for p in reply.phones:
        t.add(*p)
    picked = [0, 3, 4, 20, len(pushed) - 1]
    np.testing.assert_array_equal(t.frames(picked), pushed[picked])
    np.testing.assert_array_equal(t.frames([1, 2]), pushed[[1, 2]])  # earlier frames come from the rows made
    with pytest.raises(ValueError):
        t.frames([1], fps=30)


def test_marks_pads_and_multi_codepoint_symbols():
    a = track([("", 0.0, 0.1), ("u", 0.1, 0.1), ("ː", 0.2, 0.1), ("", 0.3, 0.02), (".", 0.32, 0.3)])
    b = track([("", 0.0, 0.1), ("uː", 0.1, 0.2), ("", 0.3, 0.02), (".", 0.32, 0.3)])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # a stress mark and the pad after it start the vowel early (VITS gives them the vowel's onset), and open it wider
    stressed = track([("h", 0.1, 0.05), ("ˈ", 0.15, 0.04), ("", 0.19, 0.03), ("ɛ", 0.22, 0.06), (".", 0.28, 0.3)])
    plain = track([("h", 0.1, 0.05), ("ɛ", 0.15, 0.13), (".", 0.28, 0.3)])
    assert stressed[:, OPEN].max() > plain[:, OPEN].max()
    whole = track([("ˈoʊ", 0.1, 0.2), (".", 0.3, 0.3)])
    assert whole[:, SPREAD].min() < -0.5 and whole[:, OPEN].max() > 0.3


def test_unknown_symbols_are_counted_and_neutral():
    t = VisemeTrack()
    rows = t.push([("☃", 0.0, 0.2), (".", 0.2, 0.2)])
    assert t.unknown["☃"] == 1
    assert 0.1 < rows[:5, OPEN].max() < 0.5


def test_every_symbol_of_the_voice_is_known(voice_json):
    symbols = json.loads(voice_json.read_text())["phoneme_id_map"]
    t = VisemeTrack()
    t.push([(s, 0.05 * i, 0.05) for i, s in enumerate(symbols)])
    assert set(t.unknown) <= set("0123456789"), t.unknown  # digits: espeak spells numbers out


def test_options_are_checked():
    with pytest.raises(ValueError):
        VisemeOptions(tau_ahead=(0.1,))
    with pytest.raises(ValueError):
        VisemeOptions(step_s=0.007)
    with pytest.raises(ValueError):
        VisemeTrack().push([("a", 0.0, -0.1)])
