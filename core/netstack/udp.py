"""UDP over IPv6 (RFC 768, RFC 8200 section 8.1): datagram codec and endpoint demux."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from core.netstack.ipv6 import PROTO_UDP, checksum, checksum_add, pseudo_header_sum

__all__ = ["UDP_HEADER_LEN", "UdpDatagram", "UdpDemux", "UdpHandler"]

UDP_HEADER_LEN = 8
_HEADER = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    src_port: int
    dst_port: int
    payload: bytes

    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        src: bytes | None = None,
        dst: bytes | None = None,
    ) -> UdpDatagram:
        """Decode; with ``src``/``dst`` the checksum is verified (mandatory over IPv6)."""
        if len(data) < UDP_HEADER_LEN:
            raise ValueError(f"UDP datagram too short: {len(data)} bytes, header needs 8")
        sport, dport, length, csum = _HEADER.unpack_from(data)
        if length < UDP_HEADER_LEN or length > len(data):
            raise ValueError(f"UDP length field {length} invalid for {len(data)} bytes received")
        view = memoryview(data)[:length]
        if src is not None and dst is not None:
            if csum == 0:
                raise ValueError("UDP checksum 0 is not allowed over IPv6 (RFC 8200 section 8.1)")
            if (pseudo_header_sum(src, dst, PROTO_UDP, length) + checksum_add(view)) % 0xFFFF:
                raise ValueError("UDP checksum mismatch")
        return cls(sport, dport, bytes(view[UDP_HEADER_LEN:]))

    def encode_parts(self, src: bytes, dst: bytes) -> tuple[bytes, bytes]:
        length = UDP_HEADER_LEN + len(self.payload)
        if length > 0xFFFF:
            raise ValueError(f"UDP datagram of {length} bytes exceeds 65535")
        head = _HEADER.pack(self.src_port, self.dst_port, length, 0)
        partial = pseudo_header_sum(src, dst, PROTO_UDP, length)
        csum = checksum(partial, checksum_add(head), checksum_add(self.payload)) or 0xFFFF
        return _HEADER.pack(self.src_port, self.dst_port, length, csum), self.payload

    def encode(self, src: bytes, dst: bytes) -> bytes:
        head, payload = self.encode_parts(src, dst)
        return head + payload

    def __bytes__(self) -> bytes:
        """The datagram with a zero checksum field (use :meth:`encode` for the wire)."""
        return _HEADER.pack(self.src_port, self.dst_port, 8 + len(self.payload), 0) + self.payload


class UdpHandler(Protocol):
    """What the demux delivers to (the asyncio datagram transport implements it)."""

    def udp_received(self, data: bytes, src: bytes, src_port: int) -> None: ...

    def udp_error(self, exc: OSError) -> None: ...

    def udp_closed(self) -> None: ...


class UdpDemux:
    """Bound UDP endpoints: ``(local address or None for any, port) -> handler``.

    A specific-address binding wins over a wildcard one; a connected endpoint only
    takes datagrams from its remote address/port (as the kernel does).
    """

    def __init__(self) -> None:
        self._bound: dict[
            tuple[bytes | None, int], tuple[UdpHandler, tuple[bytes, int] | None]
        ] = {}

    def __len__(self) -> int:
        return len(self._bound)

    def is_bound(self, addr: bytes | None, port: int) -> bool:
        if (addr, port) in self._bound or (None, port) in self._bound:
            return True
        return addr is None and any(p == port for _, p in self._bound)

    def bind(
        self,
        addr: bytes | None,
        port: int,
        handler: UdpHandler,
        remote: tuple[bytes, int] | None = None,
    ) -> None:
        if self.is_bound(addr, port):
            raise OSError(98, f"UDP port {port} is already in use; pick another port or 0")
        self._bound[(addr, port)] = (handler, remote)

    def unbind(self, addr: bytes | None, port: int) -> None:
        self._bound.pop((addr, port), None)

    def clear(self) -> list[UdpHandler]:
        """Drop every binding; returns the handlers that were bound."""
        handlers = [h for h, _ in self._bound.values()]
        self._bound.clear()
        return handlers

    def lookup(self, dst: bytes, dport: int, src: bytes, sport: int) -> UdpHandler | None:
        entry = self._bound.get((dst, dport)) or self._bound.get((None, dport))
        if entry is None:
            return None
        handler, remote = entry
        if remote is not None and remote != (src, sport):
            return None
        return handler
