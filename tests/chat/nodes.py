"""Real embedded nodes in this process for the chat tests, each running the chat service.

A relay node listens on loopback; every chat node peers with it, so two chat nodes talk
through a forwarding node and one can close (go offline) while the other stays up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apps.chat.config import ChatConfig
from apps.chat.service import ChatService
from core.config import NodeConfig
from core.events import Subscription
from core.identity import Identity
from core.node import Node
from tests.lab.fixtures import poll

__all__ = ["ChatNet", "ChatNode", "settle"]


async def settle(what: str, predicate: Any, timeout: float = 20.0) -> Any:
    try:
        return await poll(predicate, timeout, 0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: still not so after {timeout} s") from None


async def _route(src: Node, dst: Node) -> None:
    for _ in range(60):
        if (await src.ping(str(dst.address), count=1, timeout=1))[0] is not None:
            return
    raise AssertionError(f"{dst.address} never answered {src.address}")


class ChatNode:
    """One node + its chat service (+ the events it published, recorded)."""

    def __init__(self, node: Node, service: ChatService) -> None:
        self.node, self.chat = node, service
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._sub: Subscription | None = None
        self._recorder: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def key(self) -> bytes:
        return self.node.key

    def call(self, method: str, **params: Any) -> Any:
        return self.chat.control_methods()[method](params)

    async def record(self) -> None:
        self._recorder = asyncio.ensure_future(self._record())
        await self._ready.wait()

    async def _record(self) -> None:
        async with self.node.events.subscribe(("chat.",)) as sub:
            self._ready.set()
            async for event in sub:
                self.events.append((event.kind, event.data))

    def seen(self, kind: str, test: Callable[[dict[str, Any]], bool] = lambda d: True) -> bool:
        return any(k == kind and test(d) for k, d in self.events)

    async def close(self) -> None:
        if self._recorder is not None:
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
        await self.chat.close()
        await self.node.close()


class ChatNet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.relay: Node | None = None
        self.members: list[ChatNode] = []
        self.uri = ""

    async def __aenter__(self) -> ChatNet:
        config = NodeConfig(
            data_dir=self.root / "relay", backend="embedded", listen=("tcp://127.0.0.1:0",)
        )
        self.relay = await Node.open(config, Identity.generate())
        self.uri = (await self.relay.status())["backend_status"]["listening"][0]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for member in reversed(self.members):
            await member.close()
        if self.relay is not None:
            await self.relay.close()

    async def start(self, name: str, identity: Identity | None = None, **settings: Any) -> ChatNode:
        assert self.relay is not None
        data = self.root / name
        config = NodeConfig(data_dir=data, backend="embedded", peers=(self.uri,))
        node = await Node.open(config, identity or Identity.generate())
        chat = ChatService(node, ChatConfig(port=5310, **settings), data)
        await chat.start()
        member = ChatNode(node, chat)
        await member.record()
        self.members.append(member)
        await _route(node, self.relay)
        await _route(self.relay, node)
        return member

    async def stop(self, member: ChatNode) -> None:
        self.members.remove(member)
        await member.close()

    async def linked(self, *members: ChatNode) -> None:
        for a in members:
            for b in members:
                if a is not b:
                    await _route(a.node, b.node)
