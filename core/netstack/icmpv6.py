"""The ICMPv6 messages the stack needs (RFC 4443): echo reply, destination
unreachable / port unreachable (sent for UDP to a closed port, parsed when received)
and Packet Too Big (parsed: it lowers a TCP connection's MSS, RFC 8201)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from core.netstack.ipv6 import (
    HEADER_LEN,
    PROTO_ICMPV6,
    checksum,
    checksum_add,
    pseudo_header_sum,
)

__all__ = [
    "CODE_PORT_UNREACHABLE",
    "TYPE_DEST_UNREACHABLE",
    "TYPE_ECHO_REPLY",
    "TYPE_ECHO_REQUEST",
    "TYPE_PACKET_TOO_BIG",
    "IcmpMessage",
]

TYPE_DEST_UNREACHABLE = 1
TYPE_PACKET_TOO_BIG = 2
TYPE_ECHO_REQUEST = 128
TYPE_ECHO_REPLY = 129
CODE_PORT_UNREACHABLE = 4
MIN_MTU = 1280  # an error message must fit in the IPv6 minimum MTU (RFC 4443 2.4(c))
_HEAD = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class IcmpMessage:
    type: int
    code: int
    body: bytes  # everything after the 4-byte type/code/checksum

    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        src: bytes | None = None,
        dst: bytes | None = None,
    ) -> IcmpMessage:
        if len(data) < 4:
            raise ValueError(f"ICMPv6 message too short: {len(data)} bytes")
        if src is not None and dst is not None:
            partial = pseudo_header_sum(src, dst, PROTO_ICMPV6, len(data))
            if (partial + checksum_add(data)) % 0xFFFF:
                raise ValueError("ICMPv6 checksum mismatch")
        kind, code, _ = _HEAD.unpack_from(data)
        return cls(kind, code, bytes(memoryview(data)[4:]))

    def encode(self, src: bytes, dst: bytes) -> bytes:
        head = _HEAD.pack(self.type, self.code, 0)
        partial = pseudo_header_sum(src, dst, PROTO_ICMPV6, 4 + len(self.body))
        csum = checksum(partial, checksum_add(head), checksum_add(self.body))
        return _HEAD.pack(self.type, self.code, csum) + self.body

    def __bytes__(self) -> bytes:
        return _HEAD.pack(self.type, self.code, 0) + self.body

    @classmethod
    def port_unreachable(cls, invoking_packet: bytes | memoryview) -> IcmpMessage:
        room = MIN_MTU - HEADER_LEN - 8
        return cls(
            TYPE_DEST_UNREACHABLE, CODE_PORT_UNREACHABLE, bytes(4) + bytes(invoking_packet[:room])
        )

    @classmethod
    def packet_too_big(cls, mtu: int, invoking_packet: bytes | memoryview) -> IcmpMessage:
        room = MIN_MTU - HEADER_LEN - 8
        return cls(TYPE_PACKET_TOO_BIG, 0, mtu.to_bytes(4, "big") + bytes(invoking_packet[:room]))

    @property
    def mtu(self) -> int:
        """For Packet Too Big: the MTU of the next hop."""
        return int.from_bytes(self.body[:4], "big")

    @property
    def invoking_packet(self) -> bytes:
        """For error messages: the start of the packet that caused it."""
        return self.body[4:]
