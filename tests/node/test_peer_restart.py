"""Real embedded nodes over loopback TCP: B is killed and restarted (same key, same data
directory) while A still holds their encrypted session. The first stream A opens to B
once the link is back must work at once, and A publishes ``session.up`` for B (its
session was re-opened), so outboxes waiting for B retry it.

Before the fix A kept its stale session: the restarted B answered with an init of keys it
forgot, the stream's SYNs were unreadable and the stream came up only 13-40 s later.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node

PORT = 7070
STREAM_DEADLINE = 2.5  # seconds from A's peer.up for B to B's echo arriving at A


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(await reader.readexactly(5))
        await writer.drain()
    finally:
        writer.close()


async def _echo_once(a: Node, b_address: str, payload: bytes) -> bytes:
    reader, writer = await a.open_connection(b_address, PORT, timeout=20)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.readexactly(len(payload))
    finally:
        writer.close()


async def _watch(node: Node, seen: list[tuple[str, str, float]]) -> None:
    async with node.events.subscribe() as sub:
        async for event in sub:
            if event.kind in ("peer.up", "session.up"):
                seen.append((event.kind, str(event.data.get("key")), time.monotonic()))


async def _wait_for(seen: list[tuple[str, str, float]], kind: str, key: str, after: float) -> float:
    for _ in range(1500):
        for k, who, at in seen:
            if k == kind and who == key and at >= after:
                return at
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {kind} for {key[:16]} on A (saw {seen})")


@pytest.mark.timeout(90)
async def test_a_stream_to_a_restarted_peer_works_right_after_the_link_is_back(
    tmp_path: Path,
) -> None:
    a = await Node.open(
        NodeConfig(data_dir=tmp_path / "a", backend="embedded", listen=("tcp://127.0.0.1:0",)),
        Identity.generate(),
    )
    seen: list[tuple[str, str, float]] = []
    watcher = asyncio.create_task(_watch(a, seen))
    b_identity = Identity.generate()
    b: Node | None = None
    try:
        uri = (await a.status())["backend_status"]["listening"][0]
        b_config = NodeConfig(data_dir=tmp_path / "b", backend="embedded", peers=(uri,))
        b = await Node.open(b_config, b_identity)
        await b.start_server(_echo, PORT)
        b_key, b_address = b.key.hex(), str(b.address)
        assert await asyncio.wait_for(_echo_once(a, b_address, b"first"), 30) == b"first"
        sessions = (await a.status())["backend_status"]["sessions"]
        assert b_key in [row["key"] for row in sessions]  # A holds a session with B

        # Session inits are stamped in whole Unix seconds and a stale session takes only
        # a newer stamp: a real restart takes longer than this wait.
        await asyncio.sleep(1.05 - time.time() % 1)
        await b.close()
        b = None
        restarted = time.monotonic()
        b = await Node.open(b_config, b_identity)
        await b.start_server(_echo, PORT)
        linked = await _wait_for(seen, "peer.up", b_key, restarted)
        echoed = await asyncio.wait_for(_echo_once(a, b_address, b"again"), 20)
        done = time.monotonic()
        assert echoed == b"again"
        print(
            f"restart -> peer.up {linked - restarted:.2f} s, -> echo at A "
            f"{done - restarted:.2f} s ({done - linked:.2f} s after peer.up)"
        )
        assert done - linked < STREAM_DEADLINE
        up = await _wait_for(seen, "session.up", b_key, restarted)
        assert up - linked < STREAM_DEADLINE
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        if b is not None:
            await b.close()
        await a.close()


@pytest.mark.timeout(90)
async def test_a_stream_through_a_hub_to_a_restarted_node_works_within_two_seconds(
    tmp_path: Path,
) -> None:
    hub = await Node.open(
        NodeConfig(data_dir=tmp_path / "hub", backend="embedded", listen=("tcp://127.0.0.1:0",)),
        Identity.generate(),
    )
    nodes: list[Node] = []
    b: Node | None = None
    seen: list[tuple[str, str, float]] = []
    watcher: asyncio.Task[None] | None = None
    try:
        uri = (await hub.status())["backend_status"]["listening"][0]
        a = await Node.open(
            NodeConfig(data_dir=tmp_path / "a", backend="embedded", peers=(uri,)),
            Identity.generate(),
        )
        nodes.append(a)
        watcher = asyncio.create_task(_watch(a, seen))
        b_identity = Identity.generate()
        b_config = NodeConfig(data_dir=tmp_path / "b", backend="embedded", peers=(uri,))
        b = await Node.open(b_config, b_identity)
        await b.start_server(_echo, PORT)
        b_key, b_address = b.key.hex(), str(b.address)
        assert await asyncio.wait_for(_echo_once(a, b_address, b"first"), 30) == b"first"

        await asyncio.sleep(1.05 - time.time() % 1)  # see the test above
        await b.close()
        b = None
        restarted = time.monotonic()
        b = await Node.open(b_config, b_identity)
        await b.start_server(_echo, PORT)
        for _ in range(200):  # B's link to the hub is up again
            if any(p.up for p in await b.peers()):
                break
            await asyncio.sleep(0.01)
        linked = time.monotonic()
        echoed = await asyncio.wait_for(_echo_once(a, b_address, b"again"), 20)
        done = time.monotonic()
        assert echoed == b"again"
        print(
            f"restart -> B linked {linked - restarted:.2f} s, -> echo at A "
            f"{done - restarted:.2f} s ({done - linked:.2f} s after the link)"
        )
        assert done - linked < STREAM_DEADLINE
        await _wait_for(seen, "session.up", b_key, restarted)
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if b is not None:
            await b.close()
        for node in nodes:
            await node.close()
        await hub.close()
