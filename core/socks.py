"""A SOCKS5 proxy on 127.0.0.1 that dials mesh addresses (RFC 1928, RFC 1929 auth).

Any program reaches the mesh through it (``curl --socks5-hostname``, ssh's
``ProxyCommand``, a browser) with no root and no TUN. Destinations may be an IPv6
address in ``200::/7``, or a host name ``<64 hex>.mesh`` / ``<address>.mesh``; anything
else is refused with "connection not allowed by ruleset". Username/password
authentication is required (user ``mesh``, the token in ``<data dir>/socks.token``),
because the proxy is a local service.

The parser is sans-IO: :class:`SocksParser` is fed bytes and returns what it needs next.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import ipaddress
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from core.address import address_for_key, is_mesh_address
from core.pipe import pipe_both_ways
from core.tasks import within

__all__ = [
    "SocksError",
    "SocksParser",
    "SocksProxy",
    "SocksRequest",
    "load_or_create_token",
    "resolve_mesh_host",
]

log = logging.getLogger(__name__)

VERSION = 5
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
REP_OK = 0x00
REP_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_HOST_UNREACHABLE = 0x04
REP_REFUSED = 0x05
REP_CMD_UNSUPPORTED = 0x07
REP_ATYP_UNSUPPORTED = 0x08
MAX_CLIENTS = 256
HANDSHAKE_TIMEOUT = 10.0


class SocksError(ValueError):
    """The client broke the SOCKS protocol; ``reply`` is the code to answer with."""

    def __init__(self, message: str, reply: int = REP_FAILURE) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class SocksRequest:
    host: str
    port: int


class _State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    DONE = "done"


class SocksParser:
    """Sans-IO server side of the SOCKS5 handshake.

    ``feed(data)`` returns ``(reply_bytes, event)`` where event is None (need more),
    ``("auth", user, password)`` or ``("request", SocksRequest)``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.state = _State.GREETING

    @property
    def buffered(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, tuple[object, ...] | None]:
        self._buf += data
        if len(self._buf) > 1024:
            raise SocksError("handshake too long")
        if self.state is _State.GREETING:
            return self._greeting()
        if self.state is _State.AUTH:
            return self._auth()
        if self.state is _State.REQUEST:
            return self._request()
        raise SocksError("data after the handshake")

    def _greeting(self) -> tuple[bytes, tuple[object, ...] | None]:
        if len(self._buf) < 2:
            return b"", None
        if self._buf[0] != VERSION:
            raise SocksError(f"not SOCKS5 (version byte {self._buf[0]})")
        n = self._buf[1]
        if len(self._buf) < 2 + n:
            return b"", None
        methods = bytes(self._buf[2 : 2 + n])
        del self._buf[: 2 + n]
        if METHOD_USERPASS not in methods:
            self.state = _State.DONE
            return bytes([VERSION, METHOD_NONE_ACCEPTABLE]), ("no-auth",)
        self.state = _State.AUTH
        reply = bytes([VERSION, METHOD_USERPASS])
        more, event = self._auth() if self._buf else (b"", None)
        return reply + more, event

    def _auth(self) -> tuple[bytes, tuple[object, ...] | None]:
        buf = self._buf
        if len(buf) < 2:
            return b"", None
        if buf[0] != 0x01:
            raise SocksError("bad username/password sub-negotiation version")
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return b"", None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return b"", None
        user = bytes(buf[2 : 2 + ulen]).decode("utf-8", "replace")
        password = bytes(buf[3 + ulen : end]).decode("utf-8", "replace")
        del buf[:end]
        self.state = _State.REQUEST
        return b"", ("auth", user, password)

    def _request(self) -> tuple[bytes, tuple[object, ...] | None]:
        buf = self._buf
        if len(buf) < 5:
            return b"", None
        if buf[0] != VERSION:
            raise SocksError("bad request version")
        if buf[1] != CMD_CONNECT:
            raise SocksError("only CONNECT is supported", REP_CMD_UNSUPPORTED)
        atyp = buf[3]
        if atyp == ATYP_IPV6:
            end = 4 + 16 + 2
            if len(buf) < end:
                return b"", None
            host = str(ipaddress.IPv6Address(bytes(buf[4:20])))
        elif atyp == ATYP_DOMAIN:
            end = 5 + buf[4] + 2
            if len(buf) < end:
                return b"", None
            host = bytes(buf[5 : 5 + buf[4]]).decode("ascii", "replace")
        elif atyp == ATYP_IPV4:
            raise SocksError("IPv4 destinations are not on the mesh", REP_NOT_ALLOWED)
        else:
            raise SocksError(f"unknown address type {atyp}", REP_ATYP_UNSUPPORTED)
        (port,) = struct.unpack("!H", buf[end - 2 : end])
        del buf[:end]
        self.state = _State.DONE
        return b"", ("request", SocksRequest(host, port))


def reply(code: int, bound: tuple[str, int] | None = None) -> bytes:
    addr = ipaddress.ip_address(bound[0].split("%", 1)[0] if bound else "::")
    atyp = ATYP_IPV6 if addr.version == 6 else ATYP_IPV4
    port = bound[1] if bound else 0
    return bytes([VERSION, code, 0, atyp]) + addr.packed + struct.pack("!H", port)


def resolve_mesh_host(host: str) -> ipaddress.IPv6Address | None:
    """``200:…``, ``[200:…]``, ``<64 hex>.mesh`` or ``<address>.mesh`` → mesh address."""
    name = host.strip().strip("[]").lower()
    if name.endswith(".mesh"):
        name = name[: -len(".mesh")]
        if len(name) == 64:
            try:
                return address_for_key(bytes.fromhex(name))
            except ValueError:
                return None
        name = name.replace("-", ":")  # DNS-safe form: 200-1234--1.mesh
    try:
        addr = ipaddress.IPv6Address(name)
    except ValueError:
        return None
    return addr if is_mesh_address(addr) else None


def load_or_create_token(path: Path) -> str:
    """The proxy password: a random token in a 0600 file, created on first use."""
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = _open_0600(path)
    with open(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _open_0600(path: Path) -> int:
    import os

    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


Dialer = Callable[
    [ipaddress.IPv6Address, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
]


class SocksProxy:
    """The asyncio adapter: one task per client, owned and cancelled on close."""

    def __init__(self, dial: Dialer, username: str, password: str) -> None:
        self._dial = dial
        self._user = username.encode()
        self._password = password.encode()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the SOCKS proxy listens on loopback only")
        self._server = await asyncio.start_server(self._client, host, port)
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CLIENTS:
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> SocksRequest | None:
        parser = SocksParser()
        while True:
            data = await reader.read(1024)
            if not data:
                return None
            try:
                out, event = parser.feed(data)
            except SocksError as exc:
                log.info("socks: %s", exc)
                if parser.state in (_State.REQUEST, _State.DONE):
                    writer.write(reply(exc.reply))
                return None
            writer.write(out)
            if event is None:
                continue
            if event[0] == "no-auth":
                return None
            if event[0] == "auth":
                ok = hmac.compare_digest(str(event[1]).encode(), self._user) & hmac.compare_digest(
                    str(event[2]).encode(), self._password
                )
                writer.write(bytes([0x01, 0x00 if ok else 0x01]))
                if not ok:
                    log.warning("socks: wrong username or password")
                    return None
                if not parser.buffered:
                    continue
                out, event = parser.feed(b"")  # the request came in the same segment
                if event is None:
                    continue
            assert isinstance(event[1], SocksRequest)
            return event[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await within(self._handshake(reader, writer), HANDSHAKE_TIMEOUT)
        if request is None:
            return
        target = resolve_mesh_host(request.host)
        if target is None:
            log.info("socks: refused non-mesh destination %s", request.host)
            writer.write(reply(REP_NOT_ALLOWED))
            return
        try:
            remote = await self._dial(target, request.port)
        except ConnectionRefusedError:
            writer.write(reply(REP_REFUSED))
            return
        except (OSError, TimeoutError) as exc:
            log.info("socks: %s port %d: %s", target, request.port, exc)
            writer.write(reply(REP_HOST_UNREACHABLE))
            return
        sock = remote[1].get_extra_info("sockname")
        writer.write(reply(REP_OK, (str(sock[0]), int(sock[1])) if sock else None))
        await writer.drain()
        await pipe_both_ways((reader, writer), remote)
