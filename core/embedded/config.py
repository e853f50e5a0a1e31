"""Tunables of the embedded node, defaults as yggdrasil-go 0.5.12 sets ironwood's.

ironwood ``network/config.go`` defaults, with the option yggdrasil ``src/core/core.go``
overrides (``WithPeerMaxMessageSize(65535*2)``). All nodes of one network should
agree on the router timings; tests shorten them only between embedded nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["LISTENER_KEYS", "NetworkConfig"]

# what a person may set in mesh.toml's [embedded] table (the rest must agree network-wide)
LISTENER_KEYS = ("handshake_timeout", "max_links", "max_links_per_source")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    router_refresh: float = 240.0  # WithRouterRefresh: re-sign our tree info (4 min)
    router_timeout: float = 300.0  # WithRouterTimeout: forget a node's info (5 min)
    peer_keepalive_delay: float = 1.0  # answer traffic with a keepalive after this
    peer_timeout: float = 3.0  # drop a link silent this long after we sent to it
    peer_max_message_size: int = 65535 * 2  # yggdrasil's WithPeerMaxMessageSize
    path_timeout: float = 60.0  # forget a looked-up path after this without traffic
    path_throttle: float = 1.0  # at most one lookup per destination per this
    maintenance_interval: float = 1.0  # router._doMaintenance period
    handshake_timeout: float = 6.0  # links.handler SetDeadline for the meta exchange
    connect_timeout: float = 10.0  # dialing one static peer
    backoff_min: float = 1.0  # first redial delay of a static peer
    backoff_max: float = 30.0  # cap of the doubling redial delay (yggdrasil: maxbackoff)
    queue_delay: float = 0.025  # per-peer queue: drop oldest once the head is this old
    queue_max_bytes: int = 4 * 1024 * 1024  # hard bound of a per-peer packet queue
    write_high_water: int = 256 * 1024  # transport buffer above which queued packets wait
    max_links: int = 256  # inbound connections held at once (at most half the fd limit)
    max_links_per_source: int = 32  # of those, from one IPv4 address or one IPv6 /64
    max_pending_lookups: int = 4096  # destinations waiting for a path (oldest evicted)

    def __post_init__(self) -> None:
        if self.peer_max_message_size < 1024:
            raise ValueError("peer_max_message_size must be at least 1024 bytes")
        if self.max_links < 1 or self.max_links_per_source < 1:
            raise ValueError("max_links and max_links_per_source must be at least 1")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        for name in ("router_refresh", "router_timeout", "peer_timeout", "path_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "[embedded]") -> NetworkConfig:
        """The defaults with ``mesh.toml``'s ``[embedded]`` keys (:data:`LISTENER_KEYS`)
        applied; ValueError says which key is wrong."""
        unknown = set(table) - set(LISTENER_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown keys {', '.join(sorted(unknown))} "
                f"(known: {', '.join(LISTENER_KEYS)})"
            )
        types = {f.name: f.type for f in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in table.items():
            want = float if types[key] in (float, "float") else int
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{where} {key} must be a number, got {value!r}")
            if want is int and not isinstance(value, int):
                raise ValueError(f"{where} {key} must be a whole number, got {value!r}")
            changes[key] = want(value)
        return replace(cls(), **changes)
