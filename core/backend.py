"""The backend interface: what carries packets under a node.

Two implementations: ``core.backends.yggdrasil`` (the real daemon, kernel sockets on
its TUN) and ``core.backends.embedded`` (a Yggdrasil 0.5 node inside the process).
Apps never see a backend; they use :class:`core.node.Node`.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Backend",
    "DatagramFactory",
    "EventSink",
    "MeshServer",
    "NodeEvent",
    "PeerInfo",
    "ProtocolFactory",
]

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
DatagramFactory = Callable[[], asyncio.DatagramProtocol]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One link to a neighbour (like ``yggdrasilctl getPeers``)."""

    uri: str
    key: bytes | None
    up: bool
    inbound: bool
    address: str | None = None
    port: int | None = None
    priority: int = 0
    uptime: float | None = None
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "key": self.key.hex() if self.key else None,
            "up": self.up,
            "inbound": self.inbound,
            "address": self.address,
            "port": self.port,
            "priority": self.priority,
            "uptime": self.uptime,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """Something that happened on the node: ``kind`` is dotted (``peer.up``, ``mail.new``)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "data": self.data}


EventSink = Callable[[NodeEvent], None]


@runtime_checkable
class MeshServer(Protocol):
    """A listening service on the node's mesh address (an ``asyncio.Server`` look-alike)."""

    @property
    def port(self) -> int: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def is_serving(self) -> bool: ...


@runtime_checkable
class Backend(Protocol):
    """What a node needs from whatever carries its packets.

    Transports returned by the backend must report the remote end's IPv6 address as
    ``get_extra_info("peername")[0]``. That address must be authenticated by the
    backend (only a holder of the matching key can send from it); the node refuses
    anything outside ``200::/7`` and maps the address to a key with
    :meth:`key_for_address`.
    """

    name: str

    @property
    def public_key(self) -> bytes: ...

    @property
    def address(self) -> ipaddress.IPv6Address: ...

    @property
    def subnet(self) -> ipaddress.IPv6Network: ...

    async def start(self, events: EventSink) -> None:
        """Bring the backend up; report peer changes and trouble through ``events``."""

    async def close(self) -> None: ...

    async def create_server(
        self, protocol_factory: ProtocolFactory, port: int, *, backlog: int = 100
    ) -> MeshServer: ...

    async def create_connection(
        self,
        protocol_factory: ProtocolFactory,
        address: ipaddress.IPv6Address,
        port: int,
        *,
        timeout: float = 30.0,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]: ...

    async def create_datagram_endpoint(
        self,
        protocol_factory: DatagramFactory,
        *,
        local_port: int = 0,
        remote: tuple[ipaddress.IPv6Address, int] | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]: ...

    async def key_for_address(self, address: ipaddress.IPv6Address) -> bytes | None:
        """The full key of the node that owns ``address``, if this backend knows it."""

    async def peers(self) -> list[PeerInfo]: ...

    async def add_peer(self, uri: str) -> None: ...

    async def remove_peer(self, uri: str) -> None: ...

    async def ping(
        self, address: ipaddress.IPv6Address, *, count: int, interval: float, timeout: float
    ) -> list[float | None]:
        """Round-trip times in seconds (None for a lost probe), ICMPv6 echo."""

    async def status(self) -> dict[str, Any]:
        """Backend-specific facts for ``mesh status`` (daemon version, tree, sessions)."""
