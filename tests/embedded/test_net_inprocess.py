"""Five PacketNetworks in one event loop over loopback TCP: tree, delivery, churn."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable

import pytest

from core.embedded import NetworkConfig, PacketNetwork
from core.embedded.network import subnet_bloom_transform

pytestmark = pytest.mark.timeout(60)

# Shorter router timers so a departed node's info expires within the test (all nodes
# here agree on them); link keepalive/timeouts stay at yggdrasil's values.
FAST = NetworkConfig(router_refresh=2.0, router_timeout=4.0)


async def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Mesh:
    def __init__(self, n: int) -> None:
        self.nets = [
            PacketNetwork(os.urandom(32), bloom_transform=subnet_bloom_transform, config=FAST)
            for _ in range(n)
        ]
        self.inbox: dict[bytes, list[tuple[bytes, bytes]]] = {n.public_key: [] for n in self.nets}
        for net in self.nets:
            net.set_handler(lambda src, data, k=net.public_key: self.inbox[k].append((src, data)))

    def roots(self, nets: list[PacketNetwork]) -> set[bytes]:
        return {n.tree().root for n in nets}

    async def deliver_all(self, nets: list[PacketNetwork], tag: bytes) -> None:
        """Every ordered pair exchanges a packet (resent until it arrives)."""
        pairs = list(itertools.permutations(nets, 2))
        deadline = time.monotonic() + 20
        pending = set(range(len(pairs)))
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} of {len(pairs)} pairs undelivered")
            for i in list(pending):
                src, dst = pairs[i]
                payload = tag + i.to_bytes(2, "big")
                if (src.public_key, payload) in self.inbox[dst.public_key]:
                    pending.discard(i)
                else:
                    src.send(dst.public_key, payload)
            await asyncio.sleep(0.2)


async def test_five_nodes_converge_deliver_and_survive_a_departure() -> None:
    mesh = Mesh(5)
    nets = mesh.nets
    for net in nets:
        await net.start()
    try:
        uris = [await net.listen("tcp://127.0.0.1:0") for net in nets]
        # a ring (0-1-2-3-4-0): the tree drops one edge, a departure keeps it connected
        for i, net in enumerate(nets):
            await net.add_peer(uris[(i + 1) % len(nets)])
        await _until(lambda: all(len([p for p in n.peers() if p.up]) == 2 for n in nets), "ring")
        lowest = min(n.public_key for n in nets)
        await _until(lambda: mesh.roots(nets) == {lowest}, "one root, the lowest key")
        for n in nets:
            tree = n.tree()
            assert (tree.parent == n.public_key) == (n.public_key == lowest)
        await mesh.deliver_all(nets, b"before")

        # the root leaves; the other four agree on the next-lowest key and still deliver
        gone = next(n for n in nets if n.public_key == lowest)
        await gone.close()
        rest = [n for n in nets if n is not gone]
        new_root = min(n.public_key for n in rest)
        await _until(lambda: mesh.roots(rest) == {new_root}, "reconverged root", timeout=30)
        await mesh.deliver_all(rest, b"after")
    finally:
        for net in nets:
            await net.close()


async def test_send_is_bounded_and_checked() -> None:
    net = PacketNetwork(os.urandom(32), config=NetworkConfig(max_pending_lookups=50))
    await net.start()
    try:
        with pytest.raises(ValueError, match="MTU"):
            net.send(os.urandom(32), bytes(net.mtu + 1))
        assert net.mtu == 65535 * 2 - 77
        # unknown destination: queued behind one lookup, never blocks or raises
        for _ in range(100):
            net.send(os.urandom(32), b"x" * 1000)
        assert len(net.router.pathfinder.rumors) == 50  # the oldest were forgotten
    finally:
        await net.close()
    with pytest.raises(RuntimeError, match="start"):
        net.send(os.urandom(32), b"late")


async def test_a_static_peer_survives_an_unexpected_dial_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in a carrier's dial (anything but OSError/timeout) used to end the redial
    task silently: the peer stayed listed and down for good. It is logged and redialled."""
    server = PacketNetwork(os.urandom(32), config=NetworkConfig(backoff_min=0.05))
    client = PacketNetwork(os.urandom(32), config=NetworkConfig(backoff_min=0.05))
    for net in (server, client):
        await net.start()
    try:
        uri = await server.listen("tcp://127.0.0.1:0")
        real = client._dial
        failures = 0

        async def flaky(*args: object) -> None:
            nonlocal failures
            if failures < 2:
                failures += 1
                raise RuntimeError("carrier bug")
            await real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(client, "_dial", flaky)
        await client.add_peer(uri)
        await _until(lambda: any(p.up for p in client.peers()), "the link after two bad dials")
        assert failures == 2
    finally:
        for net in (client, server):
            await net.close()
