"""The yggdrasil admin socket: JSON requests and replies, 0.4.x and 0.5.x.

Protocol (yggdrasil-go ``src/admin/admin.go``, ``cmd/yggdrasilctl/main.go``): the client
writes one JSON object ``{"request": NAME, "arguments": {...}, "keepalive": true}``; the
daemon answers with one indented JSON object ``{"status": "success"|"error", "error": ...,
"request": ..., "response": {...}}`` and, with ``keepalive``, waits for the next request
on the same connection. 0.4.7 answers ``"request": null`` and, after a panic, a bare
``{"error": ...}``; 0.4.0 gave ``getPeers``/``getSessions`` as maps keyed by address.

The wire part is sans-IO: :func:`encode_request` makes bytes and :class:`ReplyScanner`
cuts complete JSON objects out of received bytes (bounded). The ``parse_*`` functions
turn replies into typed results. :class:`AdminClient` is the thin asyncio adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from core.address import address_for_key
from core.backend import PeerInfo
from core.errors import MeshError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_REPLY_BYTES",
    "AdminClient",
    "AdminCommandError",
    "AdminEndpoint",
    "AdminProtocolError",
    "DaemonUnreachableError",
    "ReplyScanner",
    "SelfInfo",
    "SessionInfo",
    "TunInfo",
    "encode_request",
    "parse_endpoint",
    "parse_peers",
    "parse_self",
    "parse_sessions",
    "parse_tun",
    "unwrap_reply",
]

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 4 * 1024 * 1024  # a getPeers of a very busy public node is ~1 MB
DEFAULT_TIMEOUT = 5.0
_WS = b" \t\r\n"


class AdminProtocolError(MeshError):
    """The admin endpoint answered something that is not a yggdrasil admin reply."""


class AdminCommandError(MeshError):
    """The daemon understood the request and refused it (``"status": "error"``)."""


class DaemonUnreachableError(MeshError):
    """No daemon answers at the admin endpoint (not running, vanished, no permission)."""


# -- endpoints ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdminEndpoint:
    kind: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_endpoint(text: str) -> AdminEndpoint:
    """``unix:///path``, ``tcp://host:port``, a bare ``/path`` or ``host:port``."""
    value = text.strip()
    if value.startswith("unix://"):
        path = value[len("unix://") :]
        if not path:
            raise MeshError(f"admin endpoint {text!r} has no socket path")
        return AdminEndpoint("unix", path=path)
    if value.startswith("/"):
        return AdminEndpoint("unix", path=value)
    rest = value[len("tcp://") :] if value.startswith("tcp://") else value
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise MeshError(
            f"admin endpoint {text!r} is neither unix:///path nor tcp://host:port "
            "(see AdminListen in the daemon's config)"
        )
    return AdminEndpoint("tcp", host=host.strip("[]"), port=int(port))


# -- wire (sans-IO) ------------------------------------------------------------------


def encode_request(name: str, arguments: dict[str, str] | None = None) -> bytes:
    """One request as yggdrasilctl sends it, asking the daemon to keep the connection."""
    req: dict[str, Any] = {"request": name, "arguments": arguments or {}, "keepalive": True}
    return json.dumps(req).encode() + b"\n"


class ReplyScanner:
    """Cuts complete top-level JSON objects out of a byte stream.

    The daemon's encoder writes indented JSON, so lines do not delimit replies; the
    scanner tracks brace depth outside strings. Anything before a reply that is not
    whitespace or ``{``, a reply larger than ``max_size``, or a reply that is not valid
    JSON raises :class:`AdminProtocolError`; the scanner is then unusable.
    """

    def __init__(self, max_size: int = MAX_REPLY_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._pos = 0  # scan position inside _buf
        self._start = -1  # index of the current object's "{"
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._broken: str | None = None

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._broken:
            raise AdminProtocolError(self._broken)
        self._buf += data

    def next_reply(self) -> dict[str, Any] | None:
        """The next complete reply, or None until more bytes arrive."""
        if self._broken:
            raise AdminProtocolError(self._broken)
        buf = self._buf
        i = self._pos
        while i < len(buf):
            c = buf[i]
            if self._start < 0:
                if c in _WS:
                    i += 1
                    continue
                if c != 0x7B:  # "{"
                    snippet = bytes(buf[i : i + 40])
                    self._fail(f"reply does not start with a JSON object: {snippet!r}")
                self._start = i
                self._depth = 0
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == 0x5C:  # backslash
                    self._escape = True
                elif c == 0x22:
                    self._in_string = False
            elif c == 0x22:
                self._in_string = True
            elif c == 0x7B or c == 0x5B:
                self._depth += 1
            elif c == 0x7D or c == 0x5D:
                self._depth -= 1
                if self._depth == 0:
                    return self._take(i + 1)
            i += 1
        if self._start < 0:  # only whitespace so far: drop it
            del buf[:i]
            i = 0
        self._pos = i
        if self._start >= 0 and len(buf) - self._start > self._max:
            self._fail(f"reply exceeds {self._max} bytes without ending")
        return None

    def _take(self, end: int) -> dict[str, Any] | None:
        raw = bytes(self._buf[self._start : end])
        del self._buf[:end]
        self._pos = 0
        self._start = -1
        if len(raw) > self._max:
            self._fail(f"reply of {len(raw)} bytes exceeds {self._max}")
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._fail(f"reply is not valid JSON ({exc})")
        if not isinstance(value, dict):  # pragma: no cover - starts with "{"
            self._fail("reply is not a JSON object")
        return value

    def _fail(self, why: str) -> NoReturn:
        self._broken = why
        raise AdminProtocolError(why)


def unwrap_reply(reply: dict[str, Any], request: str) -> Any:
    """The ``response`` of a successful reply; the daemon's refusal as an error."""
    status = reply.get("status")
    if status == "success":
        if "response" not in reply:
            raise AdminProtocolError(f"{request}: a success reply without a response field")
        return reply["response"]
    error = reply.get("error")
    if status == "error" or (status is None and isinstance(error, str)):
        raise AdminCommandError(f"the daemon refused {request}: {error or 'no reason given'}")
    raise AdminProtocolError(f"{request}: reply has no status: {_short(reply)}")


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- typed results -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SelfInfo:
    key: bytes
    address: ipaddress.IPv6Address
    subnet: ipaddress.IPv6Network
    build_name: str
    build_version: str
    generation: Literal["0.4", "0.5"]  # reply shape: 0.4 has coords, 0.5 routing entries
    routing_entries: int | None = None
    coords: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key.hex(),
            "address": str(self.address),
            "subnet": str(self.subnet),
            "build_name": self.build_name,
            "build_version": self.build_version,
            "generation": self.generation,
            "routing_entries": self.routing_entries,
            "coords": list(self.coords) if self.coords is not None else None,
        }


@dataclass(frozen=True, slots=True)
class SessionInfo:
    key: bytes
    address: ipaddress.IPv6Address
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    uptime: float | None = None


@dataclass(frozen=True, slots=True)
class TunInfo:
    enabled: bool
    name: str | None
    mtu: int | None


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AdminProtocolError(f"{what} is not a JSON object: {_short(value)}")
    return value


def _key(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise AdminProtocolError(f"{what}: key is not 64 hex characters: {value!r}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise AdminProtocolError(f"{what}: key is not hex: {value!r}") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _checked_address(key: bytes, claimed: Any, what: str) -> ipaddress.IPv6Address:
    address = address_for_key(key)
    if claimed is not None and str(claimed) != str(address):
        try:
            same = ipaddress.IPv6Address(str(claimed)) == address
        except ValueError:
            same = False
        if not same:
            raise AdminProtocolError(f"{what}: address {claimed} does not belong to its key")
    return address


def parse_self(response: Any) -> SelfInfo:
    body = _obj(response, "getSelf response")
    key = _key(body.get("key"), "getSelf")
    address = _checked_address(key, body.get("address"), "getSelf")
    try:
        subnet = ipaddress.IPv6Network(str(body.get("subnet")))
    except ValueError:
        raise AdminProtocolError(f"getSelf: bad subnet {body.get('subnet')!r}") from None
    coords = body.get("coords")
    generation: Literal["0.4", "0.5"] = "0.4" if "coords" in body else "0.5"
    return SelfInfo(
        key=key,
        address=address,
        subnet=subnet,
        build_name=str(body.get("build_name", "unknown")),
        build_version=str(body.get("build_version", "unknown")),
        generation=generation,
        routing_entries=_int(body.get("routing_entries")),
        coords=tuple(c for c in coords if isinstance(c, int)) if isinstance(coords, list) else None,
    )


def _entries(response: Any, field: str, what: str) -> list[tuple[str | None, dict[str, Any]]]:
    """``[entry, ...]`` (0.4.1+) or ``{address: entry}`` (0.4.0) as (map key, entry)."""
    body = _obj(response, f"{what} response")
    raw = body.get(field)
    if raw is None:
        return []
    if isinstance(raw, list):
        return [(None, _obj(e, f"{what} entry")) for e in raw]
    if isinstance(raw, dict):
        return [(str(k), _obj(e, f"{what} entry")) for k, e in raw.items()]
    raise AdminProtocolError(f"{what}: {field!r} is neither a list nor a map: {_short(raw)}")


def _peer_endpoint(uri: str) -> tuple[str | None, int | None]:
    """Host and port out of ``tls://[fd00::1]:1234?key=..`` (None when not there)."""
    rest = uri.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None, None
    return host.strip("[]") or None, int(port)


def parse_peers(response: Any) -> list[PeerInfo]:
    peers: list[PeerInfo] = []
    for map_key, entry in _entries(response, "peers", "getPeers"):
        raw_key = entry.get("key")
        key = _key(raw_key, "getPeers") if raw_key else None  # 0.5: empty while down
        if key is not None:
            _checked_address(key, entry.get("address", map_key), "getPeers")
        uri = str(entry.get("remote") or "")
        last_error = entry.get("last_error")
        peers.append(
            PeerInfo(
                uri=uri,
                key=key,
                up=bool(entry.get("up", True)),  # 0.4 lists connected peers only
                inbound=bool(entry.get("inbound", False)),
                address=str(address_for_key(key)) if key else None,
                port=_int(entry.get("port")),
                priority=_int(entry.get("priority")) or 0,
                uptime=_float(entry.get("uptime")),
                rx_bytes=_int(entry.get("bytes_recvd")),
                tx_bytes=_int(entry.get("bytes_sent")),
                last_error=str(last_error) if last_error else None,
            )
        )
    return peers


def parse_sessions(response: Any) -> list[SessionInfo]:
    sessions: list[SessionInfo] = []
    for map_key, entry in _entries(response, "sessions", "getSessions"):
        key = _key(entry.get("key"), "getSessions")
        address = _checked_address(key, entry.get("address", map_key), "getSessions")
        sessions.append(
            SessionInfo(
                key=key,
                address=address,
                rx_bytes=_int(entry.get("bytes_recvd")),
                tx_bytes=_int(entry.get("bytes_sent")),
                uptime=_float(entry.get("uptime")),
            )
        )
    return sessions


def parse_tun(response: Any) -> TunInfo:
    body = _obj(response, "getTun response")
    name = body.get("name")
    return TunInfo(
        enabled=bool(body.get("enabled", False)),
        name=name if isinstance(name, str) and name else None,
        mtu=_int(body.get("mtu")),
    )


# -- asyncio adapter ---------------------------------------------------------------


class AdminClient:
    """Requests over one kept-alive admin connection, one at a time.

    A broken connection is reopened once per request (the daemon may have restarted);
    if that fails too the request raises :class:`DaemonUnreachableError`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_reply: int = MAX_REPLY_BYTES,
    ) -> None:
        self.endpoint = parse_endpoint(endpoint)
        self.timeout = timeout
        self._max_reply = max_reply
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._scanner = ReplyScanner(max_reply)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(self, name: str, arguments: dict[str, str] | None = None) -> Any:
        """Send ``name`` and return the daemon's ``response`` field."""
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._writer is None
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
                    # cancellation that lands as the exchange completes, so a task
                    # cancelled mid-request (the peers poller on close) ran on forever.
                    async with asyncio.timeout(self.timeout):
                        reply = await self._exchange(name, arguments)
                except (OSError, EOFError, TimeoutError) as exc:
                    await self.close()
                    if attempt == 2 or fresh:
                        raise self._unreachable(name, exc) from None
                    log.debug("admin connection to %s broke (%s); reconnecting", self, exc)
                    continue
                except AdminProtocolError:
                    await self.close()
                    raise
                return unwrap_reply(reply, name)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, name: str, arguments: dict[str, str] | None) -> dict[str, Any]:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(encode_request(name, arguments))
        await self._writer.drain()
        while True:
            try:
                reply = self._scanner.next_reply()
            except AdminProtocolError as exc:
                raise AdminProtocolError(
                    f"{self.endpoint} answered {name} with something that is not a yggdrasil "
                    f"admin reply ({exc}); check that AdminListen points at a yggdrasil daemon"
                ) from None
            if reply is not None:
                return reply
            data = await self._reader.read(65536)
            if not data:
                raise EOFError("the daemon closed the admin connection")
            self._scanner.feed(data)

    async def _connect(self) -> None:
        self._scanner = ReplyScanner(self._max_reply)
        ep = self.endpoint
        if ep.kind == "unix":
            reader, writer = await asyncio.open_unix_connection(ep.path, limit=self._max_reply)
        else:
            reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=self._max_reply)
        self._reader, self._writer = reader, writer

    def _unreachable(self, name: str, exc: BaseException) -> DaemonUnreachableError:
        ep = self.endpoint
        if isinstance(exc, PermissionError):
            hint = (
                f"no permission to use {ep.path}; run as root or join the group that owns "
                f"it (ls -l {ep.path})"
            )
        elif isinstance(exc, TimeoutError):
            hint = f"no answer within {self.timeout:g} s; the daemon is stuck or overloaded"
        elif isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            hint = (
                "no yggdrasil daemon is listening there; start it (systemctl start yggdrasil) "
                "or point admin / --admin at its AdminListen"
            )
        else:
            hint = f"{exc or type(exc).__name__}; is the daemon still running?"
        return DaemonUnreachableError(f"yggdrasil admin {ep} ({name}): {hint}")

    def __str__(self) -> str:
        return str(self.endpoint)

    # -- typed calls ---------------------------------------------------------------
    async def get_self(self) -> SelfInfo:
        return parse_self(await self.request("getSelf"))

    async def get_peers(self) -> list[PeerInfo]:
        return parse_peers(await self.request("getPeers"))

    async def get_sessions(self) -> list[SessionInfo]:
        return parse_sessions(await self.request("getSessions"))

    async def get_tun(self) -> TunInfo:
        return parse_tun(await self.request("getTun"))

    async def add_peer(self, uri: str, interface: str | None = None) -> None:
        args = {"uri": uri, **({"interface": interface} if interface else {})}
        await self.request("addPeer", args)

    async def remove_peer(self, uri: str, interface: str | None = None) -> None:
        args = {"uri": uri, **({"interface": interface} if interface else {})}
        await self.request("removePeer", args)
