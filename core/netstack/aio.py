"""asyncio adapters over :class:`core.netstack.stack.NetStack`, mirroring the
standard library so any ``asyncio.Protocol`` (aiosmtpd, StreamReaderProtocol, ...)
runs unchanged.

- :class:`TcpTransport` is an ``asyncio.Transport``: write/writelines/write_eof,
  close/abort, pause_reading/resume_reading (a paused reader stops draining the TCP
  receive buffer, so the advertised window closes and the peer stops: real flow
  control), and ``protocol.pause_writing``/``resume_writing`` at the high/low water
  marks of the bytes not yet accepted by the TCP send buffer.
- :class:`DatagramTransport` is an ``asyncio.DatagramTransport``.
- :class:`Server` is an ``asyncio.AbstractServer`` with ``.port``.

Addresses in ``peername``/``sockname`` are 4-tuples ``(host, port, 0, 0)`` like
kernel AF_INET6 sockets.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from core.netstack.tcp import (
    Connected,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    Event,
    LocalProtocolError,
)

if TYPE_CHECKING:
    from core.netstack.stack import AddressArg, NetStack, TcpSocket, _Listener

__all__ = [
    "ClientConnectedCallback",
    "DatagramTransport",
    "Server",
    "TcpTransport",
    "create_connection",
    "create_datagram_endpoint",
    "create_server",
    "open_connection",
    "start_server",
]

log = logging.getLogger(__name__)

ClientConnectedCallback = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
]
_READ_CHUNK = 256 * 1024  # like asyncio's selector transports' max read size
_DEFAULT_HIGH = 64 * 1024
_Addr4 = tuple[str, int, int, int]
_P = TypeVar("_P", bound=asyncio.BaseProtocol)
_DP = TypeVar("_DP", bound=asyncio.DatagramProtocol)


# A datagram endpoint talks to few addresses, once per packet each way: the text form
# and the packed form of an address are computed once, not per packet (bounded caches).
ADDRESS_CACHE = 1024


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _text(addr: bytes) -> str:
    return str(ipaddress.IPv6Address(addr))


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _packed_cached(host: str | ipaddress.IPv6Address) -> bytes:
    return _packed(host)


def _packed(host: object) -> bytes:
    try:
        return ipaddress.IPv6Address(host).packed
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IPv6 address literal; the netstack does no name resolution"
        ) from None


def _addr4(addr: bytes, port: int) -> _Addr4:
    return (_text(addr), port, 0, 0)


def _host_bytes(host: AddressArg) -> bytes:
    if isinstance(host, bytes):
        return host
    if isinstance(host, str | ipaddress.IPv6Address):
        return _packed_cached(host)
    return _packed(host)


class TcpTransport(asyncio.Transport):
    """A TCP connection of a :class:`NetStack` seen as an asyncio transport."""

    def __init__(
        self,
        stack: NetStack,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        server: Server | None = None,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__()
        self._stack = stack
        self._factory = protocol_factory
        self._protocol: asyncio.BaseProtocol | None = None
        self._sock: TcpSocket | None = None
        self._server = server
        self._waiter = waiter
        self._pending = bytearray()
        self._closing = False
        self._eof_requested = False
        self._eof_done = False
        self._eof_received = False
        self._eof_delivered = False
        self._lost = False
        self._lost_pending = False  # orderly close seen; deliver buffered data first
        self._reading_paused = False
        self._protocol_paused = False
        self._high = _DEFAULT_HIGH
        self._low = _DEFAULT_HIGH // 4

    def attach(self, sock: TcpSocket) -> None:
        self._sock = sock
        extra: dict[str, Any] = {
            "peername": _addr4(sock.remote, sock.conn.remote_port),
            "sockname": _addr4(sock.local, sock.conn.local_port),
            "socket": None,
        }
        hook = self._stack.extra_info
        if hook is not None:
            extra.update(hook(ipaddress.IPv6Address(sock.remote)))
        self._extra = extra

    # ------------------------------------------------------------------ stack side
    def tcp_event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._deliver()
        elif isinstance(event, Connected):
            self._connected()
        elif isinstance(event, EofReceived):
            self._eof_received = True
            self._deliver()
        elif isinstance(event, ConnectionClosed):
            self._closed(event)

    def tcp_pump(self) -> None:
        sock = self._sock
        if sock is None:
            return
        conn = sock.conn
        if self._pending:
            try:
                n = conn.send(self._pending)
            except LocalProtocolError:
                n = len(self._pending)  # connection gone: nothing more can leave
            del self._pending[:n]
        if not self._pending:
            if self._eof_requested and not self._eof_done:
                self._eof_done = True
                conn.shutdown()
            if self._closing and not self._lost:
                conn.close()
                self._stack.loop.call_soon(self._call_connection_lost, None)
        self._maybe_resume_protocol()

    def _connected(self) -> None:
        try:
            self._protocol = self._factory()
            self._protocol.connection_made(self)
        except BaseException as exc:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(exc)
            self.abort()
            if not isinstance(exc, Exception):
                raise
            log.exception("protocol factory/connection_made failed; connection aborted")
            return
        if self._server is not None:
            self._server.attach(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _deliver(self) -> None:
        sock, protocol = self._sock, self._protocol
        if sock is None or protocol is None or self._lost:
            return
        assert isinstance(protocol, asyncio.Protocol)
        while not self._reading_paused and not self._closing:
            data = sock.conn.read(_READ_CHUNK)
            if not data:
                break
            protocol.data_received(data)
        self._stack.mark_dirty(sock)  # the read may have reopened the window
        if (
            self._eof_received
            and not self._eof_delivered
            and not self._reading_paused
            and not self._closing
            and not sock.conn.receive_buffered
        ):
            self._eof_delivered = True
            if not protocol.eof_received():
                self.close()
        if self._lost_pending and self._eof_delivered:
            self._call_connection_lost(None)

    def _closed(self, event: ConnectionClosed) -> None:
        exc: OSError | None = None
        if event.errno is not None:
            exc = OSError(event.errno, event.reason or errno.errorcode.get(event.errno, "error"))
        if self._protocol is None:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(exc or ConnectionResetError("connection closed"))
            self._lost = True
            return
        sock = self._sock
        if exc is None and sock is not None and sock.conn.receive_buffered and not self._closing:
            # The peer closed in order but the application paused reading with data
            # still buffered: hand that over (and the EOF) before connection_lost.
            self._lost_pending = True
            return
        self._call_connection_lost(exc)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._server is not None:
            self._server.detach(self)
        if self._protocol is not None:
            self._protocol.connection_lost(exc)

    # ------------------------------------------------------------------ asyncio.Transport
    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._stack.loop.call_soon(self._deliver)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing or self._lost or self._sock is None:
            return
        if self._pending:
            self._pending += data
        else:
            try:
                n = self._sock.conn.send(data)
            except LocalProtocolError:
                return
            if n < len(data):
                self._pending += memoryview(data)[n:]
        self._stack.mark_dirty(self._sock)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._eof_requested:
            return
        self._eof_requested = True
        if self._sock is not None:
            self._stack.mark_dirty(self._sock)

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._sock is not None:
            self._stack.mark_dirty(self._sock)

    def abort(self) -> None:
        self._pending.clear()
        self._closing = True
        if self._sock is not None:
            self._sock.conn.abort()
            self._stack.mark_dirty(self._sock)
        self._stack.loop.call_soon(self._call_connection_lost, None)

    def set_keepalive(
        self, idle: float | None, interval: float | None = None, count: int | None = None
    ) -> None:
        """TCP keepalive for this connection (the kernel socket's SO_KEEPALIVE with
        TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT); ``idle=None`` turns it off.  A peer
        that stops answering ends the connection with ``TimeoutError``."""
        if self._sock is not None:
            self._sock.conn.set_keepalive(idle, interval, count)
            self._stack.mark_dirty(self._sock)

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and len(self._pending) > self._high and self._protocol:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except Exception:
                log.exception("protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and len(self._pending) <= self._low and self._protocol:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                log.exception("protocol.resume_writing() failed")

    def __repr__(self) -> str:
        sock = self._sock
        conn = "unattached" if sock is None else repr(sock.conn)
        return f"<TcpTransport {conn} closing={self._closing}>"


class Server(asyncio.AbstractServer):
    """A listening TCP port of a :class:`NetStack`."""

    def __init__(
        self,
        stack: NetStack,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        port: int,
        host: AddressArg | None,
    ) -> None:
        self._stack = stack
        self._factory = protocol_factory
        self._host = host
        self.port = port
        self._listener: _Listener | None = None
        self._transports: set[TcpTransport] = set()
        self._closed = asyncio.Event()
        self._serving_forever: asyncio.Future[None] | None = None

    def _accept(self, sock: TcpSocket) -> TcpTransport:
        transport = TcpTransport(self._stack, self._factory, server=self)
        transport.attach(sock)
        return transport

    def attach(self, transport: TcpTransport) -> None:
        self._transports.add(transport)

    def detach(self, transport: TcpTransport) -> None:
        self._transports.discard(transport)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._stack.loop

    def is_serving(self) -> bool:
        listener = self._listener
        return listener is not None and self._stack.listening(listener)

    async def start_serving(self) -> None:
        if self._listener is None and not self._closed.is_set():
            self._listener = self._stack.tcp_listen(self.port, self._host, self._accept)
            self.port = self._listener.port

    def close(self) -> None:
        """Stop listening; established connections stay open (as with asyncio)."""
        if self._listener is not None:
            self._stack.tcp_unlisten(self._listener)
            self._listener = None
        self._closed.set()
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()

    def close_clients(self) -> None:
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError("serve_forever() is already running")
        await self.start_serving()
        self._serving_forever = self._stack.loop.create_future()
        try:
            await self._serving_forever
        finally:
            self.close()
            self._serving_forever = None

    @property
    def sockets(self) -> tuple[()]:
        return ()

    def __repr__(self) -> str:
        return f"<netstack.Server port={self.port} serving={self.is_serving()}>"


class DatagramTransport(asyncio.DatagramTransport):
    """A bound UDP endpoint of a :class:`NetStack`."""

    def __init__(
        self,
        stack: NetStack,
        protocol: asyncio.DatagramProtocol,
        local: tuple[bytes | None, int],
        remote: tuple[bytes, int] | None,
    ) -> None:
        super().__init__()
        self._stack = stack
        self._protocol = protocol
        self._local = local
        self._remote = remote
        self._closing = False
        self._extra: dict[str, Any] = {"socket": None}
        self.set_local(local)
        if remote is not None:
            self._extra["peername"] = _addr4(*remote)
            if stack.extra_info is not None:
                self._extra.update(stack.extra_info(ipaddress.IPv6Address(remote[0])))

    def set_local(self, local: tuple[bytes | None, int]) -> None:
        """Record the bound address (the port is known only after binding)."""
        self._local = local
        host = local[0] if local[0] is not None else bytes(16)
        self._extra["sockname"] = _addr4(host, local[1])

    def udp_received(self, data: bytes, src: bytes, src_port: int) -> None:
        if not self._closing:
            self._protocol.datagram_received(data, _addr4(src, src_port))

    def udp_error(self, exc: OSError) -> None:
        if not self._closing:
            self._protocol.error_received(exc)

    def udp_closed(self) -> None:
        self.close()

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if self._closing:
            return
        if addr is None:
            if self._remote is None:
                raise ValueError("sendto() needs an address on an unconnected endpoint")
            dst = self._remote
        else:
            dst = (_host_bytes(addr[0]), int(addr[1]))
            if self._remote is not None and dst != self._remote:
                raise ValueError(f"Invalid address: must be None or {self._extra['peername']}")
        try:
            self._stack.udp_send(self._local[0], self._local[1], dst[0], dst[1], bytes(data))
        except OSError as exc:
            self._protocol.error_received(exc)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stack.udp_unbind(self._local[0], self._local[1])
        self._stack.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.DatagramProtocol)
        self._protocol = protocol

    def get_write_buffer_size(self) -> int:
        return 0


# ---------------------------------------------------------------------- entry points
async def create_connection(
    stack: NetStack,
    protocol_factory: Callable[[], _P],
    host: AddressArg,
    port: int,
    *,
    local_address: AddressArg | None = None,
) -> tuple[TcpTransport, _P]:
    """Like ``loop.create_connection``: resolves once the handshake completed."""
    waiter: asyncio.Future[None] = stack.loop.create_future()
    transport = TcpTransport(stack, protocol_factory, waiter=waiter)
    sock = stack.tcp_connect(_host_bytes(host), port, local_address, transport)
    transport.attach(sock)
    try:
        await waiter
    except asyncio.CancelledError:
        transport.abort()
        raise
    protocol = transport.get_protocol()
    return transport, protocol  # type: ignore[return-value]  # made by protocol_factory


async def create_server(
    stack: NetStack,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    port: int,
    host: AddressArg | None = None,
    *,
    start_serving: bool = True,
) -> Server:
    """Like ``loop.create_server`` for one port (``port=0`` picks a free one)."""
    server = Server(stack, protocol_factory, port, None if host is None else _host_bytes(host))
    if start_serving:
        await server.start_serving()
    return server


async def create_datagram_endpoint(
    stack: NetStack,
    protocol_factory: Callable[[], _DP],
    local_addr: tuple[AddressArg | None, int] | None = None,
    remote_addr: tuple[AddressArg, int] | None = None,
) -> tuple[DatagramTransport, _DP]:
    """Like ``loop.create_datagram_endpoint`` (IPv6 literals only)."""
    host, port = local_addr if local_addr is not None else (None, 0)
    hbytes = None if host is None else _host_bytes(host)
    remote = None if remote_addr is None else (_host_bytes(remote_addr[0]), int(remote_addr[1]))
    protocol = protocol_factory()
    transport = DatagramTransport(stack, protocol, (hbytes, port), remote)
    bound = stack.udp_bind(hbytes, port, transport, remote)
    transport.set_local(bound)
    protocol.connection_made(transport)
    return transport, protocol


async def open_connection(
    stack: NetStack,
    host: AddressArg,
    port: int,
    *,
    limit: int = 2**16,
    local_address: AddressArg | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection``."""
    loop = stack.loop
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(
        stack, lambda: protocol, host, port, local_address=local_address
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_server(
    stack: NetStack,
    client_connected_cb: ClientConnectedCallback,
    port: int,
    host: AddressArg | None = None,
    *,
    limit: int = 2**16,
) -> Server:
    """Like ``asyncio.start_server``."""
    loop = stack.loop

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(stack, factory, port, host)
