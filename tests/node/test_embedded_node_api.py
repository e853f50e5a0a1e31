"""The node API on the embedded backend: two in-process nodes over a loopback link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node


async def _pair(tmp_path: Path) -> tuple[Node, Node]:
    ia, ib = Identity.generate(), Identity.generate()
    a = await Node.open(
        NodeConfig(data_dir=tmp_path / "a", backend="embedded", listen=("tcp://127.0.0.1:0",)), ia
    )
    listen = a.backend.status  # noqa: F841 - keep mypy quiet about unused
    bound = (await a.status())["backend_status"]["listening"][0]
    b = await Node.open(NodeConfig(data_dir=tmp_path / "b", backend="embedded", peers=(bound,)), ib)
    return a, b


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a, b = await _pair(tmp_path)
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()


async def _wait_peered(a: Node, b: Node) -> None:
    for _ in range(200):
        if any(p.up for p in await a.peers()) and any(p.up for p in await b.peers()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the nodes did not peer")


async def test_stream_echo_carries_authenticated_peer_key(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _wait_peered(a, b)
    seen: list[object] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peer_key"))
        seen.append(writer.get_extra_info("peername")[0])
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    await a.start_server(echo, 7000)
    reader, writer = await asyncio.wait_for(b.open_connection(a.mail_address.__str__(), 7000), 20)
    writer.write(b"hello mesh")
    assert await asyncio.wait_for(reader.read(), 20) == b"hello mesh"
    assert writer.get_extra_info("peer_key") == a.key
    assert seen == [b.key, str(b.address)]
    writer.close()


async def test_ping_between_embedded_nodes(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _wait_peered(a, b)
    # Like yggdrasil, the first packets to a new destination may be lost while the
    # path lookup runs; once a reply comes back, the path is known and pings flow.
    for _ in range(30):
        if (await b.ping(str(a.address), count=1, timeout=1))[0] is not None:
            break
    rtts = await b.ping(str(a.address), count=3, interval=0.05, timeout=10)
    assert all(r is not None and r > 0 for r in rtts), rtts


async def test_nothing_listening_is_refused(pair: tuple[Node, Node]) -> None:
    """A reachable node with no listener on the port answers with a reset: the caller
    gets ConnectionRefusedError at once (mail's queue reports "cannot connect")."""
    a, b = pair
    await _wait_peered(a, b)
    for _ in range(30):  # the path lookup first, as in the ping test
        if (await b.ping(str(a.address), count=1, timeout=1))[0] is not None:
            break
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(b.open_connection(a.address, 2525), 20)
