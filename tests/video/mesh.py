"""Embedded nodes for the call tests: real nodes in this process, each linked only to one
relay node, so any two of them talk through a forwarding node.

    async with CallMesh(tmp_path) as mesh:
        a, b = await mesh.open(2)
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from apps.video.ice import MeshIceConnection
from core import Node
from core.testing import MemMesh, mem_mesh
from tests.lab.fixtures import poll

__all__ = ["CallMesh", "eventually", "exchange_and_connect"]


async def eventually(what: str, check: Any, timeout: float = 15.0) -> Any:
    """Poll the sync or async ``check`` until it is true; fail naming ``what``."""
    try:
        return await poll(check, timeout, 0.05)
    except TimeoutError:
        raise AssertionError(f"{what}: not true after {timeout} s") from None


class CallMesh:
    """``open(n)`` gives ``n`` nodes of a star around :attr:`relay` on the kit's in-memory
    carrier (``core.testing.mem_mesh``): every call between them is forwarded by the
    relay, routes are ready when ``open`` returns."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.relay: Node | None = None
        self.mem: MemMesh | None = None  # to cut and restore links
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> CallMesh:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def open(self, count: int) -> list[Node]:
        assert self.relay is None, "one open() per CallMesh"
        mesh = await self._stack.enter_async_context(
            mem_mesh(count + 1, self.root, topology="star")
        )
        self.relay = mesh[0]
        self.mem = mesh
        return list(mesh[1:])


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
