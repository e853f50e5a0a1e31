"""Ironwood link-layer wire format (``network/wire.go`` and friends, commit 743fe2f).

Every message on a peer link is one *frame*::

    uvarint(len(body))  body = type byte + message fields

Integers are Go ``binary.AppendUvarint`` (LEB128, little-endian groups of 7 bits).
A *path* (tree coordinates, a list of peer ports) is each port as a uvarint followed
by a terminating ``0``. Keys are 32 raw bytes, signatures 64 raw bytes.

Every struct here is a frozen dataclass with ``parse(data)`` (raises
:class:`ValueError` with a precise message on malformed input, never anything else)
and ``__bytes__`` (the message body without the type byte). :func:`encode_frame`
adds the type byte and the length prefix.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "KEY_SIZE",
    "MAX_UINT64",
    "SIG_SIZE",
    "Announce",
    "FrameDecoder",
    "PacketType",
    "PathBroken",
    "PathLookup",
    "PathNotify",
    "PathNotifyInfo",
    "SigReq",
    "SigRes",
    "Traffic",
    "append_path",
    "append_uvarint",
    "chop_path",
    "chop_uvarint",
    "encode_frame",
    "uvarint",
]

KEY_SIZE = 32
SIG_SIZE = 64
MAX_UINT64 = (1 << 64) - 1
_MAX_VARINT_LEN = 10


class PacketType(enum.IntEnum):
    """``wirePacketType`` in ironwood ``network/wire.go``; the order is the wire value."""

    DUMMY = 0
    KEEPALIVE = 1
    SIG_REQ = 2
    SIG_RES = 3
    ANNOUNCE = 4
    BLOOM_FILTER = 5
    PATH_LOOKUP = 6
    PATH_NOTIFY = 7
    PATH_BROKEN = 8
    TRAFFIC = 9


# ---------------------------------------------------------------------------
# primitives


def uvarint(value: int) -> bytes:
    """Go ``binary.AppendUvarint`` of an unsigned 64-bit value."""
    if value < 0 or value > MAX_UINT64:
        raise ValueError(f"uvarint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def append_uvarint(out: bytearray, value: int) -> None:
    out += uvarint(value)


def chop_uvarint(data: bytes | bytearray | memoryview, offset: int) -> tuple[int, int]:
    """Decode a uvarint at ``offset`` the way Go ``binary.Uvarint`` does.

    Returns ``(value, new_offset)``. Raises ValueError when the input ends early or
    the value overflows 64 bits (Go returns ``n <= 0`` in both cases).
    """
    value = 0
    shift = 0
    end = len(data)
    for i in range(_MAX_VARINT_LEN):
        pos = offset + i
        if pos >= end:
            raise ValueError("truncated uvarint")
        byte = data[pos]
        if byte < 0x80:
            if i == _MAX_VARINT_LEN - 1 and byte > 1:
                raise ValueError("uvarint overflows 64 bits")
            return value | (byte << shift), pos + 1
        value |= (byte & 0x7F) << shift
        shift += 7
    raise ValueError("uvarint overflows 64 bits")


def append_path(out: bytearray, path: tuple[int, ...]) -> None:
    for port in path:
        if port == 0:
            raise ValueError("a path may not contain port 0 (it terminates the path)")
        out += uvarint(port)
    out.append(0)


def chop_path(data: bytes | memoryview, offset: int) -> tuple[tuple[int, ...], int]:
    """A zero-terminated list of uvarint ports (``wireDecodePath``)."""
    ports: list[int] = []
    while True:
        port, offset = chop_uvarint(data, offset)
        if port == 0:
            return tuple(ports), offset
        ports.append(port)


def _chop_fixed(data: bytes | memoryview, offset: int, size: int, what: str) -> tuple[bytes, int]:
    end = offset + size
    if end > len(data):
        raise ValueError(f"truncated {what}: need {size} bytes, have {len(data) - offset}")
    return bytes(data[offset:end]), end


def _expect_end(data: bytes | memoryview, offset: int, what: str) -> None:
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} trailing bytes after {what}")


def _check_key(key: bytes, what: str) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"{what} must be {KEY_SIZE} bytes, got {len(key)}")


def _check_sig(sig: bytes, what: str) -> None:
    if len(sig) != SIG_SIZE:
        raise ValueError(f"{what} must be {SIG_SIZE} bytes, got {len(sig)}")


def _check_u64(value: int, what: str) -> None:
    if not 0 <= value <= MAX_UINT64:
        raise ValueError(f"{what} out of uint64 range: {value}")


# ---------------------------------------------------------------------------
# tree messages (router.go)


@dataclass(frozen=True, slots=True)
class SigReq:
    """``routerSigReq``: ask a peer to sign us as its child."""

    seq: int
    nonce: int

    def __post_init__(self) -> None:
        _check_u64(self.seq, "seq")
        _check_u64(self.nonce, "nonce")

    @classmethod
    def chop(cls, data: bytes | memoryview, offset: int) -> tuple[SigReq, int]:
        seq, offset = chop_uvarint(data, offset)
        nonce, offset = chop_uvarint(data, offset)
        return cls(seq, nonce), offset

    @classmethod
    def parse(cls, data: bytes | memoryview) -> SigReq:
        req, offset = cls.chop(data, 0)
        _expect_end(data, offset, "SigReq")
        return req

    def __bytes__(self) -> bytes:
        return uvarint(self.seq) + uvarint(self.nonce)

    def bytes_for_sig(self, node: bytes, parent: bytes) -> bytes:
        return node + parent + bytes(self)


@dataclass(frozen=True, slots=True)
class SigRes:
    """``routerSigRes``: the parent's signature over (node, parent, seq, nonce, port)."""

    seq: int
    nonce: int
    port: int
    psig: bytes

    def __post_init__(self) -> None:
        _check_u64(self.seq, "seq")
        _check_u64(self.nonce, "nonce")
        _check_u64(self.port, "port")
        _check_sig(self.psig, "psig")

    @property
    def req(self) -> SigReq:
        return SigReq(self.seq, self.nonce)

    @classmethod
    def chop(cls, data: bytes | memoryview, offset: int) -> tuple[SigRes, int]:
        req, offset = SigReq.chop(data, offset)
        port, offset = chop_uvarint(data, offset)
        psig, offset = _chop_fixed(data, offset, SIG_SIZE, "SigRes signature")
        return cls(req.seq, req.nonce, port, psig), offset

    @classmethod
    def parse(cls, data: bytes | memoryview) -> SigRes:
        res, offset = cls.chop(data, 0)
        _expect_end(data, offset, "SigRes")
        return res

    def __bytes__(self) -> bytes:
        return uvarint(self.seq) + uvarint(self.nonce) + uvarint(self.port) + self.psig

    def bytes_for_sig(self, node: bytes, parent: bytes) -> bytes:
        return node + parent + uvarint(self.seq) + uvarint(self.nonce) + uvarint(self.port)


@dataclass(frozen=True, slots=True)
class Announce:
    """``routerAnnounce``: a node's tree position, signed by the node and its parent."""

    key: bytes
    parent: bytes
    res: SigRes
    sig: bytes

    def __post_init__(self) -> None:
        _check_key(self.key, "key")
        _check_key(self.parent, "parent")
        _check_sig(self.sig, "sig")

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Announce:
        key, offset = _chop_fixed(data, 0, KEY_SIZE, "Announce key")
        parent, offset = _chop_fixed(data, offset, KEY_SIZE, "Announce parent")
        res, offset = SigRes.chop(data, offset)
        sig, offset = _chop_fixed(data, offset, SIG_SIZE, "Announce signature")
        _expect_end(data, offset, "Announce")
        return cls(key, parent, res, sig)

    def __bytes__(self) -> bytes:
        return self.key + self.parent + bytes(self.res) + self.sig


# ---------------------------------------------------------------------------
# pathfinder messages (pathfinder.go)


@dataclass(frozen=True, slots=True)
class PathLookup:
    source: bytes
    dest: bytes
    from_path: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_key(self.source, "source")
        _check_key(self.dest, "dest")

    @classmethod
    def parse(cls, data: bytes | memoryview) -> PathLookup:
        source, offset = _chop_fixed(data, 0, KEY_SIZE, "PathLookup source")
        dest, offset = _chop_fixed(data, offset, KEY_SIZE, "PathLookup dest")
        from_path, offset = chop_path(data, offset)
        _expect_end(data, offset, "PathLookup")
        return cls(source, dest, from_path)

    def __bytes__(self) -> bytes:
        out = bytearray(self.source + self.dest)
        append_path(out, self.from_path)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class PathNotifyInfo:
    """The signed part of a notify: ``seq`` and the source's coordinates."""

    seq: int
    path: tuple[int, ...]
    sig: bytes = field(default=bytes(SIG_SIZE))

    def __post_init__(self) -> None:
        _check_u64(self.seq, "seq")
        _check_sig(self.sig, "sig")

    @classmethod
    def parse(cls, data: bytes | memoryview) -> PathNotifyInfo:
        seq, offset = chop_uvarint(data, 0)
        path, offset = chop_path(data, offset)
        sig, offset = _chop_fixed(data, offset, SIG_SIZE, "PathNotifyInfo signature")
        _expect_end(data, offset, "PathNotifyInfo")
        return cls(seq, path, sig)

    def bytes_for_sig(self) -> bytes:
        out = bytearray(uvarint(self.seq))
        append_path(out, self.path)
        return bytes(out)

    def same_content(self, other: PathNotifyInfo) -> bool:
        """``pathNotifyInfo.equal``: seq and path, ignoring the signature."""
        return self.seq == other.seq and self.path == other.path

    def __bytes__(self) -> bytes:
        return self.bytes_for_sig() + self.sig


@dataclass(frozen=True, slots=True)
class PathNotify:
    path: tuple[int, ...]
    watermark: int
    source: bytes
    dest: bytes
    info: PathNotifyInfo

    def __post_init__(self) -> None:
        _check_u64(self.watermark, "watermark")
        _check_key(self.source, "source")
        _check_key(self.dest, "dest")

    @classmethod
    def parse(cls, data: bytes | memoryview) -> PathNotify:
        path, offset = chop_path(data, 0)
        watermark, offset = chop_uvarint(data, offset)
        source, offset = _chop_fixed(data, offset, KEY_SIZE, "PathNotify source")
        dest, offset = _chop_fixed(data, offset, KEY_SIZE, "PathNotify dest")
        info = PathNotifyInfo.parse(data[offset:])
        return cls(path, watermark, source, dest, info)

    def __bytes__(self) -> bytes:
        out = bytearray()
        append_path(out, self.path)
        out += uvarint(self.watermark) + self.source + self.dest + bytes(self.info)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class PathBroken:
    path: tuple[int, ...]
    watermark: int
    source: bytes
    dest: bytes

    def __post_init__(self) -> None:
        _check_u64(self.watermark, "watermark")
        _check_key(self.source, "source")
        _check_key(self.dest, "dest")

    @classmethod
    def parse(cls, data: bytes | memoryview) -> PathBroken:
        path, offset = chop_path(data, 0)
        watermark, offset = chop_uvarint(data, offset)
        source, offset = _chop_fixed(data, offset, KEY_SIZE, "PathBroken source")
        dest, offset = _chop_fixed(data, offset, KEY_SIZE, "PathBroken dest")
        _expect_end(data, offset, "PathBroken")
        return cls(path, watermark, source, dest)

    def __bytes__(self) -> bytes:
        out = bytearray()
        append_path(out, self.path)
        out += uvarint(self.watermark) + self.source + self.dest
        return bytes(out)


# ---------------------------------------------------------------------------
# traffic (traffic.go)


@dataclass(frozen=True, slots=True)
class Traffic:
    """A routed packet: ``path`` is the destination's coords, ``from_path`` ours."""

    path: tuple[int, ...]
    from_path: tuple[int, ...]
    source: bytes
    dest: bytes
    watermark: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_u64(self.watermark, "watermark")
        _check_key(self.source, "source")
        _check_key(self.dest, "dest")

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Traffic:
        path, offset = chop_path(data, 0)
        from_path, offset = chop_path(data, offset)
        source, offset = _chop_fixed(data, offset, KEY_SIZE, "Traffic source")
        dest, offset = _chop_fixed(data, offset, KEY_SIZE, "Traffic dest")
        watermark, offset = chop_uvarint(data, offset)
        return cls(path, from_path, source, dest, watermark, bytes(data[offset:]))

    def __bytes__(self) -> bytes:
        out = bytearray()
        append_path(out, self.path)
        append_path(out, self.from_path)
        out += self.source + self.dest + uvarint(self.watermark) + self.payload
        return bytes(out)

    @staticmethod
    def overhead() -> int:
        """Bytes of a traffic frame body (with type byte) besides the payload, empty paths."""
        return 1 + 1 + 1 + KEY_SIZE + KEY_SIZE + len(uvarint(MAX_UINT64))


# ---------------------------------------------------------------------------
# framing (peers.go)


def encode_frame(ptype: PacketType, body: bytes) -> bytes:
    """``uvarint(1 + len(body))``, the type byte, the body."""
    return uvarint(len(body) + 1) + bytes((ptype,)) + body


class FrameDecoder:
    """Sans-IO splitter of a peer byte stream into frame bodies (type byte first).

    A frame longer than ``max_size`` or an empty frame is a remote protocol error
    (ironwood ``ErrOversizedMessage`` / ``ErrEmptyMessage``): :meth:`feed` raises
    ValueError and the link must be closed.
    """

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        buf = self._buf
        pos = 0
        while pos < len(buf):
            try:
                size, start = chop_uvarint(buf, pos)
            except ValueError as exc:
                if str(exc) == "truncated uvarint":
                    break
                raise ValueError(f"bad frame length: {exc}") from None
            if size > self._max:
                raise ValueError(f"oversized frame: {size} bytes (limit {self._max})")
            if size == 0:
                raise ValueError("empty frame")
            end = start + size
            if end > len(buf):
                break
            frames.append(bytes(buf[start:end]))
            pos = end
        del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)
