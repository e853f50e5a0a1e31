"""``quic://HOST:PORT``: the link on one bidirectional QUIC stream (yggdrasil ``link_quic.go``).

As yggdrasil-go (quic-go): QUIC version 1, TLS 1.3 with each node's self-signed
Ed25519 certificate (nobody verifies it: the meta handshake proves the key), no ALPN,
no SNI on dial, a 1-minute idle timeout and a PING every 20 s. The dialler opens one
bidirectional stream and the link protocol runs on it; a listener takes the first
bidirectional stream the dialler opens and ignores any other.

aioquic's sans-IO :class:`~aioquic.quic.connection.QuicConnection` does QUIC; this
module is its asyncio plumbing: one UDP socket per listener (connections found by
connection ID) or per dial, timers, and :class:`QuicLink`, the
:class:`asyncio.Transport` the link runs on (write-buffer limits included, so a slow
peer pauses the link's queue as a TCP socket would).

Bounds on a listener, before any TLS work: a datagram that is not QUIC, or a packet for
no connection that is not a full-size Initial, is dropped and counted as garbage; an
Initial is a new inbound link and must pass the network's admission (``max_links``,
``max_links_per_source``) or is dropped and counted as refused; the link's handshake
deadline runs from that first Initial, so a handshake that never finishes is freed
in ``handshake_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aioquic._buffer import Buffer  # aioquic.buffer re-exports it untyped
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import (
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..links import LinkConnection, PeerURI, self_signed_certificate
from . import CarrierEnv, CarrierStats, Listener, NewLink

__all__ = ["IDLE_TIMEOUT", "KEEPALIVE_PERIOD", "QUICCarrier", "QuicLink", "carrier"]

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 60.0  # quic.Config.MaxIdleTimeout in link_quic.go
KEEPALIVE_PERIOD = 20.0  # quic.Config.KeepAlivePeriod
# A keepalive PING unanswered this long (aioquic resends a lost PING) means the peer is
# gone: a daemon that exits sends no CONNECTION_CLOSE and, having no stateless reset
# key, never resets our packets after a restart either; without this the link would
# wait out the whole idle timeout. Dead links are found in 20 + 15 s instead of 60 s.
PING_ANSWER_WITHIN = 15.0
CID_LENGTH = 8
# per-stream and per-connection receive window: QUIC's connection-level flow control
# bounds what one connection may make us buffer (out-of-order data on any stream)
STREAM_WINDOW = 1024 * 1024
_VERSIONS = [QuicProtocolVersion.VERSION_1]


def _configuration(
    identity: tuple[x509.Certificate, Ed25519PrivateKey], *, is_client: bool
) -> QuicConfiguration:
    cert, key = identity
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=None,  # yggdrasil-go sets no NextProtos
        server_name=None,  # no SNI on dial (upstream dials with the unmodified tls.Config)
        verify_mode=ssl.CERT_NONE,  # the meta handshake authenticates the key
        certificate=cert,
        private_key=key,
        idle_timeout=IDLE_TIMEOUT,
        connection_id_length=CID_LENGTH,
        supported_versions=list(_VERSIONS),
        max_data=STREAM_WINDOW,
        max_stream_data=STREAM_WINDOW,
    )


class QuicLink(asyncio.Transport):
    """One QUIC connection carrying one link on one bidirectional stream.

    Link bytes written before the stream exists (the meta handshake, on a listener
    whose dialler has not opened its stream yet) wait in a small buffer. Reading is
    never paused (QUIC flow control is the bound: the link consumes what arrives at
    once). ``get_write_buffer_size`` is what the stream has sent but not had
    acknowledged, plus what waits for the stream.
    """

    def __init__(
        self,
        quic: QuicConnection,
        addr: NetworkAddress,
        send: Callable[[bytes, NetworkAddress], None],
        *,
        on_cids: Callable[[QuicLink, list[bytes], list[bytes]], None] | None = None,
        on_lost: Callable[[QuicLink], None] | None = None,
        sockname: Any = None,
        client: bool = False,
        keepalive: float = KEEPALIVE_PERIOD,
        answer_within: float = PING_ANSWER_WITHIN,
    ) -> None:
        super().__init__(extra={"peername": addr, "sockname": sockname})
        self._client = client
        self._keepalive_period = keepalive
        self._answer_within = answer_within
        self._ping_uid = 0
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.quic = quic
        self.addr = addr
        self._send = send
        self._on_cids = on_cids
        self._on_lost = on_lost
        self._protocol: asyncio.Protocol | None = None
        self.stream_id: int | None = None
        self._early = bytearray()
        self._high = 256 * 1024
        self._low = self._high // 4
        self._write_paused = False
        self._closing = False
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._transmit_scheduled = False
        self._fed = False  # a datagram reached quic: there is a peer to tell we close
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self.error: str | None = None

    # -- the link's side (asyncio.Transport) ----------------------------------------

    def attach(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol
        protocol.connection_made(self)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def is_reading(self) -> bool:
        return not self._lost

    def pause_reading(self) -> None:
        """QUIC flow control bounds what the peer may send; the link never pauses."""

    def resume_reading(self) -> None:
        """See :meth:`pause_reading`."""

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 256 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        size = len(self._early)
        if self.stream_id is not None:
            stream = self.quic._streams.get(self.stream_id)
            if stream is not None:
                size += len(stream.sender._buffer)
        return size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.is_closing() or not data:
            return
        if self.stream_id is None:
            self._early += data
        else:
            self._stream_send(bytes(data))
        if not self._write_paused and self.get_write_buffer_size() > self._high:
            self._write_paused = True
            if self._protocol is not None:
                self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a link stream has no half-close")

    def close(self) -> None:
        self._shut("closed")

    def abort(self) -> None:
        self._shut("aborted")

    def _shut(self, why: str, error: str | None = None) -> None:
        """Close the QUIC connection (one CONNECTION_CLOSE, no draining wait) and tell the
        link it is gone (``error``: why, for the link's log and ``mesh peers``)."""
        if self._lost:
            return
        self._closing = True
        if self._fed:
            self.quic.close(reason_phrase=why)
            self._transmit()
        self._lose(error)

    # -- the socket's side ----------------------------------------------------------

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if self._lost:
            return
        self._fed = True
        self.quic.receive_datagram(data, addr, self._loop.time())
        self._process_events()
        self._transmit()

    def start_client(self) -> None:
        self._fed = True
        self.quic.connect(self.addr, self._loop.time())
        self._transmit()

    def open_stream(self) -> None:
        """Dialler: the link's stream (ours, the first bidirectional one)."""
        self._use_stream(self.quic.get_next_available_stream_id())

    def _use_stream(self, stream_id: int) -> None:
        self.stream_id = stream_id
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self._stream_send(early)

    def _stream_send(self, data: bytes) -> None:
        assert self.stream_id is not None
        try:
            self.quic.send_stream_data(self.stream_id, data)
        except (ValueError, RuntimeError) as exc:  # the stream was stopped or finished
            self._shut("link stream unusable", f"the link stream cannot be written: {exc}")
            return
        self._schedule_transmit()

    def _process_events(self) -> None:
        issued: list[bytes] = []
        retired: list[bytes] = []
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self._stream_data(event)
            elif isinstance(event, events.HandshakeCompleted):
                if not self.handshake.done():
                    self.handshake.set_result(None)
                self._arm_keepalive()
            elif isinstance(event, events.PingAcknowledged):
                if event.uid == self._ping_uid and self._ping_deadline is not None:
                    self._ping_deadline.cancel()
                    self._ping_deadline = None
            elif isinstance(event, events.ConnectionIdIssued):
                issued.append(event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                retired.append(event.connection_id)
            elif (
                isinstance(event, events.StopSendingReceived) and event.stream_id == self.stream_id
            ):
                error = f"the peer stopped reading the link stream (error {event.error_code})"
                self._shut("link stream stopped", error)
            elif isinstance(event, events.StreamReset) and event.stream_id == self.stream_id:
                error = f"the peer reset the link stream (error {event.error_code})"
                self._shut("link stream reset", error)
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or f"error {event.error_code:#x}"
                self._lose(f"QUIC connection closed: {reason}")
            if self._lost:
                return
        if (issued or retired) and self._on_cids is not None:
            self._on_cids(self, issued, retired)

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        if self.stream_id is None and not self._client and sid % 4 == 0:
            self._use_stream(sid)  # the dialler's first bidirectional stream is the link
        if sid != self.stream_id:
            return  # another stream: upstream accepts one; its bytes are dropped
        if event.data and self._protocol is not None:
            self._protocol.data_received(event.data)
        if event.end_stream and not self._lost:
            self._shut("link stream ended", "the peer ended the link stream")

    def _schedule_transmit(self) -> None:
        if not self._transmit_scheduled and not self._lost:
            self._transmit_scheduled = True
            self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._transmit_scheduled = False
        now = self._loop.time()
        for data, addr in self.quic.datagrams_to_send(now):
            self._send(data, addr)
        if self._lost:
            return
        when = self.quic.get_timer()
        if self._timer is not None and (when is None or self._timer.when() != when):
            self._timer.cancel()
            self._timer = None
        if when is not None and self._timer is None:
            self._timer = self._loop.call_at(when, self._on_timer)
        if self._write_paused and self.get_write_buffer_size() <= self._low:
            self._write_paused = False
            if self._protocol is not None:
                self._protocol.resume_writing()

    def _on_timer(self) -> None:
        self._timer = None
        if self._lost:
            return
        self.quic.handle_timer(self._loop.time())
        self._process_events()
        self._transmit()

    def _arm_keepalive(self) -> None:
        if self._keepalive is None and not self._lost:
            self._keepalive = self._loop.call_later(self._keepalive_period, self._ping)

    def _ping(self) -> None:
        self._keepalive = None
        if self._lost:
            return
        self._ping_uid += 1
        self.quic.send_ping(self._ping_uid)
        if self._ping_deadline is None:
            self._ping_deadline = self._loop.call_later(self._answer_within, self._unanswered)
        self._transmit()
        self._arm_keepalive()

    def _unanswered(self) -> None:
        self._ping_deadline = None
        error = f"no answer to a keepalive within {self._answer_within:g} s"
        self._shut("keepalive unanswered", error)

    def _lose(self, error: str | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if error is not None and self.error is None:
            self.error = error
        for handle in (self._timer, self._keepalive, self._ping_deadline):
            if handle is not None:
                handle.cancel()
        self._timer = self._keepalive = self._ping_deadline = None
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(error or "QUIC connection closed"))
            self.handshake.exception()  # retrieved: a listener's handshakes have no waiter
        if self._on_lost is not None:
            self._on_lost(self)
        if self._protocol is not None:
            exc = ConnectionError(error) if error else None
            self._loop.call_soon(self._protocol.connection_lost, exc)


class _DialSocket(asyncio.DatagramProtocol):
    """The UDP socket of one dialled connection (closed with it)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.link: QuicLink | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # 3.11: not a subclass

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if self.link is not None:
            self.link.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        if self.link is not None and not self.link.handshake.done():
            self.link._lose(f"unreachable: {exc}")  # ICMP port unreachable: fail the dial fast

    def send(self, data: bytes, addr: NetworkAddress) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)


@dataclass(eq=False)
class QuicListener(asyncio.DatagramProtocol):
    """A ``quic://`` listener: one UDP socket, connections found by connection ID."""

    new_link: NewLink
    configuration: QuicConfiguration
    stats: CarrierStats
    keepalive: float = KEEPALIVE_PERIOD
    answer_within: float = PING_ANSWER_WITHIN
    scheme: str = "quic"
    uri: str = ""
    transport: asyncio.DatagramTransport | None = None
    links: dict[bytes, QuicLink] = field(default_factory=dict)
    _closed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # 3.11: not a subclass
        self._closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors for one peer say nothing about the others: ignored."""

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            self.stats.garbage += 1
            return
        link = self.links.get(header.destination_cid)
        if link is None:
            if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
                self.stats.garbage += 1  # never answered (reflection loops)
                return
            if header.version is not None and header.version not in _VERSIONS:
                self.stats.garbage += 1  # not a version we speak
                if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:  # no amplification (RFC 9000 6.1)
                    return
                self._send(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=list(_VERSIONS),
                    ),
                    addr,
                )
                return
            if header.packet_type != QuicPacketType.INITIAL or len(data) < (
                SMALLEST_MAX_DATAGRAM_SIZE
            ):
                self.stats.garbage += 1  # stray packets, stale connections, noise
                return
            link = self._accept(header.destination_cid, addr)
            if link is None:
                return
        link.datagram_received(data, addr)

    def _accept(self, original_cid: bytes, addr: NetworkAddress) -> QuicLink | None:
        quic = QuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=original_cid,
        )
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        link = QuicLink(
            quic,
            addr,
            self._send,
            on_cids=self._cids,
            on_lost=self._forget,
            sockname=sockname,
            keepalive=self.keepalive,
            answer_within=self.answer_within,
        )
        conn = self.new_link()
        link.attach(conn)  # admission and the handshake deadline happen here
        if link.is_closing():
            self.stats.refused += 1
            return None
        self.links[original_cid] = link
        self.links[quic.host_cid] = link
        return link

    def _cids(self, link: QuicLink, issued: list[bytes], retired: list[bytes]) -> None:
        for cid in issued:
            self.links[cid] = link
        for cid in retired:
            if self.links.get(cid) is link:
                del self.links[cid]

    def _forget(self, link: QuicLink) -> None:
        for cid in [c for c, known in self.links.items() if known is link]:
            del self.links[cid]

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def close(self) -> None:
        for link in list(self.links.values()):
            link.abort()
        self.links.clear()
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        if self._closed is not None:
            await asyncio.shield(self._closed)


class QUICCarrier:
    scheme = "quic"
    can_listen = True

    def __init__(
        self, *, keepalive: float = KEEPALIVE_PERIOD, answer_within: float = PING_ANSWER_WITHIN
    ) -> None:
        self.keepalive = keepalive
        self.answer_within = answer_within
        self._identity: tuple[bytes, tuple[x509.Certificate, Ed25519PrivateKey]] | None = None

    def _identity_for(self, seed: bytes) -> tuple[x509.Certificate, Ed25519PrivateKey]:
        if self._identity is None or self._identity[0] != seed:
            self._identity = (seed, self_signed_certificate(seed))
        return self._identity[1]

    async def dial(self, uri: PeerURI, conn: LinkConnection, env: CarrierEnv) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(uri.host, uri.port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"no address for {uri.host}")
        family, _type, _proto, _name, addr = infos[0]
        sock = _DialSocket()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: sock, remote_addr=(str(addr[0]), int(addr[1])), family=family
        )
        quic = QuicConnection(
            configuration=_configuration(self._identity_for(env.seed), is_client=True)
        )

        def lost(_link: QuicLink) -> None:
            transport.close()

        link = QuicLink(
            quic,
            addr,
            sock.send,
            on_lost=lost,
            sockname=transport.get_extra_info("sockname"),
            client=True,
            keepalive=self.keepalive,
            answer_within=self.answer_within,
        )
        sock.link = link
        try:
            link.start_client()
            await asyncio.shield(link.handshake)
        except BaseException:
            link.abort()
            transport.close()
            raise
        link.open_stream()
        link.attach(conn)

    async def listen(self, uri: PeerURI, new_link: NewLink, env: CarrierEnv) -> Listener:
        loop = asyncio.get_running_loop()
        config = _configuration(self._identity_for(env.seed), is_client=False)
        listener = QuicListener(
            new_link, config, env.stats_for("quic"), self.keepalive, self.answer_within
        )
        infos = await loop.getaddrinfo(uri.host, uri.port, type=socket.SOCK_DGRAM)
        family = infos[0][0] if infos else socket.AF_INET6
        transport, _ = await loop.create_datagram_endpoint(
            lambda: listener, local_addr=(uri.host, uri.port), family=family
        )
        host, port = transport.get_extra_info("sockname")[:2]
        listener.uri = PeerURI("quic", host, port).base
        return listener


def carrier(scheme: str) -> QUICCarrier:
    return QUICCarrier()
