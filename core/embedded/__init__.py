"""The embedded Yggdrasil 0.5 node: links, ironwood routing, and (above) sessions.

This package's lower half (links, handshake, tree, bloom filters, pathfinder,
router) is :class:`PacketNetwork`, the equivalent of ironwood's
``network.PacketConn``; see ``docs/embedded.md``.
"""

from __future__ import annotations

from .config import NetworkConfig
from .network import PacketNetwork, PeerEvent, PeerInfo, TreeInfo, subnet_bloom_transform

__all__ = [
    "NetworkConfig",
    "PacketNetwork",
    "PeerEvent",
    "PeerInfo",
    "TreeInfo",
    "subnet_bloom_transform",
]
