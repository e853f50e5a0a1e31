"""NetStack: userspace TCP/UDP over IPv6, packet in / packet out.

The stack owns the connection table, listening ports, UDP bindings and every timer
(one ``loop.call_at`` handle per connection, cancelled when the connection goes or the
stack closes).  Input packets are processed at once; output is produced in one
*flush* per event-loop iteration, so ACKs for a burst of segments coalesce and small
writes made in one iteration leave as one segment.

The asyncio surface (``create_connection``, ``create_server``,
``create_datagram_endpoint``, ``open_connection``, ``start_server``) lives in
:mod:`core.netstack.aio`; the methods here delegate to it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from core.netstack import aio
from core.netstack.icmpv6 import (
    CODE_PORT_UNREACHABLE,
    TYPE_DEST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    TYPE_ECHO_REQUEST,
    TYPE_PACKET_TOO_BIG,
    IcmpMessage,
)
from core.netstack.ipv6 import (
    HEADER_LEN,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    build_packet,
    parse_packet,
)
from core.netstack.tcp import (
    Connected,
    ConnectionClosed,
    Event,
    TcpConfig,
    TcpConnection,
    TcpState,
    isn_rfc6528,
    reset_for,
)
from core.netstack.tcp_wire import ACK, RST, SYN, TcpSegment
from core.netstack.udp import UDP_HEADER_LEN, UdpDatagram, UdpDemux, UdpHandler

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = ["DEFAULT_MTU", "NetStack", "StackStats", "TcpHandler", "TcpSocket"]

log = logging.getLogger(__name__)

DEFAULT_MTU = 65535  # Yggdrasil's default interface MTU
EPHEMERAL_PORTS = range(49152, 65536)  # RFC 6335 section 6
AddressArg = ipaddress.IPv6Address | str | bytes
ExtraInfoHook = Callable[[ipaddress.IPv6Address], dict[str, Any]]
_P = TypeVar("_P", bound=asyncio.BaseProtocol)
_DP = TypeVar("_DP", bound=asyncio.DatagramProtocol)


def _addr_bytes(addr: AddressArg) -> bytes:
    if isinstance(addr, bytes):
        if len(addr) != 16:
            raise ValueError(f"IPv6 address must be 16 bytes, got {len(addr)}")
        return addr
    try:
        return ipaddress.IPv6Address(addr).packed
    except ValueError as exc:
        raise ValueError(f"{addr!r} is not an IPv6 address: {exc}") from None


class TcpHandler(Protocol):
    """Receives a connection's events (the asyncio transport implements it)."""

    def tcp_event(self, event: Event) -> None:
        """A connection event (connected, data, EOF, closed)."""

    def tcp_pump(self) -> None:
        """Called on every flush, before output: move queued writes into the connection."""


class StackStats:
    """Counters for drops and resets, for logs and tests."""

    def __init__(self) -> None:
        self.malformed = 0
        self.not_for_us = 0
        self.resets_sent = 0
        self.syn_dropped = 0
        self.udp_unreachable = 0
        self.send_errors = 0


class TcpSocket:
    """A connection in the stack's table: the sans-IO connection plus its addresses,
    its handler and its timer."""

    __slots__ = ("conn", "handler", "key", "local", "remote", "timer", "timer_at")

    def __init__(self, conn: TcpConnection, local: bytes, remote: bytes, handler: TcpHandler):
        self.conn = conn
        self.local = local
        self.remote = remote
        self.key = (local, conn.local_port, remote, conn.remote_port)
        self.handler = handler
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None


class _Listener:
    def __init__(self, port: int, host: bytes | None, on_accept: Callable[[TcpSocket], TcpHandler]):
        self.port = port
        self.host = host
        self.on_accept = on_accept
        self.half_open = 0


class _Accepting:
    """Handler of a passive connection until its handshake completes."""

    def __init__(self, stack: NetStack, listener: _Listener, sock: TcpSocket):
        self._stack = stack
        self._listener = listener
        self._sock = sock

    def tcp_event(self, event: Event) -> None:
        if isinstance(event, Connected | ConnectionClosed):
            self._listener.half_open -= 1
        if isinstance(event, Connected):
            if self._stack.listener_for(self._sock.local, self._sock.conn.local_port) is None:
                self._sock.conn.abort()  # the server closed meanwhile
                return
            self._sock.handler = self._listener.on_accept(self._sock)
            self._sock.handler.tcp_event(event)

    def tcp_pump(self) -> None:
        pass


class NetStack:
    """A userspace IPv6 host owning ``local_addresses``.

    ``send_packet`` is called with every outgoing IPv6 packet; call
    :meth:`receive_packet` with every incoming one (from the event loop's thread).
    ``extra_info(peer_address)`` may add entries (e.g. ``peer_key``) to every
    transport's ``get_extra_info``.
    """

    def __init__(
        self,
        local_addresses: Iterable[AddressArg],
        send_packet: Callable[[bytes], None],
        *,
        mtu: int = DEFAULT_MTU,
        loop: asyncio.AbstractEventLoop | None = None,
        tcp_config: TcpConfig | None = None,
        extra_info: ExtraInfoHook | None = None,
        syn_backlog: int = 256,
        max_connections: int = 16384,
        hop_limit: int = 64,
        icmp_errors: bool = True,
    ) -> None:
        if not 1280 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} out of range: IPv6 needs 1280..65535")
        self._local = {_addr_bytes(a) for a in local_addresses}
        if not self._local:
            raise ValueError("NetStack needs at least one local IPv6 address")
        self._primary = next(iter(sorted(self._local)))
        self._send_packet = send_packet
        self.mtu = mtu
        self._loop = loop or asyncio.get_running_loop()
        base = tcp_config or TcpConfig()
        self.tcp_config = replace(base, mss=min(base.mss, mtu - HEADER_LEN - 20))
        self.extra_info = extra_info
        self.syn_backlog = syn_backlog
        self.max_connections = max_connections
        self.hop_limit = hop_limit
        self.icmp_errors = icmp_errors
        self.stats = StackStats()
        self._secret = os.urandom(16)
        self._rand = random.Random(os.urandom(8))
        self._tcp: dict[tuple[bytes, int, bytes, int], TcpSocket] = {}
        self._listeners: dict[tuple[bytes | None, int], _Listener] = {}
        self._udp = UdpDemux()
        self._dirty: dict[TcpSocket, None] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._closed = False
        self._handlers: dict[int, Callable[[bytes, bytes, memoryview, memoryview], None]] = {
            PROTO_TCP: self._tcp_input,
            PROTO_UDP: self._udp_input,
            PROTO_ICMPV6: self._icmp_input,
        }

    # ------------------------------------------------------------------ properties
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def local_addresses(self) -> frozenset[ipaddress.IPv6Address]:
        return frozenset(ipaddress.IPv6Address(a) for a in self._local)

    @property
    def connection_count(self) -> int:
        return len(self._tcp)

    def owns(self, addr: bytes) -> bool:
        return addr in self._local

    def default_source(self) -> bytes:
        return self._primary

    # ------------------------------------------------------------------ input
    def receive_packet(self, pkt: bytes | bytearray | memoryview) -> None:
        """Process one incoming IPv6 packet. Malformed input is counted and dropped."""
        if self._closed:
            return
        try:
            packet = parse_packet(pkt)
        except ValueError as exc:
            self.stats.malformed += 1
            log.debug("dropped packet: %s", exc)
            return
        hdr = packet.header
        if hdr.dst not in self._local:
            self.stats.not_for_us += 1
            return
        handler = self._handlers.get(packet.protocol)
        if handler is None:
            self.stats.not_for_us += 1
            return
        try:
            handler(hdr.src, hdr.dst, packet.payload, memoryview(pkt))
        except ValueError as exc:
            self.stats.malformed += 1
            log.debug("dropped packet from %s: %s", hdr.source, exc)

    def _tcp_input(self, src: bytes, dst: bytes, data: memoryview, _pkt: memoryview) -> None:
        seg = TcpSegment.parse(data, src, dst)
        key = (dst, seg.dst_port, src, seg.src_port)
        sock = self._tcp.get(key)
        now = self._loop.time()
        if sock is not None:
            conn = sock.conn
            if conn.state is TcpState.TIME_WAIT and seg.flags & (SYN | ACK | RST) == SYN:
                self._remove(sock)  # a new incarnation reuses the 4-tuple (RFC 6191 spirit)
            else:
                conn.receive_segment(seg, now)
                self.mark_dirty(sock)
                return
        if seg.flags & (SYN | ACK | RST) == SYN:
            listener = self.listener_for(dst, seg.dst_port)
            if listener is not None:
                self._passive_open(listener, src, dst, seg, now)
                return
        rst = reset_for(seg)
        if rst is not None:
            self.stats.resets_sent += 1
            self._emit_tcp(dst, src, rst)

    def _passive_open(
        self, listener: _Listener, src: bytes, dst: bytes, seg: TcpSegment, now: float
    ) -> None:
        if listener.half_open >= self.syn_backlog or not self._room_for_one():
            self.stats.syn_dropped += 1  # SYN-flood bound: the peer will retry
            log.debug("SYN to port %d dropped: backlog full", seg.dst_port)
            return
        iss = isn_rfc6528(self._secret, dst, seg.dst_port, src, seg.src_port, now)
        conn = TcpConnection.accept(self.tcp_config, seg, iss, now)
        sock = TcpSocket(conn, dst, src, _NullHandler())
        sock.handler = _Accepting(self, listener, sock)
        listener.half_open += 1
        self._tcp[sock.key] = sock
        self.mark_dirty(sock)

    def _udp_input(self, src: bytes, dst: bytes, data: memoryview, pkt: memoryview) -> None:
        dgram = UdpDatagram.parse(data, src, dst)
        handler = self._udp.lookup(dst, dgram.dst_port, src, dgram.src_port)
        if handler is not None:
            handler.udp_received(dgram.payload, src, dgram.src_port)
            return
        self.stats.udp_unreachable += 1
        if self.icmp_errors:
            msg = IcmpMessage.port_unreachable(pkt)
            self._emit(dst, src, PROTO_ICMPV6, (msg.encode(dst, src),))

    def _icmp_input(self, src: bytes, dst: bytes, data: memoryview, _pkt: memoryview) -> None:
        msg = IcmpMessage.parse(data, src, dst)
        if msg.type == TYPE_ECHO_REQUEST:
            reply = IcmpMessage(TYPE_ECHO_REPLY, 0, msg.body)
            self._emit(dst, src, PROTO_ICMPV6, (reply.encode(dst, src),))
        elif msg.type == TYPE_DEST_UNREACHABLE and msg.code == CODE_PORT_UNREACHABLE:
            inner = msg.invoking_packet
            if len(inner) < HEADER_LEN + UDP_HEADER_LEN or inner[6] != PROTO_UDP:
                return
            isrc, idst = inner[8:24], inner[24:40]
            sport = int.from_bytes(inner[40:42], "big")
            dport = int.from_bytes(inner[42:44], "big")
            handler = self._udp.lookup(isrc, sport, idst, dport)
            if handler is not None:
                handler.udp_error(ConnectionRefusedError(errno.ECONNREFUSED, "port unreachable"))
        elif msg.type == TYPE_PACKET_TOO_BIG:
            self._packet_too_big(msg)

    def _packet_too_big(self, msg: IcmpMessage) -> None:
        """RFC 8201: shrink the MSS of the TCP connection whose segment was too big."""
        inner = msg.invoking_packet
        if len(inner) < HEADER_LEN + 8 or inner[6] != PROTO_TCP:
            return
        key = (
            inner[8:24],
            int.from_bytes(inner[40:42], "big"),
            inner[24:40],
            int.from_bytes(inner[42:44], "big"),
        )
        sock = self._tcp.get(key)
        if sock is None:
            return
        mtu = max(1280, min(msg.mtu, self.mtu))
        seq = int.from_bytes(inner[44:48], "big")
        if sock.conn.path_mtu_changed(mtu - HEADER_LEN - 20, seq):
            log.debug("path MTU to %s is %d", ipaddress.IPv6Address(key[2]), mtu)
            self.mark_dirty(sock)

    # ------------------------------------------------------------------ output
    def _emit(self, src: bytes, dst: bytes, proto: int, parts: tuple[bytes, ...]) -> None:
        if dst in self._local:  # to ourselves: loop back, as the kernel's lo does
            packet = build_packet(src, dst, proto, parts, self.hop_limit)
            self._loop.call_soon(self.receive_packet, packet)
            return
        try:
            self._send_packet(build_packet(src, dst, proto, parts, self.hop_limit))
        except (OSError, ValueError) as exc:  # the link is lossy by nature: drop
            self.stats.send_errors += 1
            log.debug("send_packet failed: %s", exc)

    def _emit_tcp(self, src: bytes, dst: bytes, seg: TcpSegment) -> None:
        self._emit(src, dst, PROTO_TCP, seg.encode_parts(src, dst))

    def mark_dirty(self, sock: TcpSocket) -> None:
        """Schedule ``sock`` for the next flush (events, output, timer)."""
        self._dirty[sock] = None
        if self._flush_handle is None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush_all)

    def flush(self) -> None:
        """Produce output for everything pending now instead of at the end of this loop
        iteration; a packet source calls it after handing over a batch of packets."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush_all()

    def _flush_all(self) -> None:
        self._flush_handle = None
        while self._dirty:
            socks = list(self._dirty)
            self._dirty.clear()
            for sock in socks:
                self._flush(sock)

    def flush_now(self, sock: TcpSocket) -> None:
        self._dirty.pop(sock, None)
        self._flush(sock)

    def _flush(self, sock: TcpSocket) -> None:
        conn = sock.conn
        while (event := conn.next_event()) is not None:
            sock.handler.tcp_event(event)
        sock.handler.tcp_pump()
        now = self._loop.time()
        for seg in conn.segments_to_send(now):
            self._emit_tcp(sock.local, sock.remote, seg)
        if conn.is_closed:
            self._remove(sock)
            return
        deadline = conn.next_deadline()
        if deadline != sock.timer_at:
            if sock.timer is not None:
                sock.timer.cancel()
            sock.timer = (
                None if deadline is None else self._loop.call_at(deadline, self._on_timer, sock)
            )
            sock.timer_at = deadline

    def _on_timer(self, sock: TcpSocket) -> None:
        sock.timer = sock.timer_at = None
        if self._tcp.get(sock.key) is not sock:
            return
        sock.conn.on_timer(self._loop.time())
        self.flush_now(sock)

    def _remove(self, sock: TcpSocket) -> None:
        if self._tcp.get(sock.key) is sock:
            del self._tcp[sock.key]
        if sock.timer is not None:
            sock.timer.cancel()
            sock.timer = None
        while (event := sock.conn.next_event()) is not None:
            sock.handler.tcp_event(event)

    # ------------------------------------------------------------------ TCP API (for aio)
    def listener_for(self, addr: bytes, port: int) -> _Listener | None:
        return self._listeners.get((addr, port)) or self._listeners.get((None, port))

    def tcp_listen(
        self, port: int, host: AddressArg | None, on_accept: Callable[[TcpSocket], TcpHandler]
    ) -> _Listener:
        self._check_open()
        addr = None if host is None else _addr_bytes(host)
        if addr is not None and addr not in self._local:
            raise OSError(errno.EADDRNOTAVAIL, f"{ipaddress.IPv6Address(addr)} is not ours")
        if port == 0:
            port = self._free_listen_port()
        if not 0 < port < 65536:
            raise ValueError(f"TCP port {port} out of range 1..65535")
        taken = (addr, port) in self._listeners or (None, port) in self._listeners
        if taken or (addr is None and any(p == port for _, p in self._listeners)):
            raise OSError(errno.EADDRINUSE, f"TCP port {port} is already listening; pick another")
        listener = _Listener(port, addr, on_accept)
        self._listeners[(addr, port)] = listener
        return listener

    def listening(self, listener: _Listener) -> bool:
        """Whether ``listener`` still owns its port (False after close())."""
        return self._listeners.get((listener.host, listener.port)) is listener

    def tcp_unlisten(self, listener: _Listener) -> None:
        if self._listeners.get((listener.host, listener.port)) is listener:
            del self._listeners[(listener.host, listener.port)]

    def tcp_connect(
        self, remote: AddressArg, port: int, local: AddressArg | None, handler: TcpHandler
    ) -> TcpSocket:
        """Active open; the SYN leaves on the next flush."""
        self._check_open()
        if not 0 < port < 65536:
            raise ValueError(f"TCP port {port} out of range 1..65535")
        raddr = _addr_bytes(remote)
        laddr = self._primary if local is None else _addr_bytes(local)
        if laddr not in self._local:
            raise OSError(errno.EADDRNOTAVAIL, f"{ipaddress.IPv6Address(laddr)} is not ours")
        if not self._room_for_one():
            raise OSError(
                errno.EMFILE,
                f"connection table full ({self.max_connections} live connections); "
                "close some or raise max_connections",
            )
        lport = self._ephemeral(lambda p: (laddr, p, raddr, port) not in self._tcp)
        now = self._loop.time()
        iss = isn_rfc6528(self._secret, laddr, lport, raddr, port, now)
        sock = TcpSocket(
            TcpConnection.open(self.tcp_config, lport, port, iss, now), laddr, raddr, handler
        )
        self._tcp[sock.key] = sock
        self.mark_dirty(sock)
        return sock

    def _room_for_one(self) -> bool:
        """Whether the table can take one more connection; when full, the oldest
        TIME-WAIT entry is dropped to make room (as Linux does when it runs out of
        TIME-WAIT buckets)."""
        if len(self._tcp) < self.max_connections:
            return True
        for sock in self._tcp.values():  # dicts keep insertion order: oldest first
            if sock.conn.state is TcpState.TIME_WAIT:
                self._remove(sock)
                return True
        return False

    def _ephemeral(self, free: Callable[[int], bool]) -> int:
        for _ in range(64):
            port = self._rand.choice(EPHEMERAL_PORTS)
            if free(port):
                return port
        for port in EPHEMERAL_PORTS:
            if free(port):
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free ephemeral port; close some connections")

    def _free_listen_port(self) -> int:
        return self._ephemeral(lambda p: (None, p) not in self._listeners)

    # ------------------------------------------------------------------ UDP API (for aio)
    def udp_bind(
        self,
        host: AddressArg | None,
        port: int,
        handler: UdpHandler,
        remote: tuple[AddressArg, int] | None = None,
    ) -> tuple[bytes | None, int]:
        self._check_open()
        addr = None if host is None else _addr_bytes(host)
        if addr is not None and addr not in self._local:
            raise OSError(errno.EADDRNOTAVAIL, f"{ipaddress.IPv6Address(addr)} is not ours")
        if port == 0:
            port = self._ephemeral(lambda p: not self._udp.is_bound(addr, p))
        rem = None if remote is None else (_addr_bytes(remote[0]), remote[1])
        self._udp.bind(addr, port, handler, rem)
        return addr, port

    def udp_unbind(self, host: bytes | None, port: int) -> None:
        self._udp.unbind(host, port)

    def udp_send(self, src: bytes | None, sport: int, dst: bytes, dport: int, data: bytes) -> None:
        limit = self.mtu - HEADER_LEN - UDP_HEADER_LEN
        if len(data) > limit:
            raise OSError(
                errno.EMSGSIZE, f"datagram of {len(data)} bytes exceeds the MTU; max {limit}"
            )
        src = self._primary if src is None else src
        self._emit(src, dst, PROTO_UDP, UdpDatagram(sport, dport, data).encode_parts(src, dst))

    # ------------------------------------------------------------------ lifecycle
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("NetStack is closed; create a new one")

    def close(self) -> None:
        """Abort every connection (RST to the peers), drop listeners and bindings, cancel
        every timer. Transports see connection_lost."""
        if self._closed:
            return
        for sock in list(self._tcp.values()):
            sock.conn.abort()
            for seg in sock.conn.segments_to_send(self._loop.time()):
                self._emit_tcp(sock.local, sock.remote, seg)
            self._remove(sock)
        self._closed = True
        self._listeners.clear()
        for handler in self._udp.clear():
            handler.udp_closed()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._dirty.clear()

    async def __aenter__(self) -> NetStack:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ asyncio surface
    def create_connection(
        self,
        protocol_factory: Callable[[], _P],
        host: AddressArg,
        port: int,
        *,
        local_address: AddressArg | None = None,
    ) -> Awaitable[tuple[aio.TcpTransport, _P]]:
        return aio.create_connection(
            self, protocol_factory, host, port, local_address=local_address
        )

    def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        port: int,
        host: AddressArg | None = None,
        *,
        start_serving: bool = True,
    ) -> Awaitable[aio.Server]:
        return aio.create_server(self, protocol_factory, port, host, start_serving=start_serving)

    def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], _DP],
        local_addr: tuple[AddressArg | None, int] | None = None,
        remote_addr: tuple[AddressArg, int] | None = None,
    ) -> Awaitable[tuple[aio.DatagramTransport, _DP]]:
        return aio.create_datagram_endpoint(self, protocol_factory, local_addr, remote_addr)

    def open_connection(
        self,
        host: AddressArg,
        port: int,
        *,
        limit: int = 2**16,
        local_address: AddressArg | None = None,
    ) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return aio.open_connection(self, host, port, limit=limit, local_address=local_address)

    def start_server(
        self,
        client_connected_cb: aio.ClientConnectedCallback,
        port: int,
        host: AddressArg | None = None,
        *,
        limit: int = 2**16,
    ) -> Awaitable[aio.Server]:
        return aio.start_server(self, client_connected_cb, port, host, limit=limit)


class _NullHandler:
    def tcp_event(self, event: Event) -> None:
        pass

    def tcp_pump(self) -> None:
        pass
