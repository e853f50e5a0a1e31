"""LAN discovery, wire-compatible with yggdrasil-go 0.5's multicast module.

Followed: yggdrasil-go v0.5.12 ``src/multicast/advertisement.go`` and ``multicast.go``.

A beacon is one UDP datagram to ``[ff02::114]:9001`` on each matching interface, sent
from a link-local address::

    major u16 | minor u16 | public key [32] | TLS port u16 | hash length u16 | hash

where ``hash`` is BLAKE2b-512 of the public key, keyed by the interface's password (an
unkeyed hash for no password). A listener that hears a beacon from another key with
the same protocol version and a hash that matches its own password dials
``tls://[fe80::…%iface]:port?key=…``. Announcements start every second and back off by
a second per beacon to every 15 s, with up to ~1 s of jitter, as upstream does.

:class:`Beacon` is the sans-IO codec; :class:`Discovery` the asyncio side. It needs two
callbacks from the node: ``listen_tls(host_with_zone) -> port`` and ``dial(uri)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import random
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from core.tasks import cancel_and_wait

__all__ = [
    "GROUP",
    "PORT",
    "Beacon",
    "Discovery",
    "InterfacePolicy",
    "beacon_hash",
    "link_local_interfaces",
]

log = logging.getLogger(__name__)

GROUP = "ff02::114"
PORT = 9001
PROTOCOL_MAJOR, PROTOCOL_MINOR = 0, 5
KEY_SIZE = 32
MAX_INTERVAL = 15.0
IFF_UP, IFF_LOOPBACK, IFF_POINTOPOINT, IFF_MULTICAST = 0x1, 0x8, 0x10, 0x1000


def beacon_hash(public_key: bytes, password: bytes = b"") -> bytes:
    return hashlib.blake2b(public_key, digest_size=64, key=password).digest()


@dataclass(frozen=True, slots=True)
class Beacon:
    public_key: bytes
    port: int
    hash: bytes
    major: int = PROTOCOL_MAJOR
    minor: int = PROTOCOL_MINOR

    @classmethod
    def parse(cls, data: bytes) -> Beacon:
        if len(data) < KEY_SIZE + 8:
            raise ValueError(f"beacon too short: {len(data)} bytes, need at least {KEY_SIZE + 8}")
        major, minor = struct.unpack_from("!HH", data, 0)
        key = bytes(data[4 : 4 + KEY_SIZE])
        port, hash_len = struct.unpack_from("!HH", data, 4 + KEY_SIZE)
        body = bytes(data[8 + KEY_SIZE : 8 + KEY_SIZE + hash_len])
        if len(body) != hash_len:
            raise ValueError(f"beacon hash truncated: {len(body)} of {hash_len} bytes")
        return cls(key, port, body, major, minor)

    def __bytes__(self) -> bytes:
        return (
            struct.pack("!HH", self.major, self.minor)
            + self.public_key
            + struct.pack("!HH", self.port, len(self.hash))
            + self.hash
        )


@dataclass(frozen=True)
class InterfacePolicy:
    """One ``MulticastInterfaces`` entry: which interfaces, and what to do on them."""

    regex: str = ".*"
    beacon: bool = True
    listen: bool = True
    port: int = 0
    priority: int = 0
    password: str = ""

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.regex, name) is not None or re.match(self.regex, name) is not None


def _flags(name: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{name}/flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return 0


def _running(name: str) -> bool:
    # IFF_RUNNING is not in sysfs "flags"; the kernel reports it as the operstate.
    try:
        state = Path(f"/sys/class/net/{name}/operstate").read_text().strip()
    except OSError:
        return False
    return state in ("up", "unknown")


def link_local_interfaces() -> dict[str, list[ipaddress.IPv6Address]]:
    """Up, running, multicast, non-loopback, non-point-to-point interfaces → fe80:: addrs
    (link-local only, as upstream)."""
    found: dict[str, list[ipaddress.IPv6Address]] = {}
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 6:
            continue
        addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
        name = parts[5]
        flags = _flags(name)
        wanted = IFF_UP | IFF_MULTICAST
        if flags & wanted != wanted or flags & (IFF_LOOPBACK | IFF_POINTOPOINT):
            continue
        if not _running(name):
            continue
        if addr.is_link_local:
            found.setdefault(name, []).append(addr)
    return found


ListenTLS = Callable[[str], Awaitable[int]]
Dial = Callable[[str], Awaitable[None]]


@dataclass
class _Announcer:
    name: str
    address: ipaddress.IPv6Address
    port: int
    hash: bytes
    interval: float = 0.0
    last: float = field(default=-1e9)


class Discovery:
    """Beacons out and dials in on the interfaces a list of policies selects."""

    def __init__(
        self,
        public_key: bytes,
        policies: Iterable[InterfacePolicy],
        listen_tls: ListenTLS,
        dial: Dial,
        *,
        interfaces: Callable[[], dict[str, list[ipaddress.IPv6Address]]] = link_local_interfaces,
        port: int = PORT,
    ) -> None:
        self.public_key = public_key
        self.policies = tuple(policies)
        self._listen_tls = listen_tls
        self._dial = dial
        self._interfaces = interfaces
        self._port = port
        self._sock: socket.socket | None = None
        self._announcers: dict[str, _Announcer] = {}
        self._joined: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._dials: set[asyncio.Task[None]] = set()
        self._recent: dict[tuple[bytes, str], float] = {}
        self.heard = 0

    def _policy(self, name: str) -> InterfacePolicy | None:
        for policy in self.policies:
            if (policy.beacon or policy.listen) and policy.matches(name):
                return policy
        return None

    async def start(self) -> None:
        if not self.policies:
            return
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(AttributeError, OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.bind(("::", self._port))
        sock.setblocking(False)
        self._sock = sock
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._on_readable)
        self._task = loop.create_task(self._announce_loop())

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, what="LAN discovery")
        for task in list(self._dials):
            task.cancel()
        await asyncio.gather(*self._dials, return_exceptions=True)
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def _announce_loop(self) -> None:
        while True:
            try:
                await self._announce_once()
            except OSError as exc:
                log.warning("multicast: %s", exc)
            await asyncio.sleep(1.0 + random.random() * 1.048576)

    async def _announce_once(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        current = self._interfaces()
        for name in list(self._announcers):
            if name not in current or self._announcers[name].address not in current[name]:
                del self._announcers[name]  # the listener is dropped with the address
        for name, addrs in current.items():
            policy = self._policy(name)
            if policy is None or not addrs:
                continue
            index = socket.if_nametoindex(name)
            if policy.listen and index not in self._joined:
                mreq = ipaddress.IPv6Address(GROUP).packed + struct.pack("@I", index)
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                    self._joined.add(index)
            if not policy.beacon:
                continue
            ann = self._announcers.get(name)
            if ann is None:
                port = await self._listen_tls(f"[{addrs[0]}%{name}]:{policy.port}")
                ann = _Announcer(
                    name, addrs[0], port, beacon_hash(self.public_key, policy.password.encode())
                )
                self._announcers[name] = ann
            if now - ann.last < ann.interval:
                continue
            beacon = bytes(Beacon(self.public_key, ann.port, ann.hash))
            self._sock.sendto(beacon, (GROUP, self._port, 0, index))
            ann.interval = min(ann.interval + 1.0, MAX_INTERVAL)
            ann.last = now

    def _on_readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):  # bounded work per wake-up
            try:
                data, addr = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("multicast recv: %s", exc)
                return
            self._on_datagram(data, addr)

    def _on_datagram(self, data: bytes, addr: tuple[str, int, int, int]) -> None:
        try:
            beacon = Beacon.parse(data)
        except ValueError:
            return
        if (beacon.major, beacon.minor) != (PROTOCOL_MAJOR, PROTOCOL_MINOR):
            return
        if beacon.public_key == self.public_key:
            return
        host, _, _, scope = addr
        name = host.split("%", 1)[1] if "%" in host else socket.if_indextoname(scope)
        policy = self._policy(name)
        if policy is None or not policy.listen:
            return
        if beacon.hash != beacon_hash(beacon.public_key, policy.password.encode()):
            return
        self.heard += 1
        loop = asyncio.get_running_loop()
        key = (beacon.public_key, name)
        if loop.time() - self._recent.get(key, -1e9) < 5.0 or len(self._dials) >= 16:
            return  # bounded: one call per peer and interface every 5 s, 16 at a time
        self._recent[key] = loop.time()
        if len(self._recent) > 1024:
            self._recent.clear()
        ip = host.split("%", 1)[0]
        query = f"key={beacon.public_key.hex()}&priority={policy.priority}"
        if policy.password:
            query += f"&password={quote(policy.password)}"
        uri = f"tls://[{ip}%{name}]:{beacon.port}?{query}"
        task = loop.create_task(self._dial_logged(uri))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _dial_logged(self, uri: str) -> None:
        try:
            await self._dial(uri)
        except Exception as exc:
            log.debug("multicast: call to %s failed: %s", uri, exc)
