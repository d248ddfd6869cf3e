"""The WebRTC gateway: talk to the avatar from a browser (`python -m deploy.gateway`, then open the URL it prints).

A browser's microphone comes in over WebRTC (Opus), is resampled to 16 kHz and streamed to the orchestrator as the
session's `{"action": "mic"}` chunks on one gRPC stream (server-side turn detection and barge-in by voice); the
reply goes back as a WebRTC audio track (Opus, 48 kHz) and a video track (VP8 or H.264, the orchestrator's 25 fps
JPEG frames, idle motion while listening), in sync by their RTP timestamps; text, VAD events and latencies go over
a data channel. One process serves many browsers.

    app.py      HTTP: the page, /offer (SDP exchange), /avatar uploads, /config, /stats, /healthz
    session.py  one browser: events -> playout, frames -> schedule, barge-in, idle motion, data channel
    triton.py   the gRPC stream of a session (tritonclient.grpc.aio) and avatar registration
    tracks.py   the aiortc tracks (voice and face out, microphone in)
    media.py    media clock, resampling, playout buffer, turn timelines (pure, tested alone)
    video.py    frame schedule, pts/RTP clock, JPEG -> video frames (pure, tested alone)
    ice.py      ICE candidates and STUN/TURN servers
    limits.py   who a client is and what it may use (sessions, offers, uploads, messages, microphone rate)
    sctp_guard.py, rtcp_guard.py, rtp_guard.py, dtls.py
                what a session's peer may make aiortc hold, walk, send or decode below the data channel and media
    stats.py    latency figures
    static/     index.html, app.js, style.css
"""
