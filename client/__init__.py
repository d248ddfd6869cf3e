"""Client side of the talking-head service: SDK (`client.sdk`: the connection; `client.aio`: the same for asyncio;
`client.wire`: tensors, errors, events; `client.events`: typed events; `client.turns`: collecting a turn), media
files (`client.media`), command line (`python -m client`).

The SDK names are importable from `client` directly; they load on first use. Installed as a library (the
distribution talking-head-client, client/pyproject.toml) this package is `talking_head.client` and the contract it
reads is `talking_head.contract`.
"""
from __future__ import annotations

from typing import Any

_SDK_NAMES = ("TalkingHeadClient", "TurnStream", "AvatarInfo")
_WIRE_NAMES = ("StreamEvent", "ClientError", "ServerError", "ProtocolError", "ConnectionFailed", "TurnTimeout")
_TURN_NAMES = ("TurnCollector", "TurnResult", "collect")
_MEDIA_NAMES = ("read_audio", "write_wav", "write_mp4")
_AIO_NAMES = ("AsyncTalkingHeadClient", "AsyncTurnStream")
_EVENT_NAMES = ("TurnEvent", "TranscriptEvent", "TextEvent", "PieceEvent", "AudioEvent", "VideoEvent", "DoneEvent",
                "CancelledEvent", "VadEvent", "typed")

__all__ = list(_SDK_NAMES + _WIRE_NAMES + _TURN_NAMES + _MEDIA_NAMES + _AIO_NAMES + _EVENT_NAMES)


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from client import sdk
        return getattr(sdk, name)
    if name in _WIRE_NAMES:
        from client import wire
        return getattr(wire, name)
    if name in _TURN_NAMES:
        from client import turns
        return getattr(turns, name)
    if name in _MEDIA_NAMES:
        from client import media
        return getattr(media, name)
    if name in _AIO_NAMES:
        from client import aio
        return getattr(aio, name)
    if name in _EVENT_NAMES:
        from client import events
        return getattr(events, name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")
