"""The WebRTC gateway's media plumbing without a browser or a server (deploy/gateway/media.py, video.py, ice.py,
stats.py): resampling both ways, the playout buffer and turn timelines, the frame schedule, the RTP clocks, ICE
candidate filtering and TURN credentials, and the aiortc tracks' pacing and timestamps on a real event loop."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import av
import cv2
import numpy as np
import pytest

from deploy.gateway.ice import IceSettings, filter_candidates, turn_credentials
from deploy.gateway.media import (
    AUDIO_FRAME,
    OUT_RATE,
    AudioPlayout,
    Chunker,
    MediaClock,
    MicResampler,
    SpeechResampler,
    TurnTimeline,
)
from deploy.gateway.stats import percentile
from deploy.gateway.video import PtsClock, VideoSchedule, decode_frame, fit_size, letterbox


def tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def test_mic_resampler_makes_32ms_chunks_at_16k():
    """aiortc's decoded Opus (48 kHz stereo s16, 20 ms frames) -> 512-sample 16 kHz mono float32 chunks."""
    src = tone(440, 48000, 1.0)
    stereo = np.repeat((src * 32767).astype(np.int16)[None], 2, axis=0).T.reshape(1, -1)  # packed s16 stereo
    r, chunks = MicResampler(), []
    for i in range(0, src.size, 960):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, 2 * i:2 * (i + 960)]), format="s16",
                                           layout="stereo")
        frame.sample_rate, frame.pts = 48000, 12345 + i  # odd sender timestamps change nothing
        chunks += r.push(frame)
    assert chunks and all(c.shape == (512,) and c.dtype == np.float32 for c in chunks)
    audio = np.concatenate(chunks)
    assert 16000 - 3 * 512 <= audio.size <= 16000
    assert abs(peak_hz(audio[2000:], 16000) - 440) < 5 and 0.4 < np.abs(audio[2000:]).max() < 0.6


def test_chunker_keeps_the_remainder():
    c = Chunker(4)
    assert c.push(np.arange(6)) == [pytest.approx(np.arange(4))]
    assert [list(x) for x in c.push(np.arange(6, 10))] == [[4, 5, 6, 7]]


def test_speech_resampler_streams_like_one_call():
    """22.05 kHz chunks -> 48 kHz int16; chunked output equals resampling the whole (stream state carried over)."""
    x = tone(300, 22050, 1.0)
    whole = SpeechResampler(22050).push(x, last=True)
    r = SpeechResampler(22050)
    parts = [r.push(x[i:i + 1000]) for i in range(0, x.size, 1000)] + [r.push(None, last=True)]
    chunked = np.concatenate(parts)
    assert chunked.dtype == np.int16 and abs(chunked.size - 48000) <= 2 and chunked.size == whole.size
    assert np.abs(chunked.astype(int) - whole.astype(int)).max() <= 1
    assert abs(peak_hz(chunked.astype(np.float32), OUT_RATE) - 300) < 3


def test_playout_queues_reads_marks_and_flushes():
    p = AudioPlayout()
    assert p.write(np.full(1500, 7, np.int16)) == 0
    p.mark(0, "first")
    frame, passed = p.read()
    assert frame.size == AUDIO_FRAME and (frame == 7).all() and passed == ["first"]
    frame, passed = p.read()
    assert (frame[:540] == 7).all() and (frame[540:] == 0).all() and passed == []
    assert p.end == p.read_pos == 2 * AUDIO_FRAME  # all played: the next write lands at the read position
    assert p.write(np.ones(100, np.int16)) == 2 * AUDIO_FRAME
    assert p.write(np.ones(100, np.int16)) == 2 * AUDIO_FRAME + 100  # right after what is queued
    assert p.flush() == 200 and p.end == p.read_pos
    assert (p.read()[0] == 0).all()


def test_playout_skip_to_drops_what_was_queued_before():
    p = AudioPlayout()
    p.write(np.arange(2000).astype(np.int16))
    p.skip_to(1000)
    assert p.read(10)[0].tolist() == list(range(1000, 1010))


def test_turn_timeline_follows_underruns():
    """The turn's clock starts where its first sample lands; audio landing late (underrun) moves the rest."""
    t = TurnTimeline()
    t.place(48000, 4800)  # first samples at 1.0 s
    assert t.media_time(0.0) == 1.0 and t.media_time(0.04) == pytest.approx(1.04)
    t.place(48000 + 4800, 4800)  # on time
    assert t.media_time(0.0) == 1.0
    t.place(48000 + 9600 + 2400, 4800)  # 50 ms late: the next frames move by 50 ms
    assert t.media_time(0.0) == pytest.approx(1.05) and t.end_s == pytest.approx(1.05 + 14400 / 48000)
    anchored = TurnTimeline()
    anchored.anchor(2.5)
    assert anchored.media_time(0.2) == pytest.approx(2.7)


def test_video_schedule_shows_the_newest_due_frame():
    s = VideoSchedule(max_late_s=0.5)
    changes = []
    s.on_change = lambda: changes.append(1)
    for i in (2, 0, 1, 3):
        s.push(1.0 + i * 0.04, b"f%d" % i, "turn")
    assert s.earliest() == 1.0 and len(changes) == 4
    assert s.pop_due(0.99) is None
    item = s.pop_due(1.085)  # frames 0, 1 and 2 are due: 2 is shown, 0 and 1 skipped
    assert item.jpeg == b"f2" and s.skipped == 2 and s.sent == 1
    assert s.pop_due(1.12).jpeg == b"f3" and len(s) == 0
    s.push(2.0, b"late", "turn")
    assert s.pop_due(2.6) is None and s.skipped == 3  # more than max_late_s behind: not shown at all
    s.push(3.0, b"a", "x")
    s.push(3.04, b"b", "idle")
    assert s.drop(lambda it: it.turn != "x") == 1 and s.earliest() == 3.04


def test_pts_clock_is_strictly_increasing_with_sub_ms_jitter():
    c = PtsClock()
    pts = [c(0.04 * i) for i in range(200)]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert max(abs(p - round(0.04 * i * 90000)) for i, p in enumerate(pts)) <= 44  # <= 0.5 ms
    gaps = {b - a for a, b in zip(pts, pts[1:])}
    assert len(gaps) > 20  # not equally spaced: the page can tell frames apart by RTP timestamp
    assert PtsClock(jitter=0)(1.0) == 90000 and c(0.0) == pts[-1] + 1  # never backwards


def test_frames_fit_and_keep_their_aspect():
    assert fit_size(512, 512) == (512, 512) and fit_size(4000, 3000) == (640, 480) and fit_size(101, 51) == (102, 52)
    wide = np.full((100, 200, 3), 255, np.uint8)
    boxed = letterbox(wide, 64, 64)
    assert boxed.shape == (64, 64, 3) and boxed[0].max() == 0 and boxed[32].min() == 255
    ok, jpeg = cv2.imencode(".jpg", np.full((700, 1400, 3), 128, np.uint8))
    frame = decode_frame(jpeg.tobytes(), None)
    assert (frame.width, frame.height) == (640, 320) and frame.format.name == "bgr24"
    assert (decode_frame(jpeg.tobytes(), (320, 320)).height) == 320
    with pytest.raises(ValueError):
        decode_frame(b"not a jpeg", None)


def test_candidate_filter_keeps_only_allowed_networks():
    sdp = ("v=0\r\na=candidate:1 1 udp 2122194687 127.0.0.1 45735 typ host\r\n"
           "a=candidate:2 1 udp 2122063615 192.0.2.2 36577 typ host\r\n"
           "a=candidate:3 1 udp 2122063615 abcd.local 36577 typ host\r\n"
           "a=candidate:4 1 udp 2122267903 ::1 60559 typ host\r\nm=audio 9\r\n")
    kept, removed = filter_candidates(sdp, ["127.0.0.0/8"])
    assert removed == 3 and "127.0.0.1" in kept and "192.0.2.2" not in kept and "m=audio 9\r\n" in kept
    assert filter_candidates(sdp, []) == (sdp, 0)


def test_turn_credentials_follow_coturns_rest_scheme():
    user, password = turn_credentials("s3cret", "abc", ttl_s=600, now=1000.0)
    assert user == "1600:abc"
    assert password == base64.b64encode(hmac.new(b"s3cret", b"1600:abc", hashlib.sha1).digest()).decode()
    ice = IceSettings(["stun:stun.example:3478", "turn:turn.example:3478"], secret="s3cret")
    servers = ice.servers("x")
    assert servers[0] == {"urls": ["stun:stun.example:3478"]} and servers[1]["username"].endswith(":x")
    # each gateway session relays as a TURN user of its own: the per-user quota (one client's pages) never caps them
    assert ice.configuration("gateway-web-1").iceServers[1].username.endswith(":gateway-web-1")
    assert IceSettings().configuration().iceServers == []  # never aiortc's public STUN default
    split = IceSettings(["turn:coturn:3478"], "u", "p", page_urls=["turn:turn.example.com:3478"])
    assert split.servers(page=True) == [{"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "p"}]
    assert split.configuration().iceServers[0].urls == ["turn:coturn:3478"]
    with pytest.raises(ValueError):
        IceSettings(["http://example"])


def test_percentile():
    assert percentile([], 50) is None and percentile([3.0], 95) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile(list(range(101)), 95) == 95


def test_tracks_pace_on_the_media_clock_with_continuous_timestamps():
    """The audio track sends a 20 ms frame every 20 ms with pts k * 960; the video track sends each frame at its
    media time with pts on the 90 kHz clock; `on_sent` reports the marks and frames that left."""
    from deploy.gateway.tracks import AvatarAudioTrack, AvatarVideoTrack

    ok, jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))

    async def run():
        clock = MediaClock(time.monotonic)
        playout, schedule, sent = AudioPlayout(), VideoSchedule(), []
        audio = AvatarAudioTrack(clock, playout, lambda key, t: sent.append((key, t - clock.t0)))
        video = AvatarVideoTrack(clock, schedule, lambda item, pts, t: sent.append((item.jpeg[:0], t - clock.t0)))
        playout.mark(playout.write(np.ones(96, np.int16)), "voice")
        frames, left = [], []
        for _ in range(10):
            frames.append(await audio.recv())
            left.append(clock.now())
        t = clock.now()
        schedule.push(t + 0.1, jpeg.tobytes(), "turn")
        vf = await video.recv()
        return frames, left, vf, t, sent

    frames, left, vf, t_push, sent = asyncio.run(run())
    assert [f.pts for f in frames] == [frames[0].pts + 960 * k for k in range(10)]
    assert all(f.samples == 960 and f.sample_rate == 48000 for f in frames)
    for f, t in zip(frames, left):  # each left at its media time (the clock runs since the session began)
        assert f.pts / 48000 == pytest.approx(t, abs=0.025)
    assert sent[0][0] == "voice"
    assert vf.pts == pytest.approx((t_push + 0.1) * 90000, abs=50) and (vf.width, vf.height) == (64, 64)
    assert sent[-1][1] == pytest.approx(t_push + 0.1, abs=0.03)
