"""HTTP ``CONNECT`` tunnels for the WebSocket carrier's dials (a proxy that passes only HTTP).

yggdrasil-go dials ``ws://``/``wss://`` through ``http.ProxyFromEnvironment``; the
same environment is read here: ``HTTPS_PROXY`` for ``wss://``, ``HTTP_PROXY`` for
``ws://`` (either case), ``NO_PROXY`` honoured, loopback never proxied. A tunnel is
one ``CONNECT host:port`` (with ``Proxy-Authorization: Basic`` when the proxy URL
carries a user), answered by a ``2xx`` status within :data:`MAX_HEAD` bytes; the
WebSocket (and, for ``wss://``, TLS) then runs inside it. The caller bounds the time.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["MAX_HEAD", "Proxy", "open_tunnel", "proxy_from_environment"]

MAX_HEAD = 8 * 1024  # the proxy's answer to CONNECT, headers included


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # the Proxy-Authorization value, if any


def parse_proxy(url: str) -> Proxy:
    """``http://[user:pass@]host[:port]`` (port 80 if none); ValueError otherwise."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"proxy {url!r}: only http:// proxies are supported")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    return Proxy(parts.hostname, parts.port or 80, auth)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def proxy_from_environment(scheme: str, host: str) -> Proxy | None:
    """The proxy the environment names for a ``ws``/``wss`` dial to ``host``, if any."""
    proxies = urllib.request.getproxies_environment()
    if _loopback(host) or _bypassed(host, proxies.get("no", "")):
        return None
    url = proxies.get("https" if scheme == "wss" else "http")
    return parse_proxy(url) if url else None


def _bypassed(host: str, no_proxy: str) -> bool:
    """``NO_PROXY``: ``*``, or names/domains (``example.org``, ``.example.org``) and
    addresses, comma-separated; a port suffix is ignored."""
    host = host.lower().rstrip(".")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry = entry.strip("[]").rsplit(":", 1)[0] if entry.count(":") == 1 else entry
        name = entry.lstrip(".").strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False


class _Tunnel(asyncio.Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self._head = bytearray()
        self.ready: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.ready.done():
            self._head += data  # after the answer and before the hand-over: kept for it
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._fail("the proxy's answer to CONNECT is too long")
            return
        status = bytes(self._head[: self._head.find(b"\r\n")]).decode("latin-1")
        fields = status.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].startswith("2"):
            self._fail(f"the proxy refused CONNECT: {status[:120]!r}")
            return
        self._transport.pause_reading()
        rest, self._head = bytes(self._head[end + 4 :]), bytearray()
        self.ready.set_result(rest)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("the proxy closed the connection"))

    def leftover(self) -> bytes:
        return bytes(self._head)


async def open_tunnel(proxy: Proxy, host: str, port: int) -> tuple[asyncio.Transport, bytes]:
    """A TCP connection through ``proxy`` to ``host:port``: the transport (reading
    paused, its protocol to be replaced) and any bytes that followed the proxy's
    answer. Raises ``ConnectionError`` if the proxy refuses."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if proxy.authorization:
        head += f"Proxy-Authorization: {proxy.authorization}\r\n"
    tunnel = _Tunnel((head + "\r\n").encode("latin-1"))
    transport, _ = await asyncio.get_running_loop().create_connection(
        lambda: tunnel, proxy.host, proxy.port
    )
    try:
        rest = await tunnel.ready
    except BaseException:
        transport.abort()
        raise
    return transport, rest + tunnel.leftover()
