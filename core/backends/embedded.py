"""The embedded backend: a Yggdrasil 0.5 node in this process, with userspace TCP/UDP.

No root, no TUN, no daemon. :class:`core.embedded.node.EmbeddedYggdrasil` moves IPv6
packets over the real Yggdrasil protocol; :class:`core.netstack.stack.NetStack` turns
them into asyncio transports on the node's address. Incoming packets reach the stack
only after the IPv6 layer checked that their source address belongs to the session's
key, so ``peername`` is authenticated exactly as on a daemon's TUN; ``peer_key`` comes
from that same session.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from core.backend import (
    DatagramFactory,
    EventSink,
    MeshServer,
    NodeEvent,
    PeerInfo,
    ProtocolFactory,
)
from core.config import NodeConfig
from core.discovery import Discovery, InterfacePolicy
from core.embedded.config import NetworkConfig
from core.embedded.network import PacketNetwork, PeerEvent
from core.embedded.node import EmbeddedConfig, EmbeddedYggdrasil
from core.errors import MeshError, UsageError
from core.identity import Identity
from core.netstack.stack import NetStack
from core.tasks import within
from core.types import KeyDatagramPort

__all__ = ["EmbeddedBackend", "PacketHook"]

PacketHook = Callable[[bytes, Callable[[bytes], None]], None]

log = logging.getLogger(__name__)


class _Server:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @property
    def port(self) -> int:
        """The bound port (the one the stack chose when asked for port 0)."""
        return int(self._inner.port)

    def close(self) -> None:
        self._inner.close()

    async def wait_closed(self) -> None:
        await self._inner.wait_closed()

    def is_serving(self) -> bool:
        return bool(self._inner.is_serving())


def _embedded_config(config: NodeConfig) -> EmbeddedConfig:
    """Defaults, with the listener limits of mesh.toml's ``[embedded]`` table."""
    try:
        network = NetworkConfig.from_table(config.service("embedded"))
    except ValueError as exc:
        raise UsageError(f"mesh.toml {exc}") from None
    return EmbeddedConfig(network=network)


class EmbeddedBackend:
    name = "embedded"

    def __init__(
        self, config: NodeConfig, identity: Identity, embedded: EmbeddedConfig | None = None
    ) -> None:
        self._config = config
        self._identity = identity
        self.ygg = EmbeddedYggdrasil(identity.seed, embedded or _embedded_config(config))
        self._stack: NetStack | None = None
        self._discovery: Discovery | None = None
        self._unsubscribe: Any = None
        self._events: EventSink | None = None
        self._listening: list[str] = []
        self._started = time.monotonic()
        self._hooks: tuple[PacketHook | None, PacketHook | None] = (None, None)

    @property
    def public_key(self) -> bytes:
        return self._identity.public_key

    @property
    def address(self) -> ipaddress.IPv6Address:
        return self.ygg.address

    @property
    def subnet(self) -> ipaddress.IPv6Network:
        return self.ygg.subnet

    @property
    def stack(self) -> NetStack:
        if self._stack is None:
            raise MeshError("the embedded node is not started")
        return self._stack

    async def start(self, events: EventSink) -> None:
        self._events = events
        await self.ygg.start()
        self._stack = NetStack(
            [self.ygg.address],
            self._packet_out,
            mtu=self.ygg.mtu,
            extra_info=self._extra_info,
        )
        self.ygg.set_ipv6_handler(self._packet_in)
        self._unsubscribe = self.ygg.subscribe_peer_events(self._on_peer_event)
        self.ygg.set_session_up_handler(self._on_session_up)
        try:
            for uri in self._config.listen:
                self._listening.append(await self.ygg.listen(uri))
            for uri in self._config.peers:
                await self.ygg.add_peer(uri)
            if self._config.multicast_interfaces:
                policies = [InterfacePolicy(regex=r) for r in self._config.multicast_interfaces]
                net = self.ygg.network
                call = net.call if isinstance(net, PacketNetwork) else self.ygg.add_peer
                self._discovery = Discovery(self.public_key, policies, self._listen_local, call)
                await self._discovery.start()
        except OSError as exc:
            await self.close()
            raise MeshError(f"embedded node: {exc}") from None
        except ValueError as exc:  # a bad URI in --peer/--listen/mesh.toml: the person's to fix
            await self.close()
            raise UsageError(f"embedded node: {exc}") from None

    async def _listen_local(self, host: str) -> int:
        bound = await self.ygg.listen(f"tls://{host}")
        return int(bound.rsplit(":", 1)[1].split("?", 1)[0])

    async def close(self) -> None:
        if self._discovery is not None:
            await self._discovery.close()
            self._discovery = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.ygg.set_session_up_handler(None)
        if self._stack is not None:
            self._stack.close()
        await self.ygg.close()

    # -- the packet seam between the Yggdrasil node and the TCP/UDP stack ---------------
    def set_packet_hooks(self, outgoing: PacketHook | None, incoming: PacketHook | None) -> None:
        """Test hook: every IPv6 packet between the stack and the mesh goes through
        ``hook(packet, forward)``, which may drop, delay, duplicate or reorder it by
        calling ``forward`` zero or more times, now or later. ``None`` removes a hook."""
        self._hooks = (outgoing, incoming)

    def _packet_out(self, packet: bytes) -> None:
        hook = self._hooks[0]
        if hook is None:
            self.ygg.send_ipv6(packet)
        else:
            hook(packet, self.ygg.send_ipv6)

    def _packet_in(self, packet: bytes) -> None:
        hook = self._hooks[1]
        if hook is None:
            self.stack.receive_packet(packet)
        else:
            hook(packet, self.stack.receive_packet)

    def _extra_info(self, peer: Any) -> dict[str, Any]:
        return {"peer_key": self.ygg.key_for_address(peer)}

    def _on_session_up(self, key: bytes) -> None:
        # An encrypted session with ``key`` opened: that node is reachable (outboxes retry it).
        if self._events is not None:
            self._events(NodeEvent("session.up", {"key": key.hex()}))

    def _on_peer_event(self, event: PeerEvent) -> None:
        if self._events is None:
            return
        self._events(
            NodeEvent(
                f"peer.{event.kind}",
                {
                    "uri": event.uri,
                    "key": event.key.hex(),
                    "inbound": event.inbound,
                    "error": event.error,
                },
            )
        )

    # -- sockets ------------------------------------------------------------------------
    async def create_server(
        self, protocol_factory: ProtocolFactory, port: int, *, backlog: int = 100
    ) -> MeshServer:
        try:
            server = await self.stack.create_server(protocol_factory, port, self.address)
        except OSError as exc:
            raise MeshError(f"cannot serve port {port} on the embedded node: {exc}") from None
        return _Server(server)

    async def create_connection(
        self,
        protocol_factory: ProtocolFactory,
        address: ipaddress.IPv6Address,
        port: int,
        *,
        timeout: float = 30.0,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        return await within(self.stack.create_connection(protocol_factory, address, port), timeout)

    async def create_datagram_endpoint(
        self,
        protocol_factory: DatagramFactory,
        *,
        local_port: int = 0,
        remote: tuple[ipaddress.IPv6Address, int] | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        transport, protocol = await self.stack.create_datagram_endpoint(
            protocol_factory, local_addr=(self.address, local_port), remote_addr=remote
        )
        return transport, protocol

    async def key_for_address(self, address: ipaddress.IPv6Address) -> bytes | None:
        return self.ygg.key_for_address(address)

    def key_datagrams(self) -> KeyDatagramPort:
        """Raw session traffic by key (the embedded node runs ironwood's sessions itself)."""
        return self.ygg

    # -- peers and status -----------------------------------------------------------------
    async def peers(self) -> list[PeerInfo]:
        return [
            PeerInfo(
                uri=p.uri,
                key=p.key,
                up=p.up,
                inbound=p.inbound,
                address=p.remote,
                port=p.port,
                priority=p.priority,
                uptime=p.uptime,
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
                last_error=p.last_error,
            )
            for p in self.ygg.peers()
        ]

    async def add_peer(self, uri: str) -> None:
        try:
            await self.ygg.add_peer(uri)
        except ValueError as exc:
            raise UsageError(f"bad peer URI {uri!r}: {exc}") from None

    async def remove_peer(self, uri: str) -> None:
        try:
            await self.ygg.remove_peer(uri)
        except (ValueError, KeyError) as exc:
            raise UsageError(f"no such peer {uri!r}: {exc}") from None

    async def ping(
        self, address: ipaddress.IPv6Address, *, count: int, interval: float, timeout: float
    ) -> list[float | None]:
        try:
            return await self.ygg.ping(address, count=count, interval=interval, timeout=timeout)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    async def status(self) -> dict[str, Any]:
        tree = self.ygg.tree()
        return {
            "listening": self._listening,
            "mtu": self.ygg.mtu,
            "tree": {
                "root": tree.root.hex(),
                "parent": tree.parent.hex(),
                "coords": list(tree.coords),
            },
            "sessions": [
                {
                    "key": s.key.hex(),
                    "uptime": round(s.uptime, 1),
                    "rx_bytes": s.rx_bytes,
                    "tx_bytes": s.tx_bytes,
                }
                for s in self.ygg.sessions()
            ],
            "multicast": list(self._config.multicast_interfaces),
            "tcp_connections": self.stack.connection_count,
            # per carrier: what its listeners refused before a link existed
            "carriers": (
                self.ygg.network.carrier_stats()
                if isinstance(self.ygg.network, PacketNetwork)
                else {}
            ),
        }
