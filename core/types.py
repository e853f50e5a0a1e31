"""The types apps see from the node: events, peers, servers (no backend in sight).

:class:`NodeEvent` is what ``node.events`` carries (``peer.up``, ``contact.added``,
``chat.message``...), :class:`PeerInfo` one row of ``node.peers()``, :class:`MeshServer`
what ``node.create_server`` / ``start_server`` return. Re-exported from :mod:`core`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "NO_KEY_DATAGRAMS",
    "EventSink",
    "KeyDatagramPort",
    "MeshServer",
    "NodeEvent",
    "PeerInfo",
]

NO_KEY_DATAGRAMS = (
    "the yggdrasil daemon backend carries IPv6 only: datagrams addressed by key (raw "
    "session traffic, the transport of Yggmail) never reach its TUN interface; run the "
    'node with the embedded backend (backend = "embedded" in mesh.toml) for that'
)


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
class KeyDatagramPort(Protocol):
    """Datagrams to and from a node's Ed25519 key that are not IPv6 (raw session traffic).

    What arrives is authenticated like every session packet: ``source_key`` is the key
    of the session it came in. One handler at a time; ``None`` removes it.
    """

    @property
    def datagram_mtu(self) -> int: ...

    def send_datagram(self, key: bytes, data: bytes) -> None: ...

    def set_datagram_handler(self, cb: Callable[[bytes, bytes], None] | None) -> None: ...
