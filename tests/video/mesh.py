"""Embedded nodes for the call tests: real nodes in this process, all peered over
loopback TCP with one relay node, so any two of them talk through a forwarding node.

    async with CallMesh(tmp_path) as mesh:
        a, b = await mesh.open(2)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from apps.video.ice import MeshIceConnection
from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.lab.fixtures import poll

__all__ = ["CallMesh", "eventually", "exchange_and_connect", "ping_until_up"]


async def ping_until_up(src: Node, dst: Node, tries: int = 60) -> None:
    """The first packets to a new destination can be lost while the path lookup runs."""
    for _ in range(tries):
        rtt = await src.ping(str(dst.address), count=1, timeout=1)
        if rtt[0] is not None:
            return
    raise AssertionError(f"no route from {src.address} to {dst.address}")


async def eventually(what: str, check: Any, timeout: float = 15.0) -> Any:
    """Poll the sync or async ``check`` until it is true; fail naming ``what``."""
    try:
        return await poll(check, timeout, 0.05)
    except TimeoutError:
        raise AssertionError(f"{what}: not true after {timeout} s") from None


class CallMesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.relay: Node | None = None
        self.nodes: list[Node] = []
        self._uri = ""

    async def __aenter__(self) -> CallMesh:
        relay_config = NodeConfig(
            data_dir=self.root / "relay", backend="embedded", listen=("tcp://127.0.0.1:0",)
        )
        self.relay = await Node.open(relay_config, Identity.generate())
        self._uri = (await self.relay.status())["backend_status"]["listening"][0]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for node in reversed(self.nodes):
            await node.close()
        if self.relay is not None:
            await self.relay.close()

    async def open(self, count: int) -> list[Node]:
        """``count`` new nodes that reach each other (through the relay)."""
        assert self.relay is not None
        fresh: list[Node] = []
        for _ in range(count):
            where = self.root / f"node{len(self.nodes)}"
            config = NodeConfig(data_dir=where, backend="embedded", peers=(self._uri,))
            node = await Node.open(config, Identity.generate())
            self.nodes.append(node)
            fresh.append(node)
        for node in fresh:
            await ping_until_up(node, self.relay)
            await ping_until_up(self.relay, node)
        for src in fresh:
            for dst in fresh:
                if src is not dst:
                    await ping_until_up(src, dst)
        return fresh


async def exchange_and_connect(a: MeshIceConnection, b: MeshIceConnection) -> None:
    """What signaling does for two gathered ICE connections: candidates and
    credentials both ways, then connect both (bounded)."""
    for mine, theirs in ((a, b), (b, a)):
        for cand in theirs.local_candidates:
            await mine.add_remote_candidate(cand)
        await mine.add_remote_candidate(None)
        mine.remote_username = theirs.local_username
        mine.remote_password = theirs.local_password
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
