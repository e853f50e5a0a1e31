"""An in-memory stand-in for PacketNetwork (e2 unit tests of the layers above it).

Every node on a :class:`MemoryHub` reaches every other directly. ``send_lookup``
answers, like ironwood's pathfinder, with ``path_notify(key)`` for every node whose
bloom-transformed key equals the transformed target. Deliveries are scheduled on the
event loop (``call_soon``), never re-entrantly. ``tamper`` lets a test rewrite or drop
packets in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from core.embedded.network import PeerEvent, PeerInfo, TreeInfo
from core.identity import Identity

Tamper = Callable[[bytes, bytes, bytes], bytes | None]


class MemoryHub:
    def __init__(self, mtu: int = 65535 * 2 - 100) -> None:
        self.nodes: dict[bytes, MemoryNetwork] = {}
        self.mtu = mtu
        self.tamper: Tamper | None = None
        self.sent = 0
        self.lookups: list[bytes] = []

    def factory(
        self,
        seed: bytes,
        transform: Callable[[bytes], bytes],
        notify: Callable[[bytes], None],
        config: object,
    ) -> MemoryNetwork:
        return MemoryNetwork(self, seed, transform, notify)


class MemoryNetwork:
    def __init__(
        self,
        hub: MemoryHub,
        seed: bytes,
        transform: Callable[[bytes], bytes],
        notify: Callable[[bytes], None],
    ) -> None:
        self.hub = hub
        self.public_key = Identity.from_seed(seed).public_key
        self.mtu = hub.mtu
        self._transform = transform
        self._notify = notify
        self._handler: Callable[[bytes, bytes], None] | None = None
        self.running = False
        hub.nodes[self.public_key] = self

    def set_handler(self, handler: Callable[[bytes, bytes], None]) -> None:
        self._handler = handler

    def send(self, dest_key: bytes, payload: bytes) -> None:
        if not self.running:
            raise RuntimeError("not running")
        if len(payload) > self.mtu:
            raise ValueError("payload exceeds the MTU")
        if self.hub.tamper is not None:
            changed = self.hub.tamper(self.public_key, dest_key, payload)
            if changed is None:
                return
            payload = changed
        dest = self.hub.nodes.get(dest_key)
        if dest is not None and dest.running:
            self.hub.sent += 1
            asyncio.get_running_loop().call_soon(dest._receive, self.public_key, payload)

    def _receive(self, source: bytes, payload: bytes) -> None:
        if self.running and self._handler is not None:
            self._handler(source, payload)

    def send_lookup(self, target_key: bytes) -> None:
        self.hub.lookups.append(target_key)
        wanted = self._transform(target_key)
        for key, node in self.hub.nodes.items():
            if node.running and self._transform(key) == wanted:
                asyncio.get_running_loop().call_soon(self._notify, key)

    async def start(self) -> None:
        self.running = True

    async def close(self) -> None:
        self.running = False

    async def listen(self, uri: str) -> str:
        return uri

    async def add_peer(self, uri: str) -> None:
        return None

    async def remove_peer(self, uri: str) -> None:
        return None

    def peers(self) -> list[PeerInfo]:
        return [
            PeerInfo(
                key=k,
                uri="mem://",
                remote="mem",
                inbound=False,
                up=True,
                port=i + 1,
                priority=0,
                cost=1,
                rx_bytes=0,
                tx_bytes=0,
                uptime=0.0,
            )
            for i, k in enumerate(self.hub.nodes)
            if k != self.public_key
        ]

    def tree(self) -> TreeInfo:
        from core.embedded.router import RoutingEntry

        entries = tuple(RoutingEntry(k, k, 1) for k in self.hub.nodes)
        return TreeInfo(self.public_key, self.public_key, self.public_key, (), entries, ())

    def subscribe_peer_events(self, cb: Callable[[PeerEvent], None]) -> Callable[[], None]:
        return lambda: None
