"""Chat frames on a mesh stream (sans-IO): a 6-byte header and a payload.

    offset size field
    0      1    version   (1)
    1      1    type      (FrameType)
    2      4    length    payload bytes, big-endian, at most MAX_PAYLOAD
    6      n    payload

A frame is at most ``MAX_FRAME`` = 65,536 bytes with its header. A header announcing a
longer payload is refused at once (the payload is never buffered). Frame payloads:

- ENVELOPE: a signed envelope (:mod:`apps.chat.envelope`);
- ACK: ``id (16) | code (1) | reason (UTF-8, rest)`` — the answer to one envelope, in the
  order the envelopes came (pipelined); ``code`` 0 = accepted and committed;
- ERROR: ``code (1) | reason`` — the connection is unusable (garbage, oversize) and closes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "MAX_PAYLOAD",
    "VERSION",
    "Ack",
    "Frame",
    "FrameError",
    "FrameParser",
    "FrameType",
    "WireError",
    "encode_frame",
]

VERSION = 1
HEADER = struct.Struct(">BBI")
MAX_FRAME = 64 * 1024
MAX_PAYLOAD = MAX_FRAME - HEADER.size
ID_BYTES = 16


class FrameType(enum.IntEnum):
    ENVELOPE = 1
    ACK = 2
    ERROR = 3


class FrameError(ValueError):
    """The remote side sent bytes that are not a chat frame; ``code`` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes

    def __bytes__(self) -> bytes:
        return encode_frame(self.type, self.payload)


@dataclass(frozen=True)
class Ack:
    """The receiver's answer to one envelope: ``code`` 0 accepted, else a refusal."""

    id: bytes
    code: int
    reason: str = ""

    def __bytes__(self) -> bytes:
        return self.id + bytes([self.code]) + self.reason.encode()[:1024]

    @classmethod
    def parse(cls, payload: bytes) -> Ack:
        if len(payload) < ID_BYTES + 1:
            raise FrameError("garbage", f"an ack is at least 17 bytes, got {len(payload)}")
        try:
            reason = payload[ID_BYTES + 1 :].decode()
        except UnicodeDecodeError:
            raise FrameError("garbage", "an ack's reason is not UTF-8") from None
        return cls(payload[:ID_BYTES], payload[ID_BYTES], reason)


@dataclass(frozen=True)
class WireError:
    """A connection-level refusal (ERROR frame)."""

    code: int
    reason: str

    def __bytes__(self) -> bytes:
        return bytes([self.code]) + self.reason.encode()[:1024]

    @classmethod
    def parse(cls, payload: bytes) -> WireError:
        if not payload:
            raise FrameError("garbage", "an error frame has no code")
        return cls(payload[0], payload[1:].decode(errors="replace"))


def encode_frame(type_: FrameType, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a frame payload is at most {MAX_PAYLOAD} bytes, got {len(payload)}")
    return HEADER.pack(VERSION, int(type_), len(payload)) + payload


class FrameParser:
    """Feed bytes, take whole frames. Buffers at most one frame (``MAX_FRAME``)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            version, type_, length = HEADER.unpack_from(self._buf)
            if version != VERSION:
                raise FrameError("bad-version", f"frame version {version}, this node speaks 1")
            if type_ not in FrameType._value2member_map_:
                raise FrameError("garbage", f"unknown frame type {type_}")
            if length > MAX_PAYLOAD:
                raise FrameError(
                    "oversize", f"a frame of {length} bytes is over the limit of {MAX_PAYLOAD}"
                )
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append(Frame(FrameType(type_), bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return frames
