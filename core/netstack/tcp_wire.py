"""TCP segment codec (RFC 9293 section 3.1) with options: MSS (kind 2), window scale
(kind 3, RFC 7323), SACK-permitted and SACK blocks (kinds 4 and 5, RFC 2018) and
timestamps (kind 8, RFC 7323; parsed and encodable, not used by the connection).

The checksum covers the IPv6 pseudo-header, so encoding and verification take the
16-byte source and destination addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from core.netstack.ipv6 import PROTO_TCP, checksum, checksum_add, pseudo_header_sum

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "NO_OPTIONS",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "TcpOptions",
    "TcpSegment",
    "flags_text",
    "reset_for",
]

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"))
_HEADER = struct.Struct("!HHIIBBHHH")
MIN_HEADER_LEN = 20
MAX_OPTIONS_LEN = 40
MAX_WINDOW_SCALE = 14  # RFC 7323 section 2.3

_OPT_EOL, _OPT_NOP, _OPT_MSS, _OPT_WS, _OPT_SACK_OK, _OPT_SACK, _OPT_TS = 0, 1, 2, 3, 4, 5, 8


def flags_text(flags: int) -> str:
    """tcpdump-style flag letters, for logs."""
    return "".join(name for bit, name in _FLAG_NAMES if flags & bit) or "none"


@dataclass(frozen=True, slots=True)
class TcpOptions:
    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None
    sack_blocks: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, data: bytes | memoryview) -> TcpOptions:
        mss = wscale = None
        sack_ok = False
        ts: tuple[int, int] | None = None
        blocks: tuple[tuple[int, int], ...] = ()
        i, n = 0, len(data)
        while i < n:
            kind = data[i]
            if kind == _OPT_EOL:
                break
            if kind == _OPT_NOP:
                i += 1
                continue
            if i + 1 >= n:
                raise ValueError(f"TCP option kind {kind} truncated before its length byte")
            length = data[i + 1]
            if length < 2 or i + length > n:
                raise ValueError(f"TCP option kind {kind} has bad length {length}")
            body = data[i + 2 : i + length]
            if kind == _OPT_MSS:
                if length != 4:
                    raise ValueError(f"TCP MSS option must be 4 bytes, got {length}")
                mss = int.from_bytes(body, "big")
            elif kind == _OPT_WS:
                if length != 3:
                    raise ValueError(f"TCP window scale option must be 3 bytes, got {length}")
                wscale = min(body[0], MAX_WINDOW_SCALE)  # RFC 7323: clamp to 14
            elif kind == _OPT_SACK_OK:
                if length != 2:
                    raise ValueError(f"TCP SACK-permitted option must be 2 bytes, got {length}")
                sack_ok = True
            elif kind == _OPT_TS:
                if length != 10:
                    raise ValueError(f"TCP timestamps option must be 10 bytes, got {length}")
                ts = (int.from_bytes(body[:4], "big"), int.from_bytes(body[4:], "big"))
            elif kind == _OPT_SACK:
                if (length - 2) % 8 or length == 2:
                    raise ValueError(f"TCP SACK option length {length} is not 2 + 8*n")
                raw = bytes(body)
                blocks = tuple(
                    (
                        int.from_bytes(raw[j : j + 4], "big"),
                        int.from_bytes(raw[j + 4 : j + 8], "big"),
                    )
                    for j in range(0, len(raw), 8)
                )
            i += length
        return cls(
            mss=mss, window_scale=wscale, sack_permitted=sack_ok, timestamps=ts, sack_blocks=blocks
        )

    def __bytes__(self) -> bytes:
        out = bytearray()
        if self.mss is not None:
            out += struct.pack("!BBH", _OPT_MSS, 4, self.mss)
        if self.window_scale is not None:
            out += struct.pack("!BBBB", _OPT_NOP, _OPT_WS, 3, self.window_scale)
        if self.sack_permitted:
            out += struct.pack("!BBBB", _OPT_NOP, _OPT_NOP, _OPT_SACK_OK, 2)
        if self.timestamps is not None:
            out += struct.pack("!BBBBII", _OPT_NOP, _OPT_NOP, _OPT_TS, 10, *self.timestamps)
        if self.sack_blocks:
            blocks = self.sack_blocks[:4]
            out += struct.pack("!BBBB", _OPT_NOP, _OPT_NOP, _OPT_SACK, 2 + 8 * len(blocks))
            for left, right in blocks:
                out += struct.pack("!II", left, right)
        return bytes(out)


NO_OPTIONS = TcpOptions()


@dataclass(frozen=True, slots=True)
class TcpSegment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    options: TcpOptions = field(default=NO_OPTIONS)
    urgent: int = 0

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies (data, SYN and FIN each count)."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        src: bytes | None = None,
        dst: bytes | None = None,
    ) -> TcpSegment:
        """Decode a segment; with ``src``/``dst`` the checksum is verified too."""
        if len(data) < MIN_HEADER_LEN:
            raise ValueError(f"TCP segment too short: {len(data)} bytes, header needs 20")
        sport, dport, seq, ack, off, flags, window, _csum, urgent = _HEADER.unpack_from(data)
        hlen = (off >> 4) * 4
        if hlen < MIN_HEADER_LEN or hlen > len(data):
            raise ValueError(f"TCP data offset {hlen} invalid for a {len(data)}-byte segment")
        if src is not None and dst is not None:
            partial = pseudo_header_sum(src, dst, PROTO_TCP, len(data))
            if (partial + checksum_add(data)) % 0xFFFF != 0:
                raise ValueError("TCP checksum mismatch")
        options = (
            TcpOptions.parse(memoryview(data)[MIN_HEADER_LEN:hlen]) if hlen > 20 else NO_OPTIONS
        )
        return cls(
            src_port=sport,
            dst_port=dport,
            seq=seq,
            ack=ack,
            flags=flags,
            window=window,
            payload=bytes(memoryview(data)[hlen:]),
            options=options,
            urgent=urgent,
        )

    def _header(self, csum: int) -> bytes:
        opts = bytes(self.options) if self.options is not NO_OPTIONS else b""
        if len(opts) % 4:
            opts += b"\x00" * (4 - len(opts) % 4)
        if len(opts) > MAX_OPTIONS_LEN:
            raise ValueError(f"TCP options take {len(opts)} bytes; the header allows 40")
        hlen = MIN_HEADER_LEN + len(opts)
        return (
            _HEADER.pack(
                self.src_port,
                self.dst_port,
                self.seq,
                self.ack,
                (hlen // 4) << 4,
                self.flags,
                self.window,
                csum,
                self.urgent,
            )
            + opts
        )

    def encode_parts(self, src: bytes, dst: bytes) -> tuple[bytes, bytes]:
        """(header with checksum, payload): join them after an IPv6 header."""
        head = self._header(0)
        partial = pseudo_header_sum(src, dst, PROTO_TCP, len(head) + len(self.payload))
        csum = checksum(partial, checksum_add(head), checksum_add(self.payload))
        return self._header(csum), self.payload

    def encode(self, src: bytes, dst: bytes) -> bytes:
        head, payload = self.encode_parts(src, dst)
        return head + payload

    def __bytes__(self) -> bytes:
        """The segment with a zero checksum field (use :meth:`encode` for the wire)."""
        return self._header(0) + self.payload

    def __repr__(self) -> str:
        return (
            f"TcpSegment({self.src_port}->{self.dst_port} [{flags_text(self.flags)}] "
            f"seq={self.seq} ack={self.ack} win={self.window} len={len(self.payload)})"
        )


def reset_for(seg: TcpSegment) -> TcpSegment | None:
    """The RST answering ``seg`` when no connection exists (RFC 9293 3.10.7.1)."""
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return TcpSegment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    return TcpSegment(
        seg.dst_port, seg.src_port, 0, (seg.seq + seg.seg_len) & 0xFFFFFFFF, RST | ACK, 0
    )
