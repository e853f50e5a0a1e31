"""One chat stream, sans-IO: bytes in, events out; events to send, bytes out.

Both ends use the same object. The sending end writes envelopes back to back
(pipelined) and the receiving end answers each with an ACK, in order. A frame-level
fault (bad version, oversize, unknown type) puts the connection in ERROR: it answers one
ERROR frame and then only closes. An envelope that does not decode is answered with a
``malformed`` ACK and the stream goes on.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from apps.chat.checks import Refusal
from apps.chat.envelope import Envelope, EnvelopeError
from apps.chat.wire import (
    Ack,
    FrameError,
    FrameParser,
    FrameType,
    WireError,
    encode_frame,
)

__all__ = [
    "AckReceived",
    "ChatConnection",
    "ConnState",
    "EnvelopeReceived",
    "Event",
    "MalformedEnvelope",
    "ProtocolFault",
    "RemoteError",
]

NO_ID = bytes(16)
MAX_IN_FLIGHT = 256  # envelopes sent and not yet acknowledged, per connection


class ConnState(enum.Enum):
    OPEN = "open"
    ERROR = "error"


@dataclass(frozen=True)
class EnvelopeReceived:
    envelope: Envelope
    raw: bytes


@dataclass(frozen=True)
class MalformedEnvelope:
    reason: str


@dataclass(frozen=True)
class AckReceived:
    ack: Ack


@dataclass(frozen=True)
class RemoteError:
    error: WireError


@dataclass(frozen=True)
class ProtocolFault:
    """The remote side broke framing; ``reply`` is the ERROR frame to send before closing."""

    refusal: Refusal
    reason: str
    reply: bytes


Event = EnvelopeReceived | MalformedEnvelope | AckReceived | RemoteError | ProtocolFault


class ChatConnection:
    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.state = ConnState.OPEN
        self._parser = FrameParser()
        self._in_flight: deque[bytes] = deque()
        self._max_in_flight = max_in_flight

    # -- sending ----------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def send_envelope(self, raw: bytes, id_: bytes) -> bytes:
        if self.state is not ConnState.OPEN:
            raise RuntimeError("the chat connection is in error")
        if len(self._in_flight) >= self._max_in_flight:
            raise RuntimeError(f"more than {self._max_in_flight} envelopes unacknowledged")
        self._in_flight.append(id_)
        return encode_frame(FrameType.ENVELOPE, raw)

    @staticmethod
    def send_ack(id_: bytes, refusal: Refusal, reason: str = "") -> bytes:
        return encode_frame(FrameType.ACK, bytes(Ack(id_, int(refusal), reason)))

    # -- receiving --------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is not ConnState.OPEN:
            return []
        try:
            frames = self._parser.feed(data)
        except FrameError as exc:
            return [self._fault(Refusal.from_label(exc.code), str(exc))]
        events: list[Event] = []
        for frame in frames:
            event = self._event(frame.type, frame.payload)
            events.append(event)
            if isinstance(event, ProtocolFault):
                break
        return events

    def _event(self, type_: FrameType, payload: bytes) -> Event:
        if type_ is FrameType.ENVELOPE:
            try:
                return EnvelopeReceived(Envelope.parse(payload), payload)
            except EnvelopeError as exc:
                return MalformedEnvelope(str(exc))
        if type_ is FrameType.ACK:
            try:
                ack = Ack.parse(payload)
            except FrameError as exc:
                return self._fault(Refusal.GARBAGE, str(exc))
            if not self._in_flight:
                return self._fault(Refusal.GARBAGE, "an ack for nothing sent")
            expected = self._in_flight.popleft()
            if ack.id not in (expected, NO_ID):
                return self._fault(Refusal.GARBAGE, "an ack out of order")
            return AckReceived(Ack(expected, ack.code, ack.reason))
        try:
            return RemoteError(WireError.parse(payload))
        except FrameError as exc:
            return self._fault(Refusal.GARBAGE, str(exc))

    def _fault(self, refusal: Refusal, reason: str) -> ProtocolFault:
        self.state = ConnState.ERROR
        reply = encode_frame(FrameType.ERROR, bytes(WireError(int(refusal), reason)))
        return ProtocolFault(refusal, reason, reply)
