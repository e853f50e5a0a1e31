"""Helpers shared by the carrier tests: embedded networks, bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable

from core.embedded import NetworkConfig, PacketNetwork


def hostport(uri: str) -> tuple[str, int]:
    """``scheme://[host]:port[/path]`` → (host, port)."""
    host, port = uri.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host.strip("[]"), int(port)


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Until ``check()`` is true, polling every 20 ms; AssertionError after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@contextlib.asynccontextmanager
async def nets(count: int, **config: float) -> AsyncIterator[list[PacketNetwork]]:
    """``count`` started networks with ``config`` (closed on exit)."""
    made = [
        PacketNetwork(os.urandom(32), config=NetworkConfig(**config))  # type: ignore[arg-type]
        for _ in range(count)
    ]
    for net in made:
        await net.start()
    try:
        yield made
    finally:
        for net in made:
            await net.close()


def up(net: PacketNetwork) -> list[bytes]:
    """The keys ``net`` has a link up with."""
    return [p.key for p in net.peers() if p.up and p.key is not None]
