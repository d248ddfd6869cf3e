"""The WebRTC gateway in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by selenium)
opens the gateway's page against the real embedded tritonserver. Its fake microphone plays a spoken question
(espeak-ng) followed by 4 s of silence, in a loop, so the conversation is: a question, the reply, the question
again, which barges in on the reply (asked to be long), and so on.

Checked: the page connects over WebRTC; the spoken question gives a transcript event (the tiny random-weight models
hear no real words, but there is one); the reply's audio arrives (its level, measured in the page with WebAudio,
rises above -60 dBFS where the gateway otherwise sends exact silence); video frames are decoded and the face on
screen is the avatar (a screenshot's video region against the avatar image: correlation of downscaled grey
images); the page measured the latencies; speaking again stops the reply (the server's done event says
`barge_in`, and the voice stops in the page); leaving the page ends the gateway's session. Without a browser: the
page over HTTPS (--tls-cert/--tls-key) and avatar uploads.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import cv2
import numpy as np
import pytest

from deploy.processes import free_ports

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.server
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (make system-deps installs them)")

LONG = {"ignore_eos": True, "max_reply_tokens": 200}  # a reply that is still streaming when the question comes again
LEVEL = 0.001  # the page's AUDIO_LEVEL: RMS over ~10 ms
STOP_WINDOW_MS = 1500  # how long after a barge-in the voice is watched (the next reply comes > 2 s after it)


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    import soundfile as sf

    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is required (make system-deps installs it)"
    folder = tmp_path_factory.mktemp("browser")
    spoken = folder / "spoken.wav"
    subprocess.run([espeak, "-w", str(spoken), "What can you do for me today?"], check=True)
    speech, rate = sf.read(spoken, dtype="float32")
    wav = folder / "question.wav"  # Chromium loops it: question, 4 s of silence (the VAD ends the turn), again
    sf.write(wav, np.concatenate([np.zeros(rate * 3 // 10, np.float32), speech, np.zeros(rate * 4, np.float32)]),
             rate, subtype="PCM_16")
    return wav


@contextlib.contextmanager
def running_gateway(server, *extra: str):
    """`python -m deploy.gateway` on a free port against the test server (ICE on 127.0.0.1 only), its operator's
    listener on another: (the page's base URL, the operator's)."""
    port, stats_port = free_ports(2)
    proc = subprocess.Popen([sys.executable, "-m", "deploy.gateway", "--triton", server.options.grpc_url,
                             "--port", str(port), "--stats-port", str(stats_port), "--ice-host", "127.0.0.1",
                             "--remote-network", "127.0.0.0/8", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("talking-head gateway:"):
                url.append(line.split()[2].rstrip("/"))
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(60), "the gateway did not start:\n" + "".join(lines[-30:])
        yield url[0], f"http://127.0.0.1:{stats_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        print("\n--- gateway log (tail) ---\n" + "".join(lines[-15:]))


@pytest.fixture(scope="module")
def gateway(server):
    with running_gateway(server) as urls:
        yield urls


@pytest.fixture
def browser(question_wav, tmp_path):
    pytest.importorskip("selenium.webdriver", reason="pip install -r requirements-dev.txt (selenium)")
    from loadtests.cross_site import chromium

    driver = chromium(tmp_path / "profile", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      f"--use-file-for-fake-audio-capture={question_wav}", "--autoplay-policy=no-user-gesture-required",
                      "--allow-loopback-in-peer-connection",  # ICE on 127.0.0.1 only, like the gateway (--ice-host)
                      "--window-size=1000,1400")
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script("return {error: th.error, connected: th.connected, frames: th.frames, "
                                  "peak: th.peak, events: th.events.slice(-12)}")
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; page state: {json.dumps(state)[:3000]}")


def events(driver, kind: str) -> list[dict]:
    return driver.execute_script("return th.events.filter(e => e.type === arguments[0])", kind)


def video_region(driver) -> np.ndarray:
    """The video's picture on a screenshot (the element's box less object-fit: contain's bars), grey."""
    box = driver.execute_script("""
        const v = document.getElementById('face'); v.scrollIntoView({block: 'start'});
        const r = v.getBoundingClientRect(), s = Math.min(r.width / v.videoWidth, r.height / v.videoHeight);
        const w = v.videoWidth * s, h = v.videoHeight * s;
        return [r.left + (r.width - w) / 2, r.top + (r.height - h) / 2, w, h, window.devicePixelRatio];""")
    shot = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8), cv2.IMREAD_GRAYSCALE)
    x, y, w, h, dpr = (float(v) for v in box)
    return shot[round(y * dpr):round((y + h) * dpr), round(x * dpr):round((x + w) * dpr)]


def audio_delay_ms(driver) -> float:
    """The page's mean playout delay of the incoming voice (WebRTC stats: jitter buffer delay per emitted sample)."""
    return float(driver.execute_async_script("""const done = arguments[arguments.length - 1];
        pc.getStats().then((report) => { let ms = -1;
          report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio' && s.jitterBufferEmittedCount)
            ms = 1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount; });
          done(ms); });"""))


def likeness(a: np.ndarray, b: np.ndarray, side: int = 32) -> float:
    """Correlation of two grey images scaled to side x side."""
    a, b = (cv2.resize(i, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64).ravel() for i in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


@needs_chromium
def test_talk_to_the_avatar_in_chromium(gateway, browser):
    from ensemble.avatar import demo_avatar_png

    gateway, operator = gateway
    t0 = time.monotonic()
    browser.get(f"{gateway}/?autostart=1&handsfree=1&raw=1&options=" + urllib.parse.quote(json.dumps(LONG)))
    wait_for(browser, "return th.connected", 20, "the WebRTC connection")

    # a spoken question -> turn detection -> a transcript
    wait_for(browser, "return th.events.some(e => e.type === 'transcript')", 40, "the transcript of the question")
    assert [e["state"] for e in events(browser, "vad")][:2] == ["speech_start", "turn_end"]
    assert isinstance(events(browser, "transcript")[0]["text"], str)

    # the reply: audible in the page, and video frames on screen from its first one (matched by RTP timestamp)
    wait_for(browser, f"return th.peak > {LEVEL}", 20, "reply audio above -60 dBFS in WebAudio")
    first = wait_for(browser, "return th.current && th.current.firstAudio != null && th.current.firstFrame != null"
                              " && th.current", 20, "the page's first-audio and first-frame measurements")
    frames = browser.execute_script("return th.frames")
    assert frames >= 15, f"only {frames} video frames presented"
    face = cv2.cvtColor(cv2.imdecode(np.frombuffer(demo_avatar_png(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
    region = video_region(browser)
    score = likeness(region, face)
    assert region.std() > 10 and score > 0.8, f"the video does not show the avatar (correlation {score:.2f})"
    assert likeness(region, face[::-1]) < score - 0.3  # the measure tells the face from another picture

    # speaking again (the looped question) stops the long reply: on the server and in the page
    wait_for(browser, "return th.events.some(e => e.type === 'done' && e.interrupted === 'barge_in')", 30,
             "a done event interrupted by barge_in")
    # The gateway drops the reply's queued audio at once and sends exact silence, and the page closes the gain its
    # voice plays through. Without that gain the interrupted voice would go on for what the browser had buffered:
    # its audio delay (jitter buffer, raised by Chromium's A/V sync to the video's delay), 56-407 ms here and more
    # under load. That tail is a figure, printed (BENCHMARKS.md "WebRTC gateway"); the heard voice is asserted.
    wait_for(browser, f"return th.flushedAt != null && performance.now() - th.flushedAt > {STOP_WINDOW_MS}", 5,
             f"{STOP_WINDOW_MS} ms after it")
    flushed_at, last_loud, last_arrived = browser.execute_script("return [th.flushedAt, th.lastLoud, th.lastArrived]")
    stop_ms, tail_ms = (max(0.0, t - flushed_at) for t in (last_loud, last_arrived))
    delay_ms = audio_delay_ms(browser)
    assert stop_ms < 250, f"the voice was heard {stop_ms:.0f} ms after the barge-in"
    # what the browser still played out of its buffer after the flush (not heard: the gain is closed) depends on its
    # jitter buffer, i.e. on the load: a figure, not a bound (a fresh CI run saw 1598 ms at a 714 ms audio delay); that
    # the gateway drops the queued voice at once is asserted where it happens (test_gateway_session.py,
    # test_speech_barges_in_on_the_reply)
    print(f"\nbarge-in: voice heard until {stop_ms:.0f} ms after `flushed`, still arriving (muted) until "
          f"{tail_ms:.0f} ms; the page's audio delay {delay_ms:.0f} ms")

    # leaving the page ends the session at the gateway
    browser.get("about:blank")
    deadline = time.monotonic() + 10
    while json.load(urllib.request.urlopen(f"{operator}/stats", timeout=5))["active_sessions"]:
        assert time.monotonic() < deadline, "the gateway kept the session of a page that left"
        time.sleep(0.2)
    # a browser keeps the transports' rules: no bound below the data channel refused it anything, but for its checks
    # from addresses outside --remote-network (its other interfaces), which the gateway is told not to try
    stats = json.load(urllib.request.urlopen(f"{operator}/stats", timeout=5))
    with pytest.raises(urllib.error.HTTPError) as page_port:  # the operator's figures are not the page's to give
        urllib.request.urlopen(f"{gateway}/stats", timeout=5)
    assert page_port.value.code == 404
    assert stats["sessions_broke_sctp"] == 0 and set(stats["refused"]) <= {"ice_checks_outside_networks"}, stats
    print(f"\nbrowser: first audio {first['firstAudio']:.0f} ms, first frame {first['firstFrame']:.0f} ms after the "
          f"turn_end event; {frames} frames; avatar likeness {score:.2f}; voice stopped {stop_ms:.0f} ms after the "
          f"barge-in (arriving until {tail_ms:.0f} ms: the page's audio delay {delay_ms:.0f} ms); test body {time.monotonic() - t0:.1f} s")


def test_https_page_and_avatar_upload(server, tmp_path):
    """--tls-cert/--tls-key serve the page over HTTPS (a secure context off localhost); POST /avatar registers an
    uploaded face through avatar_registry (the demo portrait: the default avatar's id), a broken image is refused."""
    import ssl

    from deploy.tls import make_self_signed
    from ensemble.avatar import demo_avatar_png

    tls = make_self_signed(tmp_path / "tls")
    with running_gateway(server, "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)) as (url, _):
        assert url.startswith("https://localhost:")
        context = ssl.create_default_context(cafile=str(tls.root_cert))
        with urllib.request.urlopen(f"{url}/", context=context, timeout=10) as r:
            assert b"Talk to the avatar" in r.read()
        with urllib.request.urlopen(f"{url}/config", context=context, timeout=10) as r:
            config = json.load(r)
        upload = urllib.request.Request(f"{url}/avatar", data=demo_avatar_png(), method="POST")
        with urllib.request.urlopen(upload, context=context, timeout=30) as r:
            info = json.load(r)
        assert info["id"] == config["default_avatar"] and len(info["face_box"]) == 4
        bad = urllib.request.Request(f"{url}/avatar", data=b"not an image", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, context=context, timeout=30)
        assert refused.value.code == 400 and refused.value.read()


@needs_chromium
def test_another_sites_page_cannot_post_offers_or_avatars_for_its_visitor(gateway):
    """A page of another origin POSTs a real offer and the demo portrait to the gateway with fetch in no-cors mode,
    as any website can without asking (RELIABILITY.md, "A tenth pass"). Chromium names the page in `Origin`, and the
    gateway starts no session and stores nothing for it: its visitor then gets a session and an upload of its own.
    Before, the page's offers took the visitor's 4 sessions (the visitor's own offer: 429) and its uploads the
    visitor's upload budget."""
    pytest.importorskip("selenium.webdriver", reason="pip install -r requirements-dev.txt (selenium)")
    import asyncio

    from loadtests.cross_site import as_the_visitor, run_page, serve_page

    page_url, stats_url = gateway
    (site_port,) = free_ports(1)

    def started() -> int:
        with urllib.request.urlopen(f"{stats_url}/stats", timeout=10) as r:
            return json.load(r)["sessions_started"]

    loop = asyncio.new_event_loop()
    try:
        site = loop.run_until_complete(serve_page(site_port))
        before = started()
        sent = loop.run_until_complete(loop.run_in_executor(
            None, run_page, f"http://localhost:{site_port}/page.html?gw={page_url}&offers=6&uploads=31"))
        assert sent == {"offers": 6, "uploads": 31, "network_errors": 0}, sent  # every request went out
        assert started() == before
        visitor = loop.run_until_complete(as_the_visitor(page_url))
        loop.run_until_complete(site.cleanup())
    finally:
        loop.close()
    assert visitor["offer"] == [200, "answered"] and visitor["upload"][0] == 200, visitor
