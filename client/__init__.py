"""Client side of the talking-head service: SDK (`client.sdk`: the connection; `client.wire`: tensors, errors,
events; `client.turns`: collecting a turn), media files (`client.media`),
command line (`python -m client`).

The SDK names are importable from `client` directly; they load on first use.
"""
from __future__ import annotations

from typing import Any

_SDK_NAMES = ("TalkingHeadClient", "TurnStream", "AvatarInfo")
_WIRE_NAMES = ("StreamEvent", "ClientError", "ServerError", "ProtocolError", "ConnectionFailed", "TurnTimeout")
_TURN_NAMES = ("TurnCollector", "TurnResult", "collect")
_MEDIA_NAMES = ("read_audio", "write_wav", "write_mp4")

__all__ = list(_SDK_NAMES + _WIRE_NAMES + _TURN_NAMES + _MEDIA_NAMES)


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
    raise AttributeError(f"module 'client' has no attribute {name!r}")
