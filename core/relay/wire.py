"""The relay protocol on the wire (sans-IO): frames, requests, answers and refusal codes.

One TCP stream over the mesh (port :data:`RELAY_PORT`), one request at a time, each
answered before the next is read. A frame is::

    u32  length of what follows (type + payload), big-endian, at most MAX_FRAME
    u8   type
    ...  payload

Requests (client to relay, or relay to a person's node for NOTIFY and ANNOUNCE):

    ENROLL    1  a signed record (core.relay.records), kind ENROLL, naming the relay
    LEAVE     2  a signed record, kind LEAVE, naming the relay
    SUBMIT    3  recipient key (32) | item id (16) | sealed blob (the rest)
    FETCH     4  max items (u16) | max bytes (u32)
    DELETE    5  item ids (16 bytes each, at most MAX_DELETE)
    NOTIFY    6  held count (u32): the relay tells a person something is waiting
    ANNOUNCE  7  a signed record, kind ANNOUNCE: the relays a person uses
    STORE     8  a sealed blob for this node (no recipient): a record or message given
                 directly, the way a relay would hand it over (item id (16) | blob)

Replies:

    ANSWER  0x80  code (u8) | reason (UTF-8, at most MAX_REASON bytes)
    ITEM    0x81  item id (16) | submitted, ms since the epoch (u64) | sealed blob
    DONE    0x82  items still held after this batch (u32)

A FETCH is answered by zero or more ITEM frames and one DONE; every other request by
one ANSWER. Codes 0 OK, 10-19 temporary (try later, maybe elsewhere), 20-29 permanent
(do not send this again): :class:`Code`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from core.text import safe_line

__all__ = [
    "ITEM_ID_SIZE",
    "KEY_SIZE",
    "MAX_FRAME",
    "MAX_ITEM",
    "RELAY_PORT",
    "Answer",
    "Code",
    "Delete",
    "Done",
    "Fetch",
    "FrameDecoder",
    "FrameType",
    "Item",
    "Notify",
    "RecordRequest",
    "Store",
    "Submit",
    "WireError",
    "decode",
    "encode",
]

RELAY_PORT = 5320
KEY_SIZE = 32
ITEM_ID_SIZE = 16
MAX_ITEM = 24 * 1024 * 1024  # a sealed blob: a 10 MB attachment base64'd, and room
MAX_FRAME = MAX_ITEM + 1024
MAX_REASON = 512
MAX_DELETE = 1024
_LEN = struct.Struct(">I")
_FETCH = struct.Struct(">HI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class WireError(ValueError):
    """Bytes that are not a well-formed relay frame."""


class FrameType(enum.IntEnum):
    ENROLL = 1
    LEAVE = 2
    SUBMIT = 3
    FETCH = 4
    DELETE = 5
    NOTIFY = 6
    ANNOUNCE = 7
    STORE = 8
    ANSWER = 0x80
    ITEM = 0x81
    DONE = 0x82


class Code(enum.IntEnum):
    """What a relay (or a node) answers. 10-19 temporary, 20-29 permanent."""

    OK = 0
    BUSY = 10
    RECIPIENT_FULL = 11
    SUBMITTER_FULL = 12
    RELAY_FULL = 13
    RATE_LIMITED = 14
    NOT_ALLOWED = 20
    NOT_ENROLLED = 21
    TOO_LARGE = 22
    MALFORMED = 23
    BAD_SIGNATURE = 24
    STALE = 25
    NOT_FOR_ME = 26
    UNKNOWN_SENDER = 27

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @property
    def temporary(self) -> bool:
        return 10 <= self.value < 20

    @classmethod
    def parse(cls, value: int) -> Code:
        try:
            return cls(value)
        except ValueError:
            # an unknown code from a newer peer: its class by its range
            return cls.BUSY if 10 <= value < 20 else cls.MALFORMED


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """ENROLL, LEAVE or ANNOUNCE: a signed record (parsed by core.relay.records)."""

    type: FrameType
    record: bytes


@dataclass(frozen=True, slots=True)
class Submit:
    recipient: bytes
    item_id: bytes
    blob: bytes


@dataclass(frozen=True, slots=True)
class Store:
    item_id: bytes
    blob: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    max_items: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Delete:
    item_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Notify:
    held: int


@dataclass(frozen=True, slots=True)
class Answer:
    code: Code
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.code is Code.OK


@dataclass(frozen=True, slots=True)
class Item:
    item_id: bytes
    submitted_ms: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class Done:
    remaining: int


Message = RecordRequest | Submit | Store | Fetch | Delete | Notify | Answer | Item | Done


def _frame(kind: FrameType, payload: bytes) -> bytes:
    if len(payload) + 1 > MAX_FRAME:
        raise WireError(f"a relay frame is at most {MAX_FRAME} bytes")
    return _LEN.pack(len(payload) + 1) + bytes((kind,)) + payload


def encode(msg: Message) -> bytes:
    """The frame for ``msg``."""
    if isinstance(msg, RecordRequest):
        return _frame(msg.type, msg.record)
    if isinstance(msg, Submit):
        _check_size("recipient", msg.recipient, KEY_SIZE)
        _check_size("item id", msg.item_id, ITEM_ID_SIZE)
        return _frame(FrameType.SUBMIT, msg.recipient + msg.item_id + msg.blob)
    if isinstance(msg, Store):
        _check_size("item id", msg.item_id, ITEM_ID_SIZE)
        return _frame(FrameType.STORE, msg.item_id + msg.blob)
    if isinstance(msg, Fetch):
        return _frame(FrameType.FETCH, _FETCH.pack(msg.max_items, msg.max_bytes))
    if isinstance(msg, Delete):
        if len(msg.item_ids) > MAX_DELETE:
            raise WireError(f"at most {MAX_DELETE} ids in one DELETE")
        for item_id in msg.item_ids:
            _check_size("item id", item_id, ITEM_ID_SIZE)
        return _frame(FrameType.DELETE, b"".join(msg.item_ids))
    if isinstance(msg, Notify):
        return _frame(FrameType.NOTIFY, _U32.pack(msg.held))
    if isinstance(msg, Answer):
        reason = msg.reason.encode("utf-8", "replace")[:MAX_REASON]
        return _frame(FrameType.ANSWER, bytes((msg.code,)) + reason)
    if isinstance(msg, Item):
        _check_size("item id", msg.item_id, ITEM_ID_SIZE)
        return _frame(FrameType.ITEM, msg.item_id + _U64.pack(msg.submitted_ms) + msg.blob)
    if isinstance(msg, Done):
        return _frame(FrameType.DONE, _U32.pack(msg.remaining))
    raise TypeError(f"not a relay message: {msg!r}")


def _check_size(what: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise WireError(f"a {what} is {size} bytes, not {len(value)}")


def decode(kind: int, payload: bytes) -> Message:
    """One frame's type and payload, parsed; :class:`WireError` if malformed."""
    try:
        ftype = FrameType(kind)
    except ValueError:
        raise WireError(f"unknown relay frame type {kind}") from None
    if ftype in (FrameType.ENROLL, FrameType.LEAVE, FrameType.ANNOUNCE):
        return RecordRequest(ftype, payload)
    if ftype is FrameType.SUBMIT:
        head = KEY_SIZE + ITEM_ID_SIZE
        if len(payload) <= head:
            raise WireError("a SUBMIT needs a recipient, an item id and a blob")
        return Submit(payload[:KEY_SIZE], payload[KEY_SIZE:head], payload[head:])
    if ftype is FrameType.STORE:
        if len(payload) <= ITEM_ID_SIZE:
            raise WireError("a STORE needs an item id and a blob")
        return Store(payload[:ITEM_ID_SIZE], payload[ITEM_ID_SIZE:])
    if ftype is FrameType.FETCH:
        if len(payload) != _FETCH.size:
            raise WireError("a FETCH is 6 bytes")
        max_items, max_bytes = _FETCH.unpack(payload)
        return Fetch(max_items, max_bytes)
    if ftype is FrameType.DELETE:
        if len(payload) % ITEM_ID_SIZE or len(payload) // ITEM_ID_SIZE > MAX_DELETE:
            raise WireError(f"a DELETE is up to {MAX_DELETE} ids of {ITEM_ID_SIZE} bytes")
        ids = tuple(payload[i : i + ITEM_ID_SIZE] for i in range(0, len(payload), ITEM_ID_SIZE))
        return Delete(ids)
    if ftype is FrameType.NOTIFY:
        if len(payload) != _U32.size:
            raise WireError("a NOTIFY is 4 bytes")
        return Notify(_U32.unpack(payload)[0])
    if ftype is FrameType.ANSWER:
        if not payload or len(payload) > 1 + MAX_REASON:
            raise WireError("an ANSWER is a code and a short reason")
        # the other side's words: escaped here, they end up in terminals and logs
        return Answer(Code.parse(payload[0]), safe_line(payload[1:].decode("utf-8", "replace")))
    if ftype is FrameType.ITEM:
        head = ITEM_ID_SIZE + _U64.size
        if len(payload) <= head:
            raise WireError("an ITEM needs an id, a time and a blob")
        (ms,) = _U64.unpack(payload[ITEM_ID_SIZE:head])
        return Item(payload[:ITEM_ID_SIZE], ms, payload[head:])
    if len(payload) != _U32.size:
        raise WireError("a DONE is 4 bytes")
    return Done(_U32.unpack(payload)[0])


class FrameDecoder:
    """Bytes in, messages out; bounded: a frame longer than ``max_frame`` is an error
    before its payload is buffered."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= _LEN.size:
            (length,) = _LEN.unpack_from(self._buf)
            if length < 1 or length > self.max_frame:
                raise WireError(f"a relay frame of {length} bytes (at most {self.max_frame})")
            if len(self._buf) < _LEN.size + length:
                break
            kind = self._buf[_LEN.size]
            payload = bytes(self._buf[_LEN.size + 1 : _LEN.size + length])
            del self._buf[: _LEN.size + length]
            out.append(decode(kind, payload))
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
