"""``EmbeddedYggdrasil``: a yggdrasil 0.5 node inside this process, no TUN, no root.

It composes what yggdrasil-go's ``core.Core`` + ``ipv6rwc`` do, over four layers:

* :class:`~core.embedded.network.PacketNetwork` — links and ironwood routing, with
  yggdrasil's bloom transform (``SubnetForKey(k).GetKey()``) and path notifications;
* :class:`~core.embedded.packetconn.EncryptedPacketConn` — ironwood sessions;
* the session type byte (``1`` IPv6, ``2`` proto) of ``core.go``;
* :class:`~core.embedded.ipv6.IPv6Layer` (ipv6rwc) and
  :class:`~core.embedded.proto.ProtoHandler` (nodeinfo and debug answers).

On top it answers ICMPv6 echo for its own address (so ``ping -6`` from a daemon host
works) and sends echo requests itself (:meth:`EmbeddedYggdrasil.ping`). IPv6 packets
for the node's userspace stack come out of :meth:`set_ipv6_handler` already
source-authenticated; packets from the stack go in through :meth:`send_ipv6`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.address import address_for_key, partial_key_for_subnet, subnet_for_key
from core.embedded import ipv6 as v6
from core.embedded.config import NetworkConfig
from core.embedded.network import PacketNetwork, PeerEvent, PeerInfo, TreeInfo
from core.embedded.packetconn import EncryptedPacketConn, OversizedMessageError
from core.embedded.proto import (
    ProtoHandler,
    SelfView,
    default_nodeinfo,
    encode_nodeinfo,
    split_keys,
)
from core.embedded.session import SessionConfig, SessionStats
from core.identity import Identity
from core.tasks import within

__all__ = ["EmbeddedConfig", "EmbeddedYggdrasil", "bloom_transform"]

log = logging.getLogger(__name__)

VERSION = "0.1.0"
MAX_IPV6_MTU = 65535
KEYSTORE_EXPIRE_INTERVAL = 10.0
ECHO_DATA_SIZE = 56  # ping(8)'s default payload
MAX_PINGS_IN_FLIGHT = 1024


def bloom_transform(key: bytes) -> bytes:
    """yggdrasil's ``keyXform``: ``address.SubnetForKey(key).GetKey()``."""
    return partial_key_for_subnet(subnet_for_key(key))


@dataclass(frozen=True)
class EmbeddedConfig:
    """Settings of one embedded node (the yggdrasil config keys it honours)."""

    peers: tuple[str, ...] = ()  # Peers
    listen: tuple[str, ...] = ()  # Listen
    mtu: int = MAX_IPV6_MTU  # IfMTU: clamped to [1280, what sessions can carry]
    nodeinfo: dict[str, Any] = field(default_factory=dict)  # NodeInfo
    nodeinfo_privacy: bool = False  # NodeInfoPrivacy
    sessions: SessionConfig = field(default_factory=SessionConfig)
    network: NetworkConfig | None = None
    pending_per_destination: int = 1  # ipv6rwc keeps the latest packet per destination


class NetworkProvider(Protocol):
    """The routed network (:class:`PacketNetwork` or a stand-in with the same surface)."""

    public_key: bytes
    mtu: int

    def set_handler(self, handler: Callable[[bytes, bytes], None]) -> None: ...
    def send(self, dest_key: bytes, payload: bytes) -> None: ...
    def send_lookup(self, target_key: bytes) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def listen(self, uri: str) -> str: ...
    async def add_peer(self, uri: str) -> None: ...
    async def remove_peer(self, uri: str) -> None: ...
    def peers(self) -> list[PeerInfo]: ...
    def tree(self) -> TreeInfo: ...
    def subscribe_peer_events(self, cb: Callable[[PeerEvent], None]) -> Callable[[], None]: ...


NetworkFactory = Callable[
    [bytes, Callable[[bytes], bytes], Callable[[bytes], None], NetworkConfig | None],
    NetworkProvider,
]


def _packet_network(
    seed: bytes,
    transform: Callable[[bytes], bytes],
    notify: Callable[[bytes], None],
    config: NetworkConfig | None,
) -> NetworkProvider:
    return PacketNetwork(seed, bloom_transform=transform, path_notify=notify, config=config)


class EmbeddedYggdrasil:
    """One in-process yggdrasil node. Create, ``await start()``, ``await close()``."""

    def __init__(
        self,
        seed: bytes,
        config: EmbeddedConfig | None = None,
        *,
        network_factory: NetworkFactory | None = None,
    ) -> None:
        self.config = config or EmbeddedConfig()
        self.identity = Identity.from_seed(seed)
        factory = network_factory or _packet_network
        self.network = factory(seed, bloom_transform, self._on_path_notify, self.config.network)
        self.conn = EncryptedPacketConn(self.network, seed, config=self.config.sessions)
        self.conn.set_handler(self._on_session_payload)
        self.ipv6 = v6.IPv6Layer(
            self.public_key,
            clock=time.monotonic,
            send=self._send_session,
            lookup=self._lookup,
            max_mtu=self.max_mtu,
            mtu=self.config.mtu,
            pending_per_destination=self.config.pending_per_destination,
        )
        info = dict(self.config.nodeinfo)
        if not self.config.nodeinfo_privacy:
            info.update(default_nodeinfo(VERSION))
        self.proto = ProtoHandler(
            send=self._send_session,
            self_view=self._self_view,
            mtu=lambda: self.max_mtu,
            nodeinfo=encode_nodeinfo(info),
        )
        self._ipv6_handler: Callable[[bytes], None] | None = None
        self._datagram_handler: Callable[[bytes, bytes], None] | None = None
        self.datagrams_dropped = 0  # non-IPv6 traffic with no datagram handler
        self._address_packed = self.address.packed
        self._pings: dict[tuple[bytes, int, int], asyncio.Future[float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False

    # -- identity -------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    @property
    def address(self) -> ipaddress.IPv6Address:
        return address_for_key(self.public_key)

    @property
    def subnet(self) -> ipaddress.IPv6Network:
        return subnet_for_key(self.public_key)

    @property
    def max_mtu(self) -> int:
        """``Core.MTU``: session MTU minus the type byte, at most 65535."""
        return min(self.conn.mtu - 1, MAX_IPV6_MTU)

    @property
    def mtu(self) -> int:
        """The IPv6 MTU in use (``ipv6rwc`` MTU)."""
        return self.ipv6.mtu

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.network.start()
        await self.conn.start()
        self._spawn(self._maintenance(), "embedded-keystore")
        for uri in self.config.listen:
            await self.network.listen(uri)
        for uri in self.config.peers:
            await self.network.add_peer(uri)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for future in self._pings.values():
            future.cancel()
        self._pings.clear()
        await self.conn.close()
        await self.network.close()

    async def __aenter__(self) -> EmbeddedYggdrasil:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(KEYSTORE_EXPIRE_INTERVAL)
            self.ipv6.keys.expire()

    # -- pass-throughs ------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        return self.network.peers()

    def tree(self) -> TreeInfo:
        return self.network.tree()

    async def listen(self, uri: str) -> str:
        return await self.network.listen(uri)

    async def add_peer(self, uri: str) -> None:
        await self.network.add_peer(uri)

    async def remove_peer(self, uri: str) -> None:
        await self.network.remove_peer(uri)

    def subscribe_peer_events(self, cb: Callable[[PeerEvent], None]) -> Callable[[], None]:
        return self.network.subscribe_peer_events(cb)

    def sessions(self) -> list[SessionStats]:
        """Open sessions, like ``getSessions`` (key, uptime, rx/tx bytes)."""
        return self.conn.sessions()

    def set_session_up_handler(self, cb: Callable[[bytes], None] | None) -> None:
        """``cb(remote_key)`` whenever a session with a node opens (see packetconn)."""
        self.conn.set_session_up_handler(cb)

    # -- IPv6 -------------------------------------------------------------------------

    def set_ipv6_handler(self, cb: Callable[[bytes], None] | None) -> None:
        """``cb(packet)`` for every IPv6 packet for us whose source matches its session key."""
        self._ipv6_handler = cb

    def send_ipv6(self, packet: bytes) -> None:
        """Send one IPv6 packet from our address or subnet into the mesh.

        Raises :class:`ValueError` if it is not IPv6, does not come from this node's
        address/subnet, or is not addressed into ``200::/7``. A packet above :attr:`mtu`
        is not sent: an ICMPv6 packet-too-big is handed back to the IPv6 handler, as a
        kernel would do for a TUN with that MTU.
        """
        if len(packet) > self.ipv6.mtu:
            header = v6.IPv6Header.parse(packet)
            if not self.ipv6.is_local(header.src):
                self.ipv6.write(packet)  # raises the source error
            if self._ipv6_handler is not None:
                self._ipv6_handler(v6.build_packet_too_big(packet, self.ipv6.mtu))
            return
        self._route_out(packet)

    def _route_out(self, packet: bytes) -> None:
        """To the mesh, or, for our own address/subnet, back up our own stack (loopback)."""
        dst = self.ipv6.check_outgoing(packet)
        if self.ipv6.is_local(dst):
            asyncio.get_running_loop().call_soon(self._on_ipv6, packet)
            return
        self.ipv6.keys.send_to(dst, packet)

    def key_for_address(self, address: ipaddress.IPv6Address | str | bytes) -> bytes | None:
        """The full key behind a mesh address, if a session or lookup proved it."""
        raw = ipaddress.IPv6Address(address).packed
        key = self.ipv6.keys.key_for(raw)
        if key is not None:
            return key
        for stats in self.conn.sessions():
            if address_for_key(stats.key).packed == raw:
                return stats.key
            if subnet_for_key(stats.key).network_address.packed[:8] == raw[:8]:
                return stats.key
        return None

    async def ping(
        self,
        address: ipaddress.IPv6Address | str,
        count: int = 3,
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> list[float | None]:
        """ICMPv6 echo ``count`` times; round-trip seconds per request, ``None`` if lost."""
        if not self._started or self._closed:
            raise RuntimeError("start() the node before ping()")
        dst = ipaddress.IPv6Address(address)
        if not v6.is_mesh_packed(dst.packed):
            raise ValueError(f"{dst} is not a mesh address (200::/7)")
        if count < 1 or len(self._pings) + count > MAX_PINGS_IN_FLIGHT:
            raise ValueError(f"count must be between 1 and {MAX_PINGS_IN_FLIGHT}")
        ident = int.from_bytes(os.urandom(2), "big")
        results: list[float | None] = [None] * count
        loop = asyncio.get_running_loop()

        async def one(seq: int) -> None:
            future: asyncio.Future[float] = loop.create_future()
            slot = (dst.packed, ident, seq)
            self._pings[slot] = future
            sent = loop.time()
            try:
                packet = v6.build_echo(
                    self._address_packed, dst.packed, v6.ICMPV6_ECHO_REQUEST, ident, seq,
                    os.urandom(ECHO_DATA_SIZE),
                )  # fmt: skip
                self._route_out(packet)
                results[seq] = (await within(future, timeout)) - sent
            except TimeoutError:
                pass
            finally:
                self._pings.pop(slot, None)

        async with asyncio.TaskGroup() as group:
            for seq in range(count):
                group.create_task(one(seq))
                if seq + 1 < count:
                    await asyncio.sleep(interval)
        return results

    # -- key-addressed datagrams (session traffic that is not IPv6) ----------------------

    @property
    def datagram_mtu(self) -> int:
        """Largest datagram :meth:`send_datagram` takes (the session MTU minus the type byte)."""
        return self.max_mtu

    def set_datagram_handler(self, cb: Callable[[bytes, bytes], None] | None) -> None:
        """``cb(source_key, data)`` for session traffic from ``source_key`` that is not IPv6.

        yggdrasil-go's ``Core`` is itself a ``net.PacketConn`` over the same session type
        byte (``1``) the IPv6 layer uses; programs that embed it (yggquic, and so Yggmail)
        send their own datagrams that way, addressed by key. A payload is IPv6 when it
        parses as an IPv6 header whose payload length fits and whose source belongs to
        the sending key (:func:`looks_like_ipv6`); everything else is a datagram. The
        source key is the session's: authenticated like every other packet.
        """
        self._datagram_handler = cb

    def send_datagram(self, key: bytes, data: bytes) -> None:
        """Send ``data`` to the node with Ed25519 key ``key`` as raw session traffic.

        Raises :class:`ValueError` for a bad key or a datagram above :attr:`datagram_mtu`.
        """
        if len(key) != 32:
            raise ValueError(f"a datagram goes to a 32-byte Ed25519 key, got {len(key)} bytes")
        if len(data) > self.datagram_mtu:
            raise ValueError(
                f"{len(data)}-byte datagram exceeds the session MTU of {self.datagram_mtu}"
            )
        if self._closed:
            raise ConnectionError("the embedded node is closed")
        self._send_session(key, bytes([v6.TYPE_SESSION_TRAFFIC]) + data)

    # -- proto requests ---------------------------------------------------------------

    async def request_remote(self, kind: str, key: bytes, timeout: float = 6.0) -> bytes:
        """Ask a node for "nodeinfo", "self", "peers" or "tree"; raw response body."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()

        def done(body: bytes) -> None:
            if not future.done():
                future.set_result(body)

        self.proto.request(kind, key, done)
        try:
            return await within(future, timeout)
        finally:
            self.proto.cancel(kind, key, done)

    async def remote_nodeinfo(self, key: bytes, timeout: float = 6.0) -> Any:
        return json.loads(await self.request_remote("nodeinfo", key, timeout))

    async def remote_peer_keys(self, key: bytes, timeout: float = 6.0) -> list[bytes]:
        return split_keys(await self.request_remote("peers", key, timeout))

    # -- internals ---------------------------------------------------------------------

    def _self_view(self) -> SelfView:
        tree = self.network.tree()
        peer_keys = tuple(p.key for p in self.network.peers() if p.key is not None and p.up)
        return SelfView(
            key=self.public_key,
            routing_entries=len(tree.entries),
            peer_keys=peer_keys,
            tree_keys=tuple(e.key for e in tree.entries),
        )

    def _on_path_notify(self, key: bytes) -> None:
        self.ipv6.keys.update(key)

    def _lookup(self, partial: bytes) -> None:
        try:
            self.network.send_lookup(partial)
        except (ValueError, RuntimeError) as exc:
            log.debug("lookup not sent: %s", exc)

    def _send_session(self, key: bytes, payload: bytes) -> None:
        try:
            self.conn.write_to(payload, key)
        except (OversizedMessageError, ConnectionError) as exc:
            log.debug("session payload to %s dropped: %s", key.hex()[:16], exc)

    def _on_session_payload(self, source: bytes, payload: bytes) -> None:
        if not payload:
            return
        kind = payload[0]
        if kind == v6.TYPE_SESSION_TRAFFIC:
            body = payload[1:]
            if not v6.looks_like_ipv6(source, body):
                if self._datagram_handler is not None:
                    self._datagram_handler(source, body)
                    return
                self.datagrams_dropped += 1
            packet = self.ipv6.read(source, body)
            if packet is not None:
                self._on_ipv6(packet)
        elif kind == v6.TYPE_SESSION_PROTO:
            self.proto.handle(source, payload[1:])

    def _on_ipv6(self, packet: bytes) -> None:
        # Only ICMPv6 (next header 58, no extension headers) can be an echo for us.
        echo = v6.parse_echo(packet) if packet[6] == v6.ICMPV6 else None
        if echo is not None and echo.dst == self._address_packed and not self._closed:
            if echo.mtype == v6.ICMPV6_ECHO_REQUEST:
                reply = v6.build_echo(
                    echo.dst, echo.src, v6.ICMPV6_ECHO_REPLY, echo.ident, echo.seq, echo.data
                )
                with contextlib.suppress(ValueError):
                    self._route_out(reply)
                return
            future = self._pings.get((echo.src, echo.ident, echo.seq))
            if future is not None:
                if not future.done():
                    future.set_result(asyncio.get_running_loop().time())
                return
        if self._ipv6_handler is not None:
            self._ipv6_handler(packet)
