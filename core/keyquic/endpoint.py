"""QUIC over key-addressed datagrams, compatible with yggquic (and so with Yggmail).

:class:`KeyQuicEndpoint` is one QUIC endpoint (client and server at once, like a
``quic.Transport`` that both listens and dials) over a datagram port addressed by
Ed25519 key: :meth:`datagram_received` is fed what arrives, ``send(key, data)`` carries
what leaves. aioquic does the QUIC; this module does what yggquic adds around it:

* each side presents a self-signed Ed25519 certificate of its node key
  (:mod:`core.keyquic.cert`); the server requires one from the client; no chain is
  verified; after the handshake the peer certificate's key must equal the key the
  datagrams come from, or the connection is closed (``stats.bad_certificate``);
* TLS 1.3, no ALPN, SNI = our own key in hex (the peer ignores it, and so do we);
  handshake bounded by ``handshake_timeout`` (5 s), idle timeout 60 s, no keepalive,
  datagrams of at most 1452 bytes;
* one usable connection per peer key, used both ways: streams the peer opens on a
  connection we dialled are accepted like those on connections it dialled; a newer
  verified inbound connection from a key replaces the older one.

Bounds: at most ``max_connections`` connections (handshaking or not); new inbound
connections per key through a token bucket; at most ``max_streams`` open streams per
connection (more are refused with STOP_SENDING + RESET_STREAM); a stream's held data
is bounded by :class:`~core.keyquic.stream.QuicStreamTransport`. Garbage (not QUIC, an
unknown connection ID that is not an Initial, a packet for another key's connection)
is dropped and counted. aioquic is imported when the endpoint is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from core.keyquic.cert import certificate_key, node_certificate
from core.keyquic.stream import QuicStreamTransport
from core.limits import PeerRateLimiter

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

__all__ = [
    "KeyQuicConfig",
    "KeyQuicEndpoint",
    "KeyQuicStats",
    "StreamFactory",
]

log = logging.getLogger(__name__)

CID_LENGTH = 8  # our connection IDs (aioquic's default)
MAX_DATAGRAM = 1452  # quic-go's largest packet; yggquic never sends more
MIN_INITIAL = 1200  # RFC 9000 section 14.1: a client Initial is padded to 1200
ERROR_PEER_VERIFICATION = 0x0  # yggquic closes with 0, "Peer verification failed"
ERROR_STREAM_REFUSED = 0x0

# (peer key) -> the protocol to run on a stream that peer opened
StreamFactory = Callable[[bytes], asyncio.BaseProtocol]


@dataclass(frozen=True)
class KeyQuicConfig:
    handshake_timeout: float = 5.0  # yggquic's HandshakeIdleTimeout, also our dial bound
    idle_timeout: float = 60.0  # MaxIdleTimeout
    max_datagram_size: int = MAX_DATAGRAM
    max_connections: int = 256
    max_streams: int = 32  # open streams per connection, both directions
    new_connections_burst: int = 8  # inbound handshakes one key may start at once...
    new_connections_per_minute: float = 30.0  # ...and how fast the bucket refills
    reuse_within: float = 15.0  # dial anew rather than use a connection silent this long
    max_held: int = 4 * 1024 * 1024  # per stream, while its reader is paused

    def __post_init__(self) -> None:
        if self.max_datagram_size < MIN_INITIAL:
            raise ValueError(f"max_datagram_size must be at least {MIN_INITIAL}")
        if self.max_connections < 1 or self.max_streams < 1:
            raise ValueError("max_connections and max_streams must be at least 1")


@dataclass
class KeyQuicStats:
    """Counters for ``mesh status``: what arrived, what was refused and why."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    garbage: int = 0  # not QUIC, or not for a connection of that key, and not an Initial
    connections_in: int = 0
    connections_out: int = 0
    refused_rate: int = 0  # a key started handshakes faster than its bucket allows
    refused_full: int = 0  # max_connections reached
    bad_certificate: int = 0  # the certificate's key is not the sending key
    handshake_timeouts: int = 0
    streams_refused: int = 0

    def to_json(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


def _addr(key: bytes) -> tuple[str, int]:
    """aioquic's network path for a key: any hashable value works; the key names it."""
    return (key.hex(), 0)


@dataclass(eq=False)
class _Connection:
    key: bytes
    quic: QuicConnection
    inbound: bool
    verified: bool = False
    closed: bool = False
    cids: set[bytes] = field(default_factory=set)
    streams: dict[int, QuicStreamTransport] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    deadline: asyncio.TimerHandle | None = None
    ready: asyncio.Future[None] | None = None
    last_heard: float = 0.0  # loop time of the last datagram from the peer
    next_remote: int = -1  # the lowest id a new peer-opened stream may have (-1: unset)


class _Owner:
    """The :class:`~core.keyquic.stream.StreamOwner` of one connection's streams."""

    def __init__(self, endpoint: KeyQuicEndpoint, conn: _Connection) -> None:
        self._endpoint = endpoint
        self._conn = conn

    def stream_send(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self._conn.closed:
            raise ConnectionResetError("the QUIC connection is closed")
        try:
            self._conn.quic.send_stream_data(stream_id, data, end_stream)
        except (RuntimeError, ValueError) as exc:  # reset, or after FIN: aioquic's words
            raise ConnectionResetError(f"the QUIC stream is closed: {exc}") from None
        self._endpoint._flush(self._conn)

    def stream_reset(self, stream_id: int, error_code: int) -> None:
        if self._conn.closed:
            return
        with contextlib.suppress(ValueError):  # already finished, or receive-only
            self._conn.quic.reset_stream(stream_id, error_code)
        self.stream_stop(stream_id, error_code)

    def stream_stop(self, stream_id: int, error_code: int = 0) -> None:
        if self._conn.closed:
            return
        with contextlib.suppress(ValueError):
            self._conn.quic.stop_stream(stream_id, error_code)
        self._endpoint._flush(self._conn)

    def stream_unacked(self, stream_id: int) -> int:
        # aioquic keeps a stream's unacknowledged bytes in its sender; there is no public
        # accessor, so the one place that reads the private fields is here.
        stream = getattr(self._conn.quic, "_streams", {}).get(stream_id)
        sender = getattr(stream, "sender", None)
        if sender is None:
            return 0
        return int(getattr(sender, "_buffer_stop", 0)) - int(getattr(sender, "_buffer_start", 0))

    def stream_done(self, stream_id: int) -> None:
        self._conn.streams.pop(stream_id, None)


class KeyQuicEndpoint:
    """yggquic's ``YggdrasilTransport`` on any key-addressed datagram port."""

    def __init__(
        self,
        *,
        seed: bytes,
        public_key: bytes,
        send: Callable[[bytes, bytes], None],
        mtu: int,
        stream_factory: StreamFactory,
        config: KeyQuicConfig | None = None,
        clock: Callable[[], float] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.config = config or KeyQuicConfig()
        self.public_key = public_key
        self.stats = KeyQuicStats()
        self._seed = seed
        self._send = send
        self._on_close = on_close
        self._stream_factory = stream_factory
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._datagram = min(self.config.max_datagram_size, mtu)
        if self._datagram < MIN_INITIAL:
            raise ValueError(f"the datagram port carries {mtu} bytes; QUIC needs {MIN_INITIAL}")
        # Made at first use (a datagram, a dial): a node that never meets a Yggmail peer
        # does not load aioquic nor sign a certificate.
        self._configs: tuple[QuicConfiguration, QuicConfiguration] | None = None
        self._limiter = PeerRateLimiter(
            burst=self.config.new_connections_burst,
            per_minute=self.config.new_connections_per_minute,
        )
        self._cids: dict[bytes, _Connection] = {}
        self._by_key: dict[bytes, _Connection] = {}  # the verified connection to use
        self._dials: dict[bytes, asyncio.Future[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._closed = False

    def _configurations(self) -> tuple[QuicConfiguration, QuicConfiguration]:
        """(client, server) configurations with our node certificate."""
        if self._configs is None:
            from aioquic.quic.configuration import QuicConfiguration

            cert, private = node_certificate(self._seed)

            def configuration(is_client: bool) -> QuicConfiguration:
                return QuicConfiguration(
                    is_client=is_client,
                    alpn_protocols=None,
                    certificate=cert,
                    private_key=private,
                    idle_timeout=self.config.idle_timeout,
                    max_datagram_size=self._datagram,
                    connection_id_length=CID_LENGTH,
                    server_name=self.public_key.hex() if is_client else None,
                    verify_mode=ssl.CERT_NONE,  # self-signed: the key check is ours
                )

            self._configs = (configuration(True), configuration(False))
        return self._configs

    # -- the datagram side ------------------------------------------------------------------
    def datagram_received(self, key: bytes, data: bytes) -> None:
        """A datagram from ``key`` (authenticated by the port). Never raises."""
        if self._closed:
            return
        self.stats.datagrams_in += 1
        try:
            self._receive(key, data)
        except Exception:
            log.exception("quic: a datagram from %s broke the endpoint; dropped", key.hex()[:16])
            self.stats.garbage += 1

    def _receive(self, key: bytes, data: bytes) -> None:
        from aioquic._buffer import Buffer
        from aioquic.quic.packet import QuicPacketType, pull_quic_header

        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            self.stats.garbage += 1
            return
        conn = self._cids.get(header.destination_cid)
        if conn is not None:
            if conn.key != key:
                self.stats.garbage += 1
                return
            conn.last_heard = self._clock()
            conn.quic.receive_datagram(data, _addr(key), self._clock())
            self._flush(conn)
            return
        if (
            header.packet_type != QuicPacketType.INITIAL
            or header.version not in self._configurations()[1].supported_versions
            or len(data) < MIN_INITIAL
        ):
            self.stats.garbage += 1
            return
        if len(self._all) >= self.config.max_connections:
            self.stats.refused_full += 1
            log.warning(
                "quic: refused a connection from %s: %d open", key.hex()[:16], len(self._all)
            )
            return
        if not self._limiter.allow(key):
            self.stats.refused_rate += 1
            log.info("quic: refused a connection from %s: too many, too fast", key.hex()[:16])
            return
        quic = _server_connection(self._configurations()[1], header.destination_cid)
        conn = self._add(key, quic, inbound=True)
        conn.last_heard = self._clock()
        self._register(conn, header.destination_cid)  # the client's choice, until it switches
        self._register(conn, quic.host_cid)
        self.stats.connections_in += 1
        quic.receive_datagram(data, _addr(key), self._clock())
        self._flush(conn)

    # -- dialling ------------------------------------------------------------------------------
    async def open_stream(
        self, key: bytes, protocol_factory: Callable[[], asyncio.BaseProtocol]
    ) -> tuple[QuicStreamTransport, asyncio.BaseProtocol]:
        """A new bidirectional stream to ``key`` (on its connection, dialled if needed).

        Raises :class:`ConnectionError` if no verified connection can be had within
        ``handshake_timeout``. Nothing is sent until the protocol writes: the peer sees
        the stream only with its first byte.
        """
        if self._closed:
            raise ConnectionError("the QUIC endpoint is closed")
        if len(key) != 32:
            raise ValueError("a QUIC peer is a 32-byte Ed25519 key")
        conn = await self._connection(key)
        if len(conn.streams) >= self.config.max_streams:
            raise ConnectionError(f"{self.config.max_streams} streams already open to that node")
        stream_id = conn.quic.get_next_available_stream_id(is_unidirectional=False)
        protocol = protocol_factory()
        transport = self._attach(conn, stream_id, protocol)
        protocol.connection_made(transport)
        return transport, protocol

    async def open_connection(
        self, key: bytes, *, limit: int = 64 * 1024
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """:meth:`open_stream` as an asyncio stream pair."""
        reader = asyncio.StreamReader(limit=limit, loop=self._loop)
        transport, protocol = await self.open_stream(
            key, lambda: asyncio.StreamReaderProtocol(reader, loop=self._loop)
        )
        assert isinstance(protocol, asyncio.StreamReaderProtocol)
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)

    async def _connection(self, key: bytes) -> _Connection:
        conn = self._by_key.get(key)
        # A connection silent for a while is not reused: the peer may have restarted and
        # lost it, and with no keepalive only the idle timeout would tell. A new one costs
        # a handshake; the peer replaces its old one with it (as yggquic does).
        fresh = conn is not None and self._clock() - conn.last_heard <= self.config.reuse_within
        if conn is not None and not conn.closed and fresh:
            return conn
        pending = self._dials.get(key)
        if pending is None:
            pending = self._loop.create_future()
            self._dials[key] = pending
            self._dial(key, pending)
        return await asyncio.shield(pending)

    def _dial(self, key: bytes, result: asyncio.Future[_Connection]) -> None:
        from aioquic.quic.connection import QuicConnection

        if len(self._all) >= self.config.max_connections:
            self._dials.pop(key, None)
            result.set_exception(ConnectionError("too many QUIC connections open"))
            return
        quic = QuicConnection(configuration=self._configurations()[0])
        conn = self._add(key, quic, inbound=False)
        conn.ready = self._loop.create_future()

        def settled(ready: asyncio.Future[None]) -> None:
            self._dials.pop(key, None)
            if result.done():
                return
            if ready.cancelled():
                result.set_exception(ConnectionError("the QUIC endpoint closed"))
            elif (exc := ready.exception()) is not None:
                result.set_exception(exc)
            else:
                result.set_result(conn)

        conn.ready.add_done_callback(settled)
        self._register(conn, quic.host_cid)
        self.stats.connections_out += 1
        quic.connect(_addr(key), self._clock())
        self._flush(conn)

    # -- connections -------------------------------------------------------------------------
    def _add(self, key: bytes, quic: QuicConnection, *, inbound: bool) -> _Connection:
        conn = _Connection(key=key, quic=quic, inbound=inbound)
        self._all.add(conn)
        conn.deadline = self._loop.call_later(
            self.config.handshake_timeout, self._handshake_expired, conn
        )
        return conn

    def _register(self, conn: _Connection, cid: bytes) -> None:
        conn.cids.add(cid)
        self._cids[cid] = conn

    def _handshake_expired(self, conn: _Connection) -> None:
        conn.deadline = None
        if conn.verified or conn.closed:
            return
        self.stats.handshake_timeouts += 1
        log.info(
            "quic: no handshake with %s within %.0f s",
            conn.key.hex()[:16],
            self.config.handshake_timeout,
        )
        timeout = self.config.handshake_timeout
        self._fail_ready(
            conn, ConnectionError(f"no QUIC handshake with {conn.key.hex()} within {timeout:g} s")
        )
        conn.quic.close(error_code=0, reason_phrase="handshake timed out")
        self._flush(conn)
        self._forget(conn, ConnectionError("QUIC handshake timed out"))

    def _fail_ready(self, conn: _Connection, exc: Exception) -> None:
        if conn.ready is not None and not conn.ready.done():
            conn.ready.set_exception(exc)
            conn.ready.exception()  # retrieved: the dial's callback reports it

    def _flush(self, conn: _Connection) -> None:
        """Handle the connection's events, send what it has to send, re-arm its timer."""
        if conn.closed:
            return
        self._events(conn)
        if conn.closed:
            return
        now = self._clock()
        for data, _ in conn.quic.datagrams_to_send(now):
            self.stats.datagrams_out += 1
            try:
                self._send(conn.key, data)
            except (ValueError, ConnectionError, OSError) as exc:
                log.debug("quic: a datagram to %s was not sent: %s", conn.key.hex()[:16], exc)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        when = conn.quic.get_timer()
        if when is not None:
            conn.timer = self._loop.call_at(when, self._on_timer, conn)
        for transport in list(conn.streams.values()):
            transport.check_write_pressure()
        self._events(conn)  # a close decided while sending

    def _on_timer(self, conn: _Connection) -> None:
        conn.timer = None
        if conn.closed:
            return
        conn.quic.handle_timer(self._clock())
        self._flush(conn)

    def _events(self, conn: _Connection) -> None:
        from aioquic.quic import events

        while (event := conn.quic.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted):
                self._handshake_done(conn)
            elif isinstance(event, events.ConnectionIdIssued):
                self._register(conn, event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                conn.cids.discard(event.connection_id)
                if self._cids.get(event.connection_id) is conn:
                    del self._cids[event.connection_id]
            elif isinstance(event, events.StreamDataReceived):
                self._stream_data(conn, event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.StreamReset | events.StopSendingReceived):
                # A reset, or the peer will read no more (STOP_SENDING): the stream is over.
                transport = conn.streams.pop(event.stream_id, None)
                if transport is not None:
                    transport.reset_received(ConnectionResetError("the peer ended the stream"))
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or f"error {event.error_code:#x}"
                self._forget(conn, ConnectionResetError(f"QUIC connection closed: {reason}"))
                return

    def _handshake_done(self, conn: _Connection) -> None:
        tls = conn.quic.tls
        peer = certificate_key(getattr(tls, "_peer_certificate", None))
        chain = getattr(tls, "_peer_certificate_chain", [])
        if peer != conn.key or chain:
            self.stats.bad_certificate += 1
            log.warning(
                "quic: %s presented %s; closed",
                conn.key.hex()[:16],
                "no certificate" if peer is None else f"the certificate of {peer.hex()[:16]}",
            )
            self._fail_ready(conn, ConnectionError("peer verification failed"))
            conn.quic.close(
                error_code=ERROR_PEER_VERIFICATION, reason_phrase="Peer verification failed"
            )
            return
        conn.verified = True
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None
        # The newest verified connection to a key is the one to use (yggquic's map);
        # a new inbound one also closes the older inbound one, as yggquic's accept does.
        old = self._by_key.get(conn.key)
        self._by_key[conn.key] = conn
        if old is not None and old is not conn and old.inbound and conn.inbound:
            self._close_connection(old, "replaced by a newer connection")
        if conn.ready is not None and not conn.ready.done():
            conn.ready.set_result(None)

    def _stream_data(self, conn: _Connection, stream_id: int, data: bytes, end: bool) -> None:
        transport = conn.streams.get(stream_id)
        if transport is None:
            locally_opened = (stream_id & 1) == (0 if not conn.inbound else 1)
            if not conn.verified or locally_opened or stream_id & 2:
                return  # before verification, a stream we closed, or unidirectional
            if stream_id < conn.next_remote:
                return  # the rest of a stream that is over here (closed or refused)
            conn.next_remote = stream_id + 4  # peer-opened stream ids only grow
            if len(conn.streams) >= self.config.max_streams:
                self.stats.streams_refused += 1
                owner = _Owner(self, conn)
                owner.stream_reset(stream_id, ERROR_STREAM_REFUSED)
                return
            try:
                protocol = self._stream_factory(conn.key)
            except Exception:
                log.exception("quic: the stream factory raised; stream refused")
                _Owner(self, conn).stream_reset(stream_id, ERROR_STREAM_REFUSED)
                return
            transport = self._attach(conn, stream_id, protocol)
            protocol.connection_made(transport)
        transport.data_received(data, end)

    def _attach(
        self, conn: _Connection, stream_id: int, protocol: asyncio.BaseProtocol
    ) -> QuicStreamTransport:
        transport = QuicStreamTransport(
            _Owner(self, conn),
            stream_id,
            protocol,
            {"peer_key": conn.key, "peername": _addr(conn.key), "quic_stream": stream_id},
            max_held=self.config.max_held,
        )
        conn.streams[stream_id] = transport
        return transport

    def _close_connection(self, conn: _Connection, reason: str) -> None:
        if conn.closed:
            return
        conn.quic.close(error_code=0, reason_phrase=reason)
        self._flush(conn)
        self._forget(conn, ConnectionResetError(f"QUIC connection closed: {reason}"))

    def _forget(self, conn: _Connection, error: Exception) -> None:
        if conn.closed:
            return
        conn.closed = True
        for handle in (conn.timer, conn.deadline):
            if handle is not None:
                handle.cancel()
        conn.timer = conn.deadline = None
        self._fail_ready(conn, ConnectionError(str(error)))
        for cid in conn.cids:
            if self._cids.get(cid) is conn:
                del self._cids[cid]
        if self._by_key.get(conn.key) is conn:
            del self._by_key[conn.key]
        self._all.discard(conn)
        streams, conn.streams = conn.streams, {}
        for transport in streams.values():
            transport.reset_received(error)

    # -- status and lifecycle ---------------------------------------------------------------
    def connections(self) -> list[dict[str, Any]]:
        return [
            {
                "key": conn.key.hex(),
                "inbound": conn.inbound,
                "verified": conn.verified,
                "streams": len(conn.streams),
            }
            for conn in self._all
        ]

    def status(self) -> dict[str, Any]:
        """For ``mesh status``: counters and open connections."""
        return {"stats": self.stats.to_json(), "connections": self.connections()}

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE sent) and fail pending dials."""
        if self._closed:
            return
        for conn in list(self._all):
            self._close_connection(conn, "endpoint closed")
        self._closed = True
        for pending in self._dials.values():
            if not pending.done():
                pending.set_exception(ConnectionError("the QUIC endpoint closed"))
                pending.exception()
        self._dials.clear()
        if self._on_close is not None:
            self._on_close()


def _server_connection(config: QuicConfiguration, original_cid: bytes) -> QuicConnection:
    """A server-side connection that asks the client for its certificate."""
    return _client_cert_server()(
        configuration=config, original_destination_connection_id=original_cid
    )


@functools.cache
def _client_cert_server() -> type[QuicConnection]:
    """aioquic's server connection, made to send a CertificateRequest.

    aioquic's TLS server asks for a client certificate only when
    ``_request_client_certificate`` is set on its context, which exists once the first
    Initial is being handled; the subclass sets it there. A client that still sends no
    certificate fails the key check after the handshake, so the requirement holds even
    if aioquic changes.
    """
    from aioquic.quic.connection import QuicConnection

    class ClientCertServer(QuicConnection):
        def _initialize(self, peer_cid: bytes) -> None:
            super()._initialize(peer_cid)
            self.tls._request_client_certificate = True

    return ClientCertServer
