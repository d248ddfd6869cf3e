"""A stand-in for a browser page's data channel, for the gateway's session tests: what the session sends it, and
the handler the session gives it for the page's messages."""
from __future__ import annotations

import json


class Channel:
    readyState = "open"

    def __init__(self):
        self.sent: list[dict] = []
        self.handler = None
        self.bufferedAmount = 0  # bytes queued, not yet taken by the page (aiortc's RTCDataChannel says so too)

    def send(self, raw):
        self.sent.append(json.loads(raw))

    def on(self, name, handler):
        self.handler = handler
