"""``ws://HOST:PORT[/PATH]`` (dial, listen) and ``wss://`` (dial): the link in WebSocket
binary messages (yggdrasil ``link_ws.go``, ``link_wss.go``).

As yggdrasil-go (coder/websocket): the dialler asks for the subprotocol ``ygg-ws`` and
the link's bytes travel as binary messages (where one message ends says nothing: the
link is a byte stream); a listener answers ``GET /health`` and ``/healthz`` with
``200 OK`` and accepts the upgrade on any other path. Without ``ygg-ws`` the upgrade is
refused (upstream upgrades, then closes with 1008; here it is an HTTP 400 before any
WebSocket work) and counted. A browser's ``Origin`` must match the ``Host`` unless the
listen URI allows it with ``?origin=PATTERN`` (``*`` for any), as upstream.
``wss://`` dials TLS without verifying the certificate (the meta handshake
authenticates the peer), with SNI for a host name; like upstream, the node does not
listen on ``wss://``: put a ``ws://`` listener behind a reverse proxy that terminates
TLS.

websockets' sans-IO :class:`~websockets.server.ServerProtocol` /
:class:`~websockets.client.ClientProtocol` does WebSocket; :class:`WSLink` is the
:class:`asyncio.Transport` the link runs on. An inbound TCP connection is a link from
its first byte: admission (``max_links``, ``max_links_per_source``) happens at accept
and the link's handshake deadline covers the HTTP upgrade. A message over
:data:`MAX_MESSAGE` closes the connection with 1009 and is counted as oversize.
"""

from __future__ import annotations

import asyncio
import fnmatch
import http
import logging
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ..links import LinkConnection, PeerURI
from . import CarrierEnv, CarrierStats, Listener, NewLink
from .http_proxy import Proxy, open_tunnel, proxy_from_environment
from .tcp import ServerListener

__all__ = ["MAX_MESSAGE", "SEND_CHUNK", "SUBPROTOCOL", "WSCarrier", "WSLink", "carrier"]

log = logging.getLogger(__name__)
# websockets logs every connection's open and close at INFO: per connection, a flood
# would fill the log at -v; the link layer already logs what matters
_wire_log = logging.getLogger(f"{__name__}.wire")
_wire_log.setLevel(logging.WARNING)

SUBPROTOCOL = Subprotocol("ygg-ws")
# bound of one received message: yggdrasil-go writes at most one frame (≤ 131070 bytes
# and its length) per message, through a 4 KiB bufio.Writer; max_links times this bounds
# what a listener's partial messages may hold
MAX_MESSAGE = 256 * 1024
SEND_CHUNK = 32 * 1024  # our messages: coder/websocket's default read limit is 32 KiB
HEALTH_PATHS = ("/health", "/healthz")


class WSLink(asyncio.Transport):
    """One WebSocket connection carrying one link; also the raw socket's protocol.

    Link bytes written before the upgrade completes (the meta handshake) wait in a
    small buffer. Flow control is the socket's: its pause/resume reaches the link.
    """

    def __init__(
        self,
        ws: ServerProtocol | ClientProtocol,
        stats: CarrierStats,
        *,
        origins: tuple[str, ...] = (),
        new_link: NewLink | None = None,
    ) -> None:
        super().__init__()
        self._ws = ws
        self._stats = stats
        self._origins = origins
        self._new_link = new_link
        self._raw: asyncio.Transport | None = None
        self._link: asyncio.Protocol | None = None
        self._early = bytearray()
        self._open = False
        self._closing = False
        self._lost = False
        self._reason: str | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- the raw socket's side (asyncio.Protocol, via _Wire) --------------------------

    def raw_made(self, raw: asyncio.Transport) -> None:
        self._raw = raw
        if self._new_link is not None:  # inbound: the link exists (and is admitted) now
            self.attach(self._new_link())
            if self.is_closing():
                self._stats.refused += 1  # over max_links / max_links_per_source

    def attach(self, link: asyncio.Protocol) -> None:
        self._link = link
        link.connection_made(self)

    def raw_data(self, data: bytes) -> None:
        if self._lost:
            return
        self._ws.receive_data(data)
        self._pump()

    def raw_eof(self) -> None:
        if not self._lost:
            self._ws.receive_eof()
            self._pump()

    def raw_lost(self, exc: Exception | None) -> None:
        self._lose(self._reason or (str(exc) if exc else None))

    def raw_pause(self) -> None:
        if self._link is not None and self._open:
            self._link.pause_writing()

    def raw_resume(self) -> None:
        if self._link is not None and self._open:
            self._link.resume_writing()

    def _pump(self) -> None:
        for event in self._ws.events_received():
            if isinstance(event, Request):
                self._request(event)
            elif isinstance(event, Response):
                self._response(event)
            elif isinstance(event, Frame):
                self._frame(event)
            if self._lost:
                return
        if not self._open and self._ws.handshake_exc is not None and self._reason is None:
            self._stats.garbage += 1  # not an HTTP upgrade request (or response) at all
            self._reason = f"not a WebSocket handshake: {self._ws.handshake_exc}"
        if isinstance(self._ws.parser_exc, PayloadTooBig):
            self._ws.parser_exc = None
            self._stats.oversize += 1
            self._reason = f"a WebSocket message over {MAX_MESSAGE} bytes"
        self._flush()
        if self._ws.close_expected() or self._ws.state is State.CLOSED:
            self._close_raw()

    def _request(self, request: Request) -> None:
        ws = self._ws
        assert isinstance(ws, ServerProtocol)
        path = urlsplit(request.path).path
        if path in HEALTH_PATHS:
            self._reply(ws, http.HTTPStatus.OK, "OK", "health check")
            return
        if not self._origin_allowed(request):
            self._stats.refused += 1
            self._reply(ws, http.HTTPStatus.FORBIDDEN, "origin not allowed\n", "refused origin")
            return
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        if not any(SUBPROTOCOL in (p.strip() for p in h.split(",")) for h in offered):
            self._stats.refused += 1
            text = "client must speak the ygg-ws subprotocol\n"
            self._reply(ws, http.HTTPStatus.BAD_REQUEST, text, "no ygg-ws subprotocol")
            return
        response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            self._stats.garbage += 1  # not a valid upgrade request
            self._reason = f"WebSocket upgrade refused ({response.status_code})"
            return
        self._opened()

    def _reply(self, ws: ServerProtocol, status: http.HTTPStatus, text: str, why: str) -> None:
        ws.send_response(ws.reject(status, text))
        self._reason = why

    def _origin_allowed(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or "*" in self._origins:
            return True
        origin_host = urlsplit(origin).netloc.lower()
        if origin_host == (request.headers.get("Host") or "").lower():
            return True
        return any(fnmatch.fnmatch(origin_host, p.lower()) for p in self._origins)

    def _response(self, response: Response) -> None:
        ws = self._ws
        if ws.handshake_exc is not None:
            self._fail_open(f"WebSocket upgrade refused: {ws.handshake_exc}")
        elif getattr(ws, "subprotocol", None) != SUBPROTOCOL:
            self._fail_open("the server did not agree to the ygg-ws subprotocol")
        else:
            self._opened()

    def _fail_open(self, reason: str) -> None:
        self._reason = reason
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        self._close_raw()

    def _opened(self) -> None:
        self._open = True
        if not self.opened.done():
            self.opened.set_result(None)
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self._send(early)

    def _frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.BINARY, Opcode.CONT):
            if frame.data and self._link is not None:
                self._link.data_received(bytes(frame.data))
        elif frame.opcode is Opcode.TEXT:
            self._stats.garbage += 1
            self._reason = "a text message on the link"
            self._ws.fail(CloseCode.UNSUPPORTED_DATA, "binary messages only")
        elif frame.opcode is Opcode.CLOSE:
            self._reason = self._reason or "the peer closed the WebSocket"

    def _flush(self) -> None:
        chunks = self._ws.data_to_send()
        if self._raw is None or self._raw.is_closing():
            return
        for chunk in chunks:
            if chunk:
                self._raw.write(chunk)

    def _close_raw(self) -> None:
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()

    def _lose(self, error: str | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(error or "connection closed"))
            self.opened.exception()  # retrieved: an inbound upgrade has no waiter
        if self._link is not None:
            self._link.connection_lost(ConnectionError(error) if error else None)

    # -- the link's side (asyncio.Transport) ----------------------------------------

    def get_extra_info(self, name: str, default: object = None) -> object:
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def is_reading(self) -> bool:
        return not self._lost

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0) if self._raw is None else self._raw.get_write_buffer_limits()

    def get_write_buffer_size(self) -> int:
        raw = 0 if self._raw is None else self._raw.get_write_buffer_size()
        return raw + len(self._early)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.is_closing() or not data:
            return
        if not self._open:
            self._early += data
            return
        self._send(bytes(data))

    def _send(self, data: bytes) -> None:
        if self._ws.state is not State.OPEN:
            return  # closing: what the link still writes has nowhere to go
        for start in range(0, len(data), SEND_CHUNK):
            self._ws.send_binary(data[start : start + SEND_CHUNK])
        self._flush()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a link has no half-close")

    def close(self) -> None:
        if self.is_closing():
            return
        self._closing = True
        if self._open and self._ws.state is State.OPEN:
            self._ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()
        self._close_raw()

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()


class _Wire(asyncio.Protocol):
    """The raw socket's protocol: everything goes to the :class:`WSLink`."""

    def __init__(self, link: WSLink) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.link.raw_made(transport)

    def data_received(self, data: bytes) -> None:
        self.link.raw_data(data)

    def eof_received(self) -> bool | None:
        self.link.raw_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.raw_lost(exc)

    def pause_writing(self) -> None:
        self.link.raw_pause()

    def resume_writing(self) -> None:
        self.link.raw_resume()


def _server_wire(new_link: NewLink, stats: CarrierStats, origins: tuple[str, ...]) -> _Wire:
    ws = ServerProtocol(subprotocols=[SUBPROTOCOL], max_size=MAX_MESSAGE, logger=_wire_log)
    return _Wire(WSLink(ws, stats, origins=origins, new_link=new_link))


class WSCarrier:
    """``proxy_for(scheme, host)``: the HTTP proxy to tunnel a dial through (default: the
    environment's, as upstream; see :mod:`.http_proxy`)."""

    can_listen: bool

    def __init__(
        self,
        scheme: str,
        proxy_for: Callable[[str, str], Proxy | None] = proxy_from_environment,
    ) -> None:
        self.scheme = scheme
        self.can_listen = scheme == "ws"
        self._proxy_for = proxy_for

    async def dial(self, uri: PeerURI, conn: LinkConnection, env: CarrierEnv) -> None:
        loop = asyncio.get_running_loop()
        secure = self.scheme == "wss"
        ws = ClientProtocol(
            parse_uri(f"{self.scheme}://{uri.hostport}{uri.path or '/'}"),
            subprotocols=[SUBPROTOCOL],
            max_size=MAX_MESSAGE,
            logger=_wire_log,
        )
        link = WSLink(ws, env.stats_for(self.scheme))
        try:
            proxy = self._proxy_for(self.scheme, uri.host)
        except ValueError as exc:  # a proxy variable we cannot use: the peer's error
            raise ConnectionError(str(exc)) from None
        if proxy is None:
            await loop.create_connection(
                lambda: _Wire(link),
                uri.host,
                uri.port,
                ssl=env.tls_contexts()[1] if secure else None,
                server_hostname=(uri.sni or "") if secure else None,
                ssl_handshake_timeout=env.config.handshake_timeout if secure else None,
            )
        else:
            await self._through(proxy, uri, link, env)
        # the link is attached first: frames that ride with the 101 reach it, and its
        # meta waits in the early buffer until the upgrade is done
        link.attach(conn)
        try:
            ws.send_request(ws.connect())
            link._flush()
            await asyncio.shield(link.opened)
        except BaseException:
            link.abort()
            raise

    async def _through(self, proxy: Proxy, uri: PeerURI, link: WSLink, env: CarrierEnv) -> None:
        """The dial's TCP through an HTTP CONNECT tunnel (then TLS inside it for wss)."""
        raw, rest = await open_tunnel(proxy, uri.host, uri.port)
        wire = _Wire(link)
        try:
            if self.scheme == "wss":
                if rest:
                    raise ConnectionError("the proxy sent bytes before the TLS handshake")
                tls = await asyncio.get_running_loop().start_tls(
                    raw,
                    wire,
                    env.tls_contexts()[1],
                    server_hostname=uri.sni or "",
                    ssl_handshake_timeout=env.config.handshake_timeout,
                )
                if tls is None:
                    raise ConnectionError("the TLS connection through the proxy closed")
                wire.connection_made(tls)
            else:
                raw.set_protocol(wire)
                wire.connection_made(raw)
                if rest:
                    wire.data_received(rest)
                raw.resume_reading()
        except BaseException:
            raw.abort()
            raise

    async def listen(self, uri: PeerURI, new_link: NewLink, env: CarrierEnv) -> Listener:
        if not self.can_listen:
            raise ValueError(f"{self.scheme}:// cannot listen")
        stats = env.stats_for(self.scheme)
        server = await asyncio.get_running_loop().create_server(
            lambda: _server_wire(new_link, stats, uri.origins),
            uri.host,
            uri.port,
            backlog=socket.SOMAXCONN,
        )
        host, port = server.sockets[0].getsockname()[:2]
        return ServerListener(server, PeerURI(uri.scheme, host, port, path=uri.path).base)


def carrier(scheme: str) -> WSCarrier:
    return WSCarrier(scheme)
