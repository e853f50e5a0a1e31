"""The types apps see from the node: events, peers, servers (no backend in sight).

:class:`NodeEvent` is what ``node.events`` carries (``peer.up``, ``contact.added``,
``chat.message``...), :class:`PeerInfo` one row of ``node.peers()``, :class:`MeshServer`
what ``node.create_server`` / ``start_server`` return. Re-exported from :mod:`core`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["EventSink", "MeshServer", "NodeEvent", "PeerInfo"]


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
