"""The WebRTC gateway at a drain of `talking_head`, against the real embedded tritonserver.

Triton 2.51 does not finish unloading a model while a gRPC stream that sent it requests is open, and a gateway
session's stream is never idle for long (idle-motion requests follow each other). The gateway polls the model's
readiness; once it is not ready, each session ends its stream when no reply plays, so the unload completes; once it
is ready again, the sessions open new streams and go on. Here the gateway runs in the test's event loop with one
session whose page is a stand-in data channel (no browser, no WebRTC connection: the tracks are not pulled); the
server, the gateway's client, streams and session code are the real ones.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest
import tritonclient.grpc as grpcclient
from aiortc import RTCPeerConnection
from page import Channel

from deploy.admin import admin_headers
from deploy.gateway import triton
from deploy.gateway.app import Gateway
from deploy.gateway.session import Session
from export.contract.spec import TALKING_HEAD

pytestmark = pytest.mark.server


async def until(check, timeout_s: float, what: str) -> None:
    """Until check() (a value or an awaitable of one) is true."""
    deadline = time.monotonic() + timeout_s
    while not await _value(check()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        await asyncio.sleep(0.1)


async def _value(v):
    return await v if asyncio.iscoroutine(v) else v


def test_a_drain_ends_the_sessions_streams_so_talking_head_unloads_and_they_resume_after(lone_server):
    server = lone_server
    admin = admin_headers(server.options.admin_key)

    def admin_call(method: str, *args):
        with grpcclient.InferenceServerClient(server.options.grpc_url) as c:
            return getattr(c, method)(*args, headers=admin)

    def state() -> str:
        index = admin_call("get_model_repository_index").models
        return next(m.state for m in index if m.name == TALKING_HEAD.name)

    async def scenario() -> None:
        gw = Gateway(server.options.grpc_url, ready_poll_s=0.2)
        await gw.startup(None)
        session = Session("web-drain", triton.OrchestratorStream(gw.client, "web-drain", gw.default_avatar,
                                                                 {"max_reply_tokens": 4}), gw.stats)
        gw.sessions[session.id] = (session, RTCPeerConnection())
        page = Channel()
        session.attach(page)
        session.start()
        frames = lambda: len(session.schedule)  # noqa: E731  (idle-motion frames queued for the video track)

        async def state_is(want: str) -> bool:
            return await asyncio.to_thread(state) == want

        async def healthz() -> int:
            return (await gw.healthz(None)).status

        try:
            await until(lambda: frames() > 0, 60, "the first idle-motion frames")
            asked, ask = [], gw.client.is_model_ready  # /healthz answers from the poll: callers never reach Triton
            gw.client.is_model_ready = lambda *a, **kw: asked.append(a) or ask(*a, **kw)
            assert [await healthz() for _ in range(100)] == [200] * 100 and asked == []
            gw.client.is_model_ready = ask
            await asyncio.to_thread(admin_call, "unload_model", TALKING_HEAD.name)
            await until(lambda: any(m["type"] == "server" for m in page.sent), 10,
                        "the session to hear of the drain")
            assert page.sent[-1]["state"] == "draining" and session.draining and await healthz() == 503
            await until(lambda: state_is("UNAVAILABLE"), 20, "talking_head to finish unloading (the session's "
                                                             "stream still open?)")
            await asyncio.to_thread(admin_call, "load_model", TALKING_HEAD.name)
            await until(lambda: page.sent[-1] == {"type": "server", "state": "ready"}, 30,
                        "the session to resume")
            assert await healthz() == 200
            queued = frames()
            await until(lambda: frames() > queued, 30, "idle motion on the new stream")
            page.handler(json.dumps({"type": "text", "text": "Hello again."}))
            await until(lambda: any(m["type"] == "done" for m in page.sent), 120,
                        "a typed turn's reply on the new stream")
            assert not [m for m in page.sent if m["type"] == "error"], page.sent
        finally:
            await gw.shutdown(None)

    try:
        asyncio.run(scenario())
    finally:
        if state() != "READY":
            server.reload_model(TALKING_HEAD.name)
