"""The backend interface: what carries packets under a node.

Two implementations: ``core.backends.yggdrasil`` (the real daemon, kernel sockets on
its TUN) and ``core.backends.embedded`` (a Yggdrasil 0.5 node inside the process).
Apps never see a backend; they use :class:`core.node.Node`. The types a backend shares
with apps (:class:`NodeEvent`, :class:`PeerInfo`, :class:`MeshServer`) live in
:mod:`core.types` and are re-imported here for the backends.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from core.types import EventSink, MeshServer, NodeEvent, PeerInfo

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
