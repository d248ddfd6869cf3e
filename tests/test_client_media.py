"""client.media: WAV/MP4 writing and audio reading round trips (no server needed)."""
from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import soundfile as sf

from client import media
from export.contract import media as C


def tone(seconds: float, rate: int, hz: float = 440.0, amp: float = 0.3, extra: int = 0) -> np.ndarray:
    n = int(round(seconds * rate)) + extra
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spectrum)])


def jpeg_frames(n: int, width: int, height: int) -> tuple[list[bytes], list[int]]:
    """Frames of distinct flat gray levels (to check order after decoding)."""
    levels = [int(20 + (i * 37) % 200) for i in range(n)]
    frames = []
    for lv in levels:
        img = np.full((height, width, 3), lv, np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        frames.append(buf.tobytes())
    return frames, levels


# ---------------------------------------------------------------- WAV / read_audio

def test_wav_round_trip_pcm16(tmp_path):
    a = tone(1.0, 16000)
    path = tmp_path / "a.wav"
    media.write_wav(path, a, 16000)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    b = media.read_audio(path, rate=16000)
    assert b.dtype == np.float32 and b.ndim == 1
    assert b.size == a.size
    np.testing.assert_allclose(b, a, atol=1e-3)


def test_wav_round_trip_float_exact(tmp_path):
    a = tone(0.5, 22050, extra=3)
    path = tmp_path / "a.wav"
    media.write_wav(path, a, 22050, subtype="FLOAT")
    b, rate = sf.read(str(path), dtype="float32")
    assert rate == 22050
    np.testing.assert_array_equal(b, a)


def test_write_wav_clips_and_accepts_column_vectors(tmp_path):
    path = tmp_path / "a.wav"
    media.write_wav(path, np.array([[2.0], [-2.0], [0.5]], np.float32), 16000)
    b, _ = sf.read(str(path), dtype="float32")
    np.testing.assert_allclose(b, [1.0, -1.0, 0.5], atol=1e-4)
    with pytest.raises(ValueError):
        media.write_wav(path, np.zeros((2, 10), np.float32), 16000)


def test_resample_22050_to_16000_gives_the_right_length(tmp_path):
    a = tone(2.0, 22050, extra=17)
    path = tmp_path / "in22k.wav"
    sf.write(str(path), a, 22050, subtype="FLOAT")
    b = media.read_audio(path, rate=16000)
    expected = a.size * 16000 / 22050
    assert b.dtype == np.float32
    assert abs(b.size - expected) <= 1, (b.size, expected)
    assert abs(dominant_hz(b, 16000) - 440) < 2
    # Level kept (away from the edges).
    assert abs(np.abs(b[1000:-1000]).max() - 0.3) < 0.01


def test_read_audio_downmixes_stereo_and_decodes_other_formats(tmp_path):
    rate = 44100
    left, right = tone(1.0, rate, 440), tone(1.0, rate, 440)
    flac = tmp_path / "stereo.flac"
    sf.write(str(flac), np.stack([left, right], axis=1), rate, format="FLAC")
    b = media.read_audio(flac)  # default: the server's input rate
    assert abs(b.size - rate * 16000 / rate) <= 1
    assert abs(dominant_hz(b, C.INPUT_SAMPLE_RATE) - 440) < 2
    assert np.abs(b).max() > 0.2  # a mean of two equal channels keeps the level (not silence)

    ogg = tmp_path / "mono.ogg"
    sf.write(str(ogg), left, rate, format="OGG", subtype="VORBIS")
    c = media.read_audio(ogg, rate=16000)
    assert abs(c.size - 16000) < 1100  # codec padding is allowed
    assert abs(dominant_hz(c, 16000) - 440) < 2


def test_read_audio_without_audio_stream_fails(tmp_path):
    frames, _ = jpeg_frames(3, 32, 32)
    path = tmp_path / "video_only.mp4"
    media.write_mp4(path, frames, None)
    with pytest.raises(ValueError, match="no audio stream"):
        media.read_audio(path)


# ---------------------------------------------------------------- MP4

def probe(path):
    with av.open(str(path)) as c:
        streams = [(s.type, s.codec_context.name) for s in c.streams]
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        info = {"streams": streams}
        if v is not None:
            info.update(fps=v.average_rate, nb_frames=v.frames, width=v.codec_context.width,
                        height=v.codec_context.height, pix_fmt=v.codec_context.pix_fmt)
        if a is not None:
            info.update(audio_rate=a.codec_context.sample_rate, audio_channels=a.codec_context.channels,
                        audio_stream_s=float(a.duration * a.time_base))
    decoded = {}
    with av.open(str(path)) as c:
        if c.streams.video:
            vframes = list(c.decode(video=0))
            decoded["frames"] = vframes
            decoded["pts_s"] = [float(f.pts * f.time_base) for f in vframes]
            decoded["means"] = [float(f.to_ndarray(format="gray").mean()) for f in vframes]
    with av.open(str(path)) as c:
        if c.streams.audio:
            decoded["audio_samples"] = sum(f.samples for f in c.decode(audio=0))
    return info, decoded


def test_mp4_has_one_h264_and_one_aac_stream_with_right_counts(tmp_path):
    rate, fps = C.OUTPUT_SAMPLE_RATE, C.VIDEO_FPS
    a = tone(2.3, rate, extra=17)
    n_frames = C.video_frames_for_samples(a.size)  # 58, what the server sends for this audio
    frames, levels = jpeg_frames(n_frames, 96, 96)
    path = tmp_path / "answer.mp4"
    media.write_mp4(path, frames, a, rate)

    info, dec = probe(path)
    assert sorted(info["streams"]) == [("audio", "aac"), ("video", "h264")]
    assert info["fps"] == 25
    assert info["nb_frames"] == n_frames
    assert len(dec["frames"]) == n_frames
    assert info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (96, 96)
    assert info["audio_rate"] == rate and info["audio_channels"] == 1
    # Frame i at i / fps, in order.
    np.testing.assert_allclose(dec["pts_s"], np.arange(n_frames) / fps, atol=1e-3)
    np.testing.assert_allclose(dec["means"], levels, atol=4)
    # Audio duration within 50 ms of the input (stream header and decoded samples).
    input_s = a.size / rate
    assert abs(info["audio_stream_s"] - input_s) < 0.05
    assert abs(dec["audio_samples"] / rate - input_s) < 0.05


def test_mp4_dropped_slots_repeat_the_frame_before_at_a_constant_rate(tmp_path):
    """Slots the server dropped (late frames) and slots after the last frame still get a frame: the video has
    audio x 25 frames (rounded up) at a constant 25 fps, each slot showing the latest frame made for it."""
    rate, fps = C.OUTPUT_SAMPLE_RATE, C.VIDEO_FPS
    a = tone(0.8, rate)  # 20 slots
    frames, levels = jpeg_frames(4, 64, 64)
    slots = [0, 1, 5, 9]  # 2-4 and 6-8 dropped, 10-19 never made
    path = tmp_path / "gaps.mp4"
    media.write_mp4(path, frames, a, rate, frame_indices=slots)
    info, dec = probe(path)
    expected = C.video_frames_for_samples(a.size)
    assert info["fps"] == fps and len(dec["frames"]) == expected == 20
    np.testing.assert_allclose(dec["pts_s"], np.arange(expected) / fps, atol=1e-3)
    shown = [levels[max(k for k, slot in enumerate(slots) if slot <= i)] for i in range(expected)]
    np.testing.assert_allclose(dec["means"], shown, atol=4)


def test_mp4_audio_content_survives(tmp_path):
    rate = C.OUTPUT_SAMPLE_RATE
    a = tone(1.0, rate, hz=300)
    frames, _ = jpeg_frames(25, 64, 48)
    path = tmp_path / "a.mp4"
    media.write_mp4(path, frames, a, rate)
    b = media.read_audio(path, rate=rate)
    assert abs(dominant_hz(b[: a.size], rate) - 300) < 3
    mid = b[a.size // 4: 3 * a.size // 4]  # away from the codec's edge transients
    assert abs(np.sqrt(np.mean(mid ** 2)) - 0.3 / np.sqrt(2)) < 0.03


def test_mp4_odd_dimensions_are_made_even(tmp_path):
    frames, levels = jpeg_frames(10, 101, 75)
    path = tmp_path / "odd.mp4"
    media.write_mp4(path, frames, tone(0.4, 22050), 22050)
    info, dec = probe(path)
    assert (info["width"], info["height"]) == (102, 76)
    assert info["nb_frames"] == 10
    np.testing.assert_allclose(dec["means"], levels, atol=4)


def test_mp4_frames_of_other_sizes_are_resized(tmp_path):
    a, _ = jpeg_frames(2, 64, 64)
    b, _ = jpeg_frames(2, 128, 96)
    path = tmp_path / "mixed.mp4"
    media.write_mp4(path, a + b, None)
    info, dec = probe(path)
    assert info["streams"] == [("video", "h264")]
    assert (info["width"], info["height"], len(dec["frames"])) == (64, 64, 4)


def test_mp4_other_fps(tmp_path):
    frames, _ = jpeg_frames(30, 32, 32)
    path = tmp_path / "30.mp4"
    media.write_mp4(path, frames, tone(1.0, 16000), 16000, fps=30)
    info, dec = probe(path)
    assert info["fps"] == Fraction(30) and len(dec["frames"]) == 30
    assert abs(info["audio_stream_s"] - 1.0) < 0.05


def test_mp4_audio_only_and_nothing(tmp_path):
    path = tmp_path / "audio_only.mp4"
    media.write_mp4(path, [], tone(0.5, 22050), 22050)
    info, dec = probe(path)
    assert info["streams"] == [("audio", "aac")]
    assert abs(info["audio_stream_s"] - 0.5) < 0.05
    with pytest.raises(ValueError):
        media.write_mp4(tmp_path / "empty.mp4", [], np.zeros(0, np.float32), 22050)
    with pytest.raises(ValueError):
        media.write_mp4(tmp_path / "bad.mp4", [b"not a jpeg"], None)
