"""IPv6 header codec (RFC 8200) and the Internet checksum (RFC 1071) with the IPv6
pseudo-header (RFC 8200 section 8.1).

The checksum never loops over bytes or words in Python: because ``2**16 == 1 (mod
0xFFFF)``, the one's-complement sum of the 16-bit big-endian words of a buffer is
congruent to the buffer read as one big integer, modulo ``0xFFFF``.  ``int.from_bytes``
plus one modulo runs in C over the whole buffer.

Extension headers: hop-by-hop (0), routing (43) and destination options (60) are
skipped; a fragment header (44) is rejected with a clear error (the mesh MTU is
large and the stack never fragments); ESP/AH are treated as upper-layer protocols
nobody here handles.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "HEADER_LEN",
    "PROTO_ICMPV6",
    "PROTO_TCP",
    "PROTO_UDP",
    "IPv6Header",
    "Packet",
    "build_packet",
    "checksum",
    "checksum_add",
    "parse_packet",
    "pseudo_header_sum",
]

HEADER_LEN = 40
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
_HOP_BY_HOP = 0
_ROUTING = 43
_FRAGMENT = 44
_DEST_OPTS = 60
_NO_NEXT = 59
_SKIPPABLE = frozenset((_HOP_BY_HOP, _ROUTING, _DEST_OPTS))
_MAX_EXT_HEADERS = 8  # bound the work one packet can cause

_FIXED = struct.Struct("!IHBB16s16s")


_FOLD_MASKS: dict[int, int] = {}
_FOLD_MASKS_MAX = 32


def checksum_add(data: bytes | bytearray | memoryview) -> int:
    """One's-complement partial sum of ``data`` (odd length is zero padded), modulo 0xFFFF.

    Partial sums of even-length pieces add up: sum(a + b) == sum(a) + sum(b) (mod 0xFFFF).
    """
    # Read little-endian (a little faster than big-endian in CPython): the little-endian
    # one's-complement sum is the byte-swapped big-endian one, and a byte swap of a
    # 16-bit value is a multiplication by 256 modulo 0xFFFF.  An odd final byte lands
    # in the low half of its word either way, which is RFC 1071's zero padding.
    value = int.from_bytes(data, "little")
    # Fold the halves together (hi * 2**(16k) + lo == hi + lo, mod 0xFFFF): a shift, a
    # mask and an add per halving run about twice as fast as one long division.
    while value.bit_length() > 1024:
        half = ((value.bit_length() + 31) // 32) * 16
        mask = _FOLD_MASKS.get(half)
        if mask is None:
            if len(_FOLD_MASKS) >= _FOLD_MASKS_MAX:
                _FOLD_MASKS.clear()
            mask = _FOLD_MASKS[half] = (1 << half) - 1
        value = (value >> half) + (value & mask)
    return (value % 0xFFFF) * 256 % 0xFFFF


def checksum(*partial_sums: int) -> int:
    """Fold partial sums into the 16-bit Internet checksum field value."""
    total = sum(partial_sums) % 0xFFFF
    # A non-zero buffer whose sum is a multiple of 0xFFFF has one's-complement sum
    # 0xFFFF (never 0), whose complement is 0.
    return 0 if total == 0 else 0xFFFF - total


def pseudo_header_sum(src: bytes, dst: bytes, next_header: int, length: int) -> int:
    """Partial sum of the IPv6 pseudo-header (RFC 8200 section 8.1)."""
    return checksum_add(src + dst + struct.pack("!II", length, next_header))


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """The fixed IPv6 header. ``src``/``dst`` are the 16 raw address bytes."""

    src: bytes
    dst: bytes
    next_header: int
    payload_length: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    def __post_init__(self) -> None:
        if len(self.src) != 16 or len(self.dst) != 16:
            raise ValueError("IPv6 addresses must be 16 bytes")
        if not 0 <= self.payload_length <= 0xFFFF:
            raise ValueError(f"IPv6 payload length {self.payload_length} out of range 0..65535")
        if not 0 <= self.flow_label <= 0xFFFFF:
            raise ValueError(f"IPv6 flow label {self.flow_label} out of range")
        if not (0 <= self.next_header <= 255 and 0 <= self.hop_limit <= 255):
            raise ValueError("IPv6 next header and hop limit must fit in one byte")
        if not 0 <= self.traffic_class <= 255:
            raise ValueError("IPv6 traffic class must fit in one byte")

    @property
    def source(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(self.src)

    @property
    def destination(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(self.dst)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> IPv6Header:
        """Parse the 40-byte fixed header at the start of ``data``."""
        if len(data) < HEADER_LEN:
            raise ValueError(f"IPv6 packet too short: {len(data)} bytes, header needs 40")
        word, plen, nh, hlim, src, dst = _FIXED.unpack_from(data)
        version = word >> 28
        if version != 6:
            raise ValueError(f"not an IPv6 packet: version field is {version}")
        return cls(
            src=src,
            dst=dst,
            next_header=nh,
            payload_length=plen,
            hop_limit=hlim,
            traffic_class=(word >> 20) & 0xFF,
            flow_label=word & 0xFFFFF,
        )

    def __bytes__(self) -> bytes:
        word = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return _FIXED.pack(
            word, self.payload_length, self.next_header, self.hop_limit, self.src, self.dst
        )


@dataclass(frozen=True, slots=True)
class Packet:
    """A parsed packet: the fixed header, the upper-layer protocol after extension
    headers, and a view of the upper-layer bytes (no copy)."""

    header: IPv6Header
    protocol: int
    payload: memoryview


def parse_packet(data: bytes | bytearray | memoryview) -> Packet:
    """Parse an IPv6 packet and skip extension headers up to the upper layer.

    Raises ``ValueError`` saying what is wrong for truncated packets, a payload length
    that disagrees with the packet size, fragments, or too many extension headers.
    Trailing bytes beyond the payload length (link padding) are ignored.
    """
    header = IPv6Header.parse(data)
    view = memoryview(data)
    end = HEADER_LEN + header.payload_length
    if end > len(view):
        raise ValueError(
            f"IPv6 payload length says {header.payload_length} bytes but only "
            f"{len(view) - HEADER_LEN} follow the header"
        )
    if header.payload_length == 0:
        raise ValueError("IPv6 jumbograms/zero payload length are not supported")
    offset = HEADER_LEN
    protocol = header.next_header
    for _ in range(_MAX_EXT_HEADERS):
        if protocol == _FRAGMENT:
            raise ValueError("fragmented IPv6 packets are not supported (mesh MTU is large)")
        if protocol not in _SKIPPABLE:
            break
        if offset + 8 > end:
            raise ValueError("IPv6 extension header truncated")
        protocol = view[offset]
        offset += (view[offset + 1] + 1) * 8
        if offset > end:
            raise ValueError("IPv6 extension header runs past the payload")
    else:
        raise ValueError(f"more than {_MAX_EXT_HEADERS} IPv6 extension headers")
    if protocol == _NO_NEXT:
        raise ValueError("IPv6 packet has no upper-layer header (next header 59)")
    return Packet(header=header, protocol=protocol, payload=view[offset:end])


def build_packet(
    src: bytes, dst: bytes, protocol: int, parts: tuple[bytes, ...], hop_limit: int = 64
) -> bytes:
    """Join an IPv6 header and upper-layer ``parts`` into one packet (one copy)."""
    length = sum(len(p) for p in parts)
    if length > 0xFFFF:
        raise ValueError(f"IPv6 payload of {length} bytes exceeds 65535 (no jumbograms)")
    word = 6 << 28
    head = _FIXED.pack(word, length, protocol, hop_limit, src, dst)
    return b"".join((head, *parts))
