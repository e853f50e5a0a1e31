"""Call signaling without I/O: frames, their codec, and the call state table.

One mesh stream per call, caller → callee on :data:`SIGNALING_PORT`. Each frame is one
line of UTF-8 JSON (``\\n``-terminated) of at most :data:`MAX_FRAME_BYTES`, with
``"v": 1`` and a ``"type"``::

    {"v":1,"type":"call","call":"<32 hex>","sdp":"v=0...","media":["audio","video"],"name":"ana"}

See docs/call-protocol.md. :class:`SignalingConnection` is the sans-IO codec (feed
bytes, pull frames, turn frames into bytes); :data:`TRANSITIONS` is every rule of the
call's life; :class:`CallMachine` applies it through one ``_set_state``.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "MAX_FRAME_BYTES",
    "SIGNALING_PORT",
    "TRANSITIONS",
    "VERSION",
    "Accept",
    "CallFrame",
    "CallMachine",
    "CallState",
    "Frame",
    "Hangup",
    "Keepalive",
    "LocalProtocolError",
    "Reject",
    "RemoteProtocolError",
    "Ringing",
    "Role",
    "SignalingConnection",
    "Trigger",
    "Update",
    "decode_frame",
    "encode_frame",
]

log = logging.getLogger(__name__)

SIGNALING_PORT = 5311
VERSION = 1
MAX_FRAME_BYTES = 32 * 1024  # an aiortc offer with audio+video is ~2-4 KiB
MAX_SDP_BYTES = 16 * 1024
MAX_NAME_CHARS = 64
MAX_SOURCE_CHARS = 128
MAX_DETAIL_CHARS = 200
MEDIA_KINDS = ("audio", "video")
REJECT_REASONS = ("declined", "busy", "not-a-contact")
HANGUP_REASONS = ("normal", "no-answer", "failed")
_CALL_ID = re.compile(r"[0-9a-f]{32}")


class RemoteProtocolError(ValueError):
    """The peer sent something that is not a valid frame (the stream is then dropped)."""


class LocalProtocolError(ValueError):
    """This side tried to send something invalid."""


# -- frames -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    call: str
    TYPE: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "call": self.call, **self.fields()}


@dataclass(frozen=True)
class CallFrame(Frame):
    sdp: str
    media: tuple[str, ...]
    name: str = ""
    TYPE: ClassVar[str] = "call"

    def fields(self) -> dict[str, Any]:
        return {"sdp": self.sdp, "media": list(self.media), "name": self.name}


@dataclass(frozen=True)
class Ringing(Frame):
    TYPE: ClassVar[str] = "ringing"


@dataclass(frozen=True)
class Accept(Frame):
    sdp: str
    TYPE: ClassVar[str] = "accept"

    def fields(self) -> dict[str, Any]:
        return {"sdp": self.sdp}


@dataclass(frozen=True)
class Reject(Frame):
    reason: str
    TYPE: ClassVar[str] = "reject"

    def fields(self) -> dict[str, Any]:
        return {"reason": self.reason}


@dataclass(frozen=True)
class Hangup(Frame):
    reason: str = "normal"
    detail: str = ""  # why, for "failed" (a refused SDP says what was wrong)
    TYPE: ClassVar[str] = "hangup"

    def fields(self) -> dict[str, Any]:
        return (
            {"reason": self.reason, "detail": self.detail}
            if self.detail
            else {"reason": self.reason}
        )


@dataclass(frozen=True)
class Keepalive(Frame):
    TYPE: ClassVar[str] = "keepalive"


@dataclass(frozen=True)
class Update(Frame):
    audio_muted: bool | None = None
    video_off: bool | None = None
    source: str | None = None
    TYPE: ClassVar[str] = "update"

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("audio_muted", "video_off", "source"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _text(obj: dict[str, Any], key: str, limit: int, *, required: bool = True) -> str:
    value = obj.get(key, None if required else "")
    if not isinstance(value, str):
        raise RemoteProtocolError(f"{key!r} must be a string")
    if len(value) > limit:
        raise RemoteProtocolError(f"{key!r} is longer than {limit}")
    if any(ord(ch) < 32 and ch not in "\r\n" for ch in value):
        raise RemoteProtocolError(f"{key!r} holds control characters")
    return value


def _choice(obj: dict[str, Any], key: str, allowed: tuple[str, ...], default: str | None) -> str:
    value = obj.get(key, default)
    if value not in allowed:
        raise RemoteProtocolError(f"{key!r} must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _optional_bool(obj: dict[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise RemoteProtocolError(f"{key!r} must be true or false")
    return value


def _media(obj: dict[str, Any]) -> tuple[str, ...]:
    media = obj.get("media")
    if (
        not isinstance(media, list)
        or not media
        or len(set(media)) != len(media)
        or any(m not in MEDIA_KINDS for m in media)
    ):
        raise RemoteProtocolError("'media' must list 'audio' and/or 'video', each once")
    return tuple(m for m in MEDIA_KINDS if m in media)


def _parse_update(call: str, obj: dict[str, Any]) -> Update:
    source = obj.get("source")
    return Update(
        call,
        audio_muted=_optional_bool(obj, "audio_muted"),
        video_off=_optional_bool(obj, "video_off"),
        source=None if source is None else _text(obj, "source", MAX_SOURCE_CHARS),
    )


_PARSERS: dict[str, Callable[[str, dict[str, Any]], Frame]] = {
    "call": lambda c, o: CallFrame(
        c,
        _text(o, "sdp", MAX_SDP_BYTES),
        _media(o),
        _text(o, "name", MAX_NAME_CHARS, required=False),
    ),
    "ringing": lambda c, o: Ringing(c),
    "accept": lambda c, o: Accept(c, _text(o, "sdp", MAX_SDP_BYTES)),
    "reject": lambda c, o: Reject(c, _choice(o, "reason", REJECT_REASONS, None)),
    "hangup": lambda c, o: Hangup(
        c,
        _choice(o, "reason", HANGUP_REASONS, "normal"),
        _text(o, "detail", MAX_DETAIL_CHARS, required=False),
    ),
    "keepalive": lambda c, o: Keepalive(c),
    "update": _parse_update,
}


def decode_frame(line: bytes) -> Frame:
    """One frame from one line (without its ``\\n``); :class:`RemoteProtocolError` says
    exactly what is wrong."""
    if len(line) > MAX_FRAME_BYTES:
        raise RemoteProtocolError(f"frame of {len(line)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("frame must be a JSON object")
    if obj.get("v") != VERSION:
        raise RemoteProtocolError(f"unsupported signaling version {obj.get('v')!r} (want 1)")
    parser = _PARSERS.get(obj.get("type"))  # type: ignore[arg-type]
    if parser is None:
        raise RemoteProtocolError(f"unknown frame type {obj.get('type')!r}")
    call = obj.get("call")
    if not isinstance(call, str) or not _CALL_ID.fullmatch(call):
        raise RemoteProtocolError("'call' must be 32 lowercase hex characters")
    return parser(call, obj)


def encode_frame(frame: Frame) -> bytes:
    data = json.dumps(frame.to_json(), separators=(",", ":")).encode() + b"\n"
    if len(data) > MAX_FRAME_BYTES:
        raise LocalProtocolError(f"{frame.TYPE} frame of {len(data)} bytes is too large")
    decode_frame(data[:-1])  # what we send must be what we accept
    return data


class SignalingConnection:
    """The frame codec of one signaling stream: ``receive_data`` bytes in,
    ``next_event`` frames out (None when more bytes are needed), ``send`` frames to
    bytes. A remote error leaves it broken: every later call raises the same error."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frames: list[Frame] = []
        self._error: RemoteProtocolError | None = None
        self.eof = False

    def receive_data(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if not data:
            self.eof = True
            return
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._take(line)
        if len(self._buffer) > MAX_FRAME_BYTES:
            self._fail(RemoteProtocolError(f"frame exceeds {MAX_FRAME_BYTES} bytes"))

    def _take(self, line: bytes) -> None:
        try:
            self._frames.append(decode_frame(line))
        except RemoteProtocolError as exc:
            self._fail(exc)

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self._buffer.clear()
        raise exc

    def next_event(self) -> Frame | None:
        if self._frames:
            return self._frames.pop(0)
        if self._error is not None:
            raise self._error
        return None

    def send(self, frame: Frame) -> bytes:
        return encode_frame(frame)


# -- the call state table ------------------------------------------------------------
class Role(enum.Enum):
    CALLER = "outgoing"
    CALLEE = "incoming"


class CallState(enum.Enum):
    DIALING = "dialing"  # caller: connecting, offer sent, no ringing yet
    RINGING = "ringing"  # ringing at the callee
    CONNECTING = "connecting"  # answered; ICE/DTLS setting up
    ACTIVE = "active"  # media flows
    ENDED = "ended"


class Trigger(enum.Enum):
    RINGING = "ringing"  # caller got ringing / callee sent it
    ANSWER = "answer"  # callee accepted / caller got accept
    MEDIA_UP = "media-up"
    REJECT = "reject"
    HANGUP = "hangup"
    TIMEOUT = "timeout"
    FAIL = "fail"


_END = CallState.ENDED
_C, _E = Role.CALLER, Role.CALLEE
_S = CallState
_T = Trigger

#: (role, state, trigger) → new state. Anything else is refused.
TRANSITIONS: dict[tuple[Role, CallState, Trigger], CallState] = {
    (_C, _S.DIALING, _T.RINGING): _S.RINGING,
    (_C, _S.DIALING, _T.ANSWER): _S.CONNECTING,  # ringing and accept may arrive together
    (_C, _S.RINGING, _T.ANSWER): _S.CONNECTING,
    (_E, _S.RINGING, _T.ANSWER): _S.CONNECTING,
    (_C, _S.CONNECTING, _T.MEDIA_UP): _S.ACTIVE,
    (_E, _S.CONNECTING, _T.MEDIA_UP): _S.ACTIVE,
}
for _role in Role:
    for _state in (_S.DIALING, _S.RINGING, _S.CONNECTING, _S.ACTIVE):
        if _role is _E and _state is _S.DIALING:
            continue
        for _trigger in (_T.HANGUP, _T.FAIL, _T.TIMEOUT, _T.REJECT):
            if _trigger is _T.REJECT and _state not in (_S.DIALING, _S.RINGING):
                continue
            TRANSITIONS[(_role, _state, _trigger)] = _END


@dataclass
class CallMachine:
    """The state of one call, changed only through :data:`TRANSITIONS` in
    :meth:`_set_state`; ``on_change(old, new)`` is told each change once."""

    role: Role
    on_change: Callable[[CallState, CallState], None] | None = None
    state: CallState = field(init=False)
    answered: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.state = CallState.DIALING if self.role is Role.CALLER else CallState.RINGING

    def can(self, trigger: Trigger) -> bool:
        return (self.role, self.state, trigger) in TRANSITIONS

    def fire(self, trigger: Trigger) -> CallState:
        new = TRANSITIONS.get((self.role, self.state, trigger))
        if new is None:
            raise LocalProtocolError(
                f"{self.role.value} call in state {self.state.value} cannot take {trigger.value}"
            )
        if trigger is Trigger.ANSWER:
            self.answered = True
        self._set_state(new)
        return new

    def _set_state(self, new: CallState) -> None:
        old, self.state = self.state, new
        if old is not new:
            log.debug("call %s: %s -> %s", self.role.value, old.value, new.value)
            if self.on_change is not None:
                self.on_change(old, new)
