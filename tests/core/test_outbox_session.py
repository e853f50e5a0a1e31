"""Real embedded nodes: a session opening with a node publishes ``session.up`` naming it,
and an outbox in backoff for that node retries it within a second.

A and B are peered with a hub only, so A's ``peer.up`` events name the hub, never B: the
retry can only come from the session event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import pytest

from core import AppDatabase, Delivered, DeliveryResult, Outbox, OutboxEntry, Retry, RetryPolicy
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node


async def _reach(src: Node, dst: Node) -> float:
    for _ in range(60):
        if (await src.ping(str(dst.address), count=1, timeout=1))[0] is not None:
            return time.monotonic()
    raise AssertionError(f"{dst.address} unreachable from {src.address}")


async def _session_ups(node: Node, seen: list[tuple[str, float]]) -> None:
    async with node.events.subscribe() as sub:
        async for event in sub:
            if event.kind == "session.up":
                seen.append((str(event.data["key"]), time.monotonic()))


async def _nodes(root: Path) -> AsyncGenerator[list[Node]]:
    hub = await Node.open(
        NodeConfig(data_dir=root / "hub", backend="embedded", listen=("tcp://127.0.0.1:0",)),
        Identity.generate(),
    )
    nodes = [hub]
    try:
        uri = (await hub.status())["backend_status"]["listening"][0]
        for name in ("a", "b"):
            config = NodeConfig(data_dir=root / name, backend="embedded", peers=(uri,))
            nodes.append(await Node.open(config, Identity.generate()))
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.close()


@pytest.mark.timeout(90)
async def test_a_session_from_the_destination_retries_it_within_a_second(
    tmp_path: Path,
) -> None:
    gen = _nodes(tmp_path)
    hub, a, b = await anext(gen)
    db = await AppDatabase.open(tmp_path / "a.db", {1: ("CREATE TABLE x (y)",)}, what="a.db")
    outbox = await Outbox.open(
        db, name="t", policy=RetryPolicy(initial=600, max_delay=3600), max_entries=10
    )
    attempts: list[float] = []
    seen: list[tuple[str, float]] = []
    watcher = asyncio.create_task(_session_ups(a, seen))

    async def deliver(dest: bytes, entries: list[OutboxEntry]) -> Sequence[DeliveryResult]:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return [Retry("cannot connect") for _ in entries]
        return [Delivered() for _ in entries]

    async def expired(entry: OutboxEntry) -> None:
        raise AssertionError(entry.ref)

    try:
        await _reach(a, hub)
        await _reach(b, hub)
        await outbox.put(b.key, b"hello", ref="m1")
        outbox.start(a, deliver=deliver, expired=expired)
        for _ in range(100):
            if len(attempts) == 1 and (await outbox.pending())[0].attempts == 1:
                break
            await asyncio.sleep(0.02)
        assert len(attempts) == 1  # now in a 10-minute backoff
        assert b.key.hex() not in [key for key, _ in seen]  # no session A-B yet
        await _reach(b, a)  # B comes up and talks to A: a session opens
        for _ in range(100):
            if len(attempts) == 2:
                break
            await asyncio.sleep(0.01)
        ups = [at for key, at in seen if key == b.key.hex()]
        assert ups, f"no session.up for B on A (saw {seen})"
        assert len(attempts) == 2 and attempts[1] - ups[0] < 1.0
        print(f"retry {(attempts[1] - ups[0]) * 1000:.1f} ms after session.up")
        await asyncio.sleep(0.05)
        assert await outbox.count() == 0
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await outbox.close()
        await db.close()
        await gen.aclose()
