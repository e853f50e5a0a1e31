"""Two embedded nodes over a real loopback TCP link: what output coalescing must keep.

Packets sent within one event-loop iteration leave in one write per link (at most
16 KiB of them per write); numbered datagrams sent in bursts arrive all, in order.
The per-peer queue's delay policy is relaxed here (``queue_delay``): these tests are
about coalescing adding no loss and no reordering, not about a loaded machine's stalls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.backends.embedded import EmbeddedBackend
from core.config import NodeConfig
from core.embedded import network
from core.embedded.config import NetworkConfig
from core.embedded.links import LinkConnection
from core.embedded.node import EmbeddedConfig
from core.identity import Identity
from core.node import Node

NET = NetworkConfig(queue_delay=60.0, peer_timeout=30.0)
BURST = 200  # datagrams per loop iteration, as bench_embedded sends them
WAIT = 30.0


async def open_node(base: Path, name: str, **config: Any) -> Node:
    node_config = NodeConfig(data_dir=base / name, backend="embedded", **config)
    identity = Identity.generate()
    backend = EmbeddedBackend(node_config, identity, EmbeddedConfig(network=NET))
    return await Node.open(node_config, identity, backend=backend)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a = await open_node(tmp_path, "a", listen=("tcp://127.0.0.1:0",))
    try:
        uri = (await a.status())["backend_status"]["listening"][0]
        b = await open_node(tmp_path, "b", peers=(uri,))
        try:
            async with asyncio.timeout(WAIT):
                while (await b.ping(a.address, count=1, timeout=1))[0] is None:
                    pass
            yield a, b
        finally:
            await b.close()
    finally:
        await a.close()


class Numbered(asyncio.DatagramProtocol):
    def __init__(self, expected: int) -> None:
        self.got: list[int] = []
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()
        self.progress = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.got.append(int.from_bytes(data[:4], "big"))
        self.progress.set()
        if len(self.got) >= self.expected and not self.done.done():
            self.done.set_result(None)

    async def wait_for(self, count: int) -> None:
        while len(self.got) < count:
            self.progress.clear()
            await self.progress.wait()


async def test_numbered_datagrams_in_bursts_arrive_all_and_in_order(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    count = 20 * BURST
    sink = Numbered(count)
    rx, _ = await a.create_datagram_endpoint(lambda: sink)
    port = rx.get_extra_info("sockname")[1]
    tx, _ = await b.create_datagram_endpoint(asyncio.DatagramProtocol)
    try:
        for first in range(0, count, BURST):
            for n in range(first, first + BURST):
                tx.sendto(n.to_bytes(4, "big") + bytes(60), (str(a.address), port))
            # the next burst once this one is through: the test is about order and
            # loss on the way, not about a receiver slower than its sender
            async with asyncio.timeout(WAIT):
                await sink.wait_for(first + BURST)
        assert sink.got == list(range(count))
    finally:
        tx.close()
        rx.close()


async def test_a_burst_leaves_in_few_writes_and_each_write_is_bounded(
    pair: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    sink = Numbered(BURST)
    rx, _ = await a.create_datagram_endpoint(lambda: sink)
    port = rx.get_extra_info("sockname")[1]
    tx, _ = await b.create_datagram_endpoint(asyncio.DatagramProtocol)
    writes: list[int] = []
    real_write = LinkConnection.write

    def counting_write(self: LinkConnection, data: bytes) -> None:
        if data:
            writes.append(len(data))
        real_write(self, data)

    monkeypatch.setattr(LinkConnection, "write", counting_write)
    try:
        for n in range(BURST):  # one iteration: no await between the datagrams
            tx.sendto(n.to_bytes(4, "big") + bytes(60), (str(a.address), port))
        sent_inline = len(writes)
        async with asyncio.timeout(WAIT):
            await sink.done
        assert sink.got == list(range(BURST))
        # Without coalescing every datagram is one write (200); with it the burst leaves
        # in writes of about COALESCE_BYTES of payload, the rest at the iteration's end.
        frame_bytes = sum(writes[:sent_inline])
        assert 1 <= sent_inline <= BURST // 20, writes
        assert all(size < 2 * network.COALESCE_BYTES + 4096 for size in writes), writes
        assert frame_bytes > BURST * 64
    finally:
        tx.close()
        rx.close()
