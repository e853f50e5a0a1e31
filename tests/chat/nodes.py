"""Chat services on real embedded nodes in this process, over core's in-memory carrier
(:mod:`core.testing`): node 0 is a relay, every chat node links to it only, so two chat
nodes talk through a forwarding node and one can be stopped (offline) and started again
on the same data directory (same key, same databases) while the others stay up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apps.chat.config import ChatConfig
from apps.chat.service import ChatService
from core.node import Node
from core.testing import MemMesh
from tests.lab.fixtures import poll

__all__ = ["ChatNet", "ChatNode", "settle"]


async def settle(what: str, predicate: Any, timeout: float = 20.0) -> Any:
    try:
        return await poll(predicate, timeout, 0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: still not so after {timeout} s") from None


class ChatNode:
    """One node of the mesh + its chat service, and the chat events it published."""

    def __init__(self, index: int, settings: dict[str, Any]) -> None:
        self.index, self.settings = index, settings
        self.node: Node | Any = None
        self.chat: ChatService | Any = None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._recorder: asyncio.Task[None] | None = None

    @property
    def key(self) -> bytes:
        return bytes(self.node.key)

    def call(self, method: str, **params: Any) -> Any:
        return self.chat.control_methods()[method](params)

    async def run(self, node: Node) -> None:
        self.node = node
        self.chat = ChatService(node, ChatConfig(**self.settings), node.config.data_dir)
        await self.chat.start()
        ready = asyncio.Event()
        self._recorder = asyncio.ensure_future(self._record(ready))
        await ready.wait()

    async def _record(self, ready: asyncio.Event) -> None:
        async with self.node.events.subscribe(("chat.",)) as sub:
            ready.set()
            async for event in sub:
                self.events.append((event.kind, event.data))

    def seen(self, kind: str, test: Callable[[dict[str, Any]], bool] = lambda d: True) -> bool:
        return any(k == kind and test(d) for k, d in self.events)

    async def halt(self) -> None:
        if self._recorder is not None:
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
            self._recorder = None
        if self.chat is not None:
            await self.chat.close()
            self.chat = None


class ChatNet:
    """``async with ChatNet(tmp_path) as net: a, b = await net.start(), await net.start()``"""

    def __init__(self, root: Path) -> None:
        self.mesh = MemMesh(root)
        self.relay: Node | None = None
        self.members: list[ChatNode] = []

    async def __aenter__(self) -> ChatNet:
        self.relay = await self.mesh.add()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for member in reversed(self.members):
            await member.halt()
        await self.mesh.close()

    async def plain(self) -> Node:
        """A node with no chat service (a third party writing its own frames)."""
        assert self.relay is not None
        return await self.mesh.add(links=[self.relay])

    async def start(self, **settings: Any) -> ChatNode:
        assert self.relay is not None
        node = await self.mesh.add(links=[self.relay])
        member = ChatNode(self.mesh.index(node), {"port": 5310, **settings})
        await member.run(node)
        self.members.append(member)
        return member

    async def befriend(self, *members: ChatNode) -> None:
        """Each accepts the others (trusted contacts): receipts flow between them (none
        goes to a stranger until accepted)."""
        for one in members:
            for other in members:
                if one is not other:
                    await one.call("chat.accept", contact=other.key.hex())

    async def stop(self, member: ChatNode) -> None:
        """Take the node offline (service closed, node closed)."""
        await member.halt()
        await self.mesh.stop(member.index)

    async def resume(self, member: ChatNode) -> None:
        """The same node back online: same key and databases, a new service."""
        await member.run(await self.mesh.start(member.index))
