"""yggdrasil's IPv6 layer: ``src/ipv6rwc/ipv6rwc.go`` and ``icmpv6.go`` of v0.5.12.

Session payloads carry one type byte (``src/core/types.go``): ``1`` is IPv6 traffic,
``2`` is a proto message (nodeinfo, debug), ``0`` is ignored. For traffic, this module
does what ipv6rwc does for a TUN:

* outgoing (:meth:`IPv6Layer.write`): the packet must be IPv6, at least 40 bytes, and
  carry our own address or an address in our /64 as source; the destination picks a
  key from the :class:`KeyStore` (address ``0x02…`` or subnet ``0x03…``). An unknown
  destination is buffered (bounded) and looked up with ``send_lookup`` of the partial
  key (``Address.GetKey``/``Subnet.GetKey``); a ``path_notify`` (or traffic) carrying a
  full key whose address or subnet matches releases the buffer.
* incoming (:meth:`IPv6Layer.read`): IPv6, ≥ 40 bytes, not above our MTU (else an
  ICMPv6 packet-too-big goes back to the sender, as ``readPC`` does), destination is our
  address or subnet, and the source address or subnet must be the one derived from the
  session key that sent it; anything else is DROPPED. What passes is source-authenticated.

Entries expire two minutes after last use (``keyStoreTimeout``); all tables are bounded.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from core.address import address_for_key, partial_key_for_address, subnet_for_key

__all__ = [
    "ICMPV6",
    "ICMPV6_ECHO_REPLY",
    "ICMPV6_ECHO_REQUEST",
    "ICMPV6_PACKET_TOO_BIG",
    "IPV6_HEADER_LEN",
    "MIN_MTU",
    "TYPE_SESSION_DUMMY",
    "TYPE_SESSION_PROTO",
    "TYPE_SESSION_TRAFFIC",
    "EchoMessage",
    "IPv6Header",
    "IPv6Layer",
    "KeyStore",
    "addresses",
    "build_echo",
    "build_icmpv6",
    "build_packet_too_big",
    "icmpv6_checksum",
    "is_mesh_packed",
    "looks_like_ipv6",
    "parse_echo",
]

log = logging.getLogger(__name__)

TYPE_SESSION_DUMMY = 0
TYPE_SESSION_TRAFFIC = 1
TYPE_SESSION_PROTO = 2

IPV6_HEADER_LEN = 40
ICMPV6 = 58
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
MIN_MTU = 1280  # RFC 8200 section 5; ipv6rwc's floor and default
KEY_STORE_TIMEOUT = 120.0  # keyStoreTimeout
PTB_QUOTE = 512  # ipv6rwc quotes the first 512 bytes of the offending packet
_ADDRESS_PREFIX = 0x02
_SUBNET_PREFIX = 0x03


@dataclass(frozen=True)
class IPv6Header:
    """The fixed 40-byte IPv6 header (RFC 8200 section 3)."""

    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes

    @classmethod
    def parse(cls, packet: bytes) -> IPv6Header:
        if len(packet) < IPV6_HEADER_LEN:
            raise ValueError(f"IPv6 packet of {len(packet)} bytes is shorter than its header")
        if packet[0] >> 4 != 6:
            raise ValueError(f"not IPv6 (version {packet[0] >> 4})")
        first, length, nxt, hops = struct.unpack_from("!IHBB", packet)
        return cls(
            traffic_class=(first >> 20) & 0xFF,
            flow_label=first & 0xFFFFF,
            payload_length=length,
            next_header=nxt,
            hop_limit=hops,
            src=bytes(packet[8:24]),
            dst=bytes(packet[24:40]),
        )

    def __bytes__(self) -> bytes:
        first = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return (
            struct.pack("!IHBB", first, self.payload_length, self.next_header, self.hop_limit)
            + self.src
            + self.dst
        )


def addresses(packet: bytes) -> tuple[bytes, bytes]:
    """``(source, destination)`` of an IPv6 packet, after the version and length checks
    of :meth:`IPv6Header.parse` (the per-packet path reads only these two fields)."""
    if len(packet) < IPV6_HEADER_LEN:
        raise ValueError(f"IPv6 packet of {len(packet)} bytes is shorter than its header")
    if packet[0] >> 4 != 6:
        raise ValueError(f"not IPv6 (version {packet[0] >> 4})")
    return packet[8:24], packet[24:40]


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """RFC 4443 section 2.3: one's complement sum over the pseudo-header and message."""
    pseudo = src + dst + struct.pack("!I3xB", len(message), ICMPV6)
    data = pseudo + message + (b"\0" if len(message) % 2 else b"")
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_icmpv6(src: bytes, dst: bytes, mtype: int, code: int, body: bytes) -> bytes:
    """``CreateICMPv6``: hop limit 255, no traffic class or flow label."""
    message = bytearray(struct.pack("!BBH", mtype, code, 0) + body)
    struct.pack_into("!H", message, 2, icmpv6_checksum(src, dst, bytes(message)))
    header = IPv6Header(0, 0, len(message), ICMPV6, 255, src, dst)
    return bytes(header) + bytes(message)


def build_packet_too_big(packet: bytes, mtu: int) -> bytes:
    """The reply ``readPC`` sends for an oversized ``packet``: from its dst to its src."""
    quote = packet[:PTB_QUOTE]
    return build_icmpv6(
        packet[24:40], packet[8:24], ICMPV6_PACKET_TOO_BIG, 0, struct.pack("!I", mtu) + quote
    )


@dataclass(frozen=True)
class EchoMessage:
    src: bytes
    dst: bytes
    mtype: int
    ident: int
    seq: int
    data: bytes


def build_echo(
    src: bytes, dst: bytes, mtype: int, ident: int, seq: int, data: bytes, hop_limit: int = 64
) -> bytes:
    message = bytearray(struct.pack("!BBHHH", mtype, 0, 0, ident, seq) + data)
    struct.pack_into("!H", message, 2, icmpv6_checksum(src, dst, bytes(message)))
    return bytes(IPv6Header(0, 0, len(message), ICMPV6, hop_limit, src, dst)) + bytes(message)


def parse_echo(packet: bytes) -> EchoMessage | None:
    """An ICMPv6 echo request/reply with a valid checksum, else ``None``.

    Only packets whose next header is ICMPv6 directly (no extension headers) count.
    """
    try:
        header = IPv6Header.parse(packet)
    except ValueError:
        return None
    if header.next_header != ICMPV6:
        return None
    end = IPV6_HEADER_LEN + header.payload_length
    message = packet[IPV6_HEADER_LEN:end]
    if len(message) < 8 or end > len(packet):
        return None
    if message[0] not in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) or message[1] != 0:
        return None
    if icmpv6_checksum(header.src, header.dst, message) != 0:
        return None
    ident, seq = struct.unpack_from("!HH", message, 4)
    return EchoMessage(header.src, header.dst, message[0], ident, seq, bytes(message[8:]))


@dataclass
class _KeyInfo:
    key: bytes
    address: bytes
    subnet: bytes
    deadline: float


class KeyStore:
    """``keyStore``: address/subnet → key, with lookups and pending packets."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        send: Callable[[bytes, bytes], None],
        lookup: Callable[[bytes], None],
        timeout: float = KEY_STORE_TIMEOUT,
        max_keys: int = 4096,
        max_pending: int = 1024,
        pending_per_destination: int = 1,
    ) -> None:
        self._clock = clock
        self._send = send
        self._lookup = lookup
        self.timeout = timeout
        self.max_keys = max_keys
        self.max_pending = max_pending
        self.pending_per_destination = pending_per_destination
        self._by_key: OrderedDict[bytes, _KeyInfo] = OrderedDict()
        self._by_address: dict[bytes, _KeyInfo] = {}
        self._by_subnet: dict[bytes, _KeyInfo] = {}
        # destination (16-byte address or 8-byte subnet prefix) -> (packets, deadline)
        self._pending: OrderedDict[bytes, tuple[deque[bytes], float]] = OrderedDict()

    def _live(self, info: _KeyInfo | None) -> _KeyInfo | None:
        if info is not None and info.deadline <= self._clock():
            self._forget(info)
            return None
        return info

    def _forget(self, info: _KeyInfo) -> None:
        if self._by_key.get(info.key) is info:
            del self._by_key[info.key]
        if self._by_address.get(info.address) is info:
            del self._by_address[info.address]
        if self._by_subnet.get(info.subnet) is info:
            del self._by_subnet[info.subnet]

    def expire(self) -> None:
        now = self._clock()
        for info in [i for i in self._by_key.values() if i.deadline <= now]:
            self._forget(info)
        for dest in [d for d, (_, dl) in self._pending.items() if dl <= now]:
            del self._pending[dest]

    def update(self, key: bytes) -> _KeyInfo:
        """``keyStore.update``: remember ``key``; send what waited for it."""
        info = self._live(self._by_key.get(key))
        packets: list[bytes] = []
        if info is None:
            info = _KeyInfo(
                key=key,
                address=address_for_key(key).packed,
                subnet=subnet_for_key(key).network_address.packed[:8],
                deadline=0.0,
            )
            while len(self._by_key) >= self.max_keys:
                self._forget(next(iter(self._by_key.values())))
            self._by_key[key] = info
            self._by_address[info.address] = info
            self._by_subnet[info.subnet] = info
            for dest in (info.address, info.subnet):
                waiting = self._pending.pop(dest, None)
                if waiting is not None and waiting[1] > self._clock():
                    packets.extend(waiting[0])
        info.deadline = self._clock() + self.timeout
        self._by_key.move_to_end(key)
        for packet in packets:
            self._send(key, packet)
        return info

    def key_for(self, address: bytes) -> bytes | None:
        """The full key known for a 16-byte address (node address or in a subnet)."""
        if address[0] == _ADDRESS_PREFIX:
            info = self._live(self._by_address.get(address))
        elif address[0] == _SUBNET_PREFIX:
            info = self._live(self._by_subnet.get(address[:8]))
        else:
            return None
        return info.key if info is not None else None

    def send_to(self, dest: bytes, packet: bytes) -> None:
        """``sendToAddress``/``sendToSubnet`` for a 16-byte destination address."""
        if dest[0] == _ADDRESS_PREFIX:
            index = dest
            info = self._live(self._by_address.get(index))
        elif dest[0] == _SUBNET_PREFIX:
            index = dest[:8]
            info = self._live(self._by_subnet.get(index))
        else:
            raise ValueError(f"{ipaddress.IPv6Address(dest)} is not a mesh destination")
        if info is not None:
            info.deadline = self._clock() + self.timeout
            self._send(info.key, packet)
            return
        # A miss: the partial key to look up (a known key never needs it).
        if dest[0] == _ADDRESS_PREFIX:
            partial = _partial_key(dest)
        else:
            partial = _partial_key(bytes([_ADDRESS_PREFIX]) + dest[1:8] + bytes(8))
        entry = self._pending.pop(index, None)
        queue = entry[0] if entry else deque(maxlen=self.pending_per_destination)
        queue.append(packet)
        while len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
        self._pending[index] = (queue, self._clock() + self.timeout)
        self._lookup(partial)

    def pending(self, dest: bytes) -> int:
        index = dest if dest[0] == _ADDRESS_PREFIX else dest[:8]
        entry = self._pending.get(index)
        return len(entry[0]) if entry and entry[1] > self._clock() else 0


def _partial_key(raw_address: bytes) -> bytes:
    return partial_key_for_address(raw_address)


class IPv6Layer:
    """``ipv6rwc.ReadWriteCloser`` minus the TUN: checks and routes IPv6 packets."""

    def __init__(
        self,
        public_key: bytes,
        *,
        clock: Callable[[], float],
        send: Callable[[bytes, bytes], None],
        lookup: Callable[[bytes], None],
        max_mtu: int,
        mtu: int = MIN_MTU,
        pending_per_destination: int = 1,
    ) -> None:
        self.address = address_for_key(public_key).packed
        self.subnet = subnet_for_key(public_key).network_address.packed[:8]
        self.max_mtu = max_mtu
        self.mtu = MIN_MTU
        self.set_mtu(mtu)
        self._send_session = send
        self.keys = KeyStore(
            clock=clock,
            send=self._send_traffic,
            lookup=lookup,
            pending_per_destination=pending_per_destination,
        )
        self.dropped = 0

    def set_mtu(self, mtu: int) -> None:
        """``SetMTU``: clamp to [1280, MaxMTU]."""
        self.mtu = max(MIN_MTU, min(mtu, self.max_mtu))

    def is_local(self, address: bytes) -> bool:
        return address == self.address or address[:8] == self.subnet

    def _send_traffic(self, key: bytes, packet: bytes) -> None:
        self._send_session(key, bytes([TYPE_SESSION_TRAFFIC]) + packet)

    def check_outgoing(self, packet: bytes) -> bytes:
        """``writePC``'s checks; the destination address. Raises :class:`ValueError`
        saying what is wrong with ``packet``. Slices only: no header object per packet."""
        src, dst = addresses(packet)
        if src != self.address and src[:8] != self.subnet:
            raise ValueError(
                f"source {ipaddress.IPv6Address(src)} is not this node's address "
                f"{ipaddress.IPv6Address(self.address)} or in its subnet"
            )
        if dst[0] not in (_ADDRESS_PREFIX, _SUBNET_PREFIX):
            raise ValueError(f"destination {ipaddress.IPv6Address(dst)} is not in 200::/7")
        return dst

    def write(self, packet: bytes) -> None:
        """``writePC``. Raises :class:`ValueError` saying what is wrong with ``packet``."""
        self.keys.send_to(self.check_outgoing(packet), packet)

    def read(self, source_key: bytes, packet: bytes) -> bytes | None:
        """``readPC`` for one traffic payload: the packet if it passes, else ``None``."""
        try:
            src, dst = addresses(packet)
        except ValueError as exc:
            self._drop(source_key, str(exc))
            return None
        if len(packet) > self.mtu:
            self._send_traffic(source_key, build_packet_too_big(packet, self.mtu))
            self._drop(source_key, f"{len(packet)} bytes is above our MTU {self.mtu}")
            return None
        if dst != self.address and dst[:8] != self.subnet:
            self._drop(source_key, "destination is not our address or subnet")
            return None
        info = self.keys.update(source_key)
        if src != info.address and src[:8] != info.subnet:
            self._drop(
                source_key,
                f"source {ipaddress.IPv6Address(src)} does not belong to the sending key",
            )
            return None
        return packet

    def _drop(self, source_key: bytes, why: str) -> None:
        self.dropped += 1
        log.debug("dropped IPv6 packet from %s: %s", source_key.hex()[:16], why)


def looks_like_ipv6(source_key: bytes, payload: bytes) -> bool:
    """Whether a traffic payload is IPv6 rather than another program's datagram.

    Version 6, a payload length that matches, and both addresses in ``200::/7``. A QUIC
    packet (the other user of this session type) passes by chance with a probability
    below 1e-10: its first byte would have to start with ``0x6``, two connection-ID bytes
    equal the length and two random bytes fall into the mesh prefix. ``source_key`` is
    for the reader; whether the source address belongs to it is :meth:`IPv6Layer.read`'s
    check.
    """
    return (
        len(payload) >= IPV6_HEADER_LEN
        and payload[0] >> 4 == 6
        and int.from_bytes(payload[4:6], "big") == len(payload) - IPV6_HEADER_LEN
        and payload[8] in (_ADDRESS_PREFIX, _SUBNET_PREFIX)
        and payload[24] in (_ADDRESS_PREFIX, _SUBNET_PREFIX)
    )


def is_mesh_packed(address: bytes) -> bool:
    """A 16-byte address in ``200::/7`` (node address or subnet)."""
    return len(address) == 16 and address[0] in (_ADDRESS_PREFIX, _SUBNET_PREFIX)
