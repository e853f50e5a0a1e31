"""Three embedded nodes in a line (A - B - C, B forwards): the node API under load.

1,000 concurrent connections from C to A, half-close in both directions, and flow
control under a slow reader (the sender is held back; memory stays bounded).
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node


async def _listening(node: Node) -> str:
    return str((await node.status())["backend_status"]["listening"][0])


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, Node]]:
    nodes: list[Node] = []
    try:
        a = await Node.open(
            NodeConfig(data_dir=tmp_path / "a", backend="embedded", listen=("tcp://127.0.0.1:0",)),
            Identity.generate(),
        )
        nodes.append(a)
        b = await Node.open(
            NodeConfig(
                data_dir=tmp_path / "b", backend="embedded",
                listen=("tcp://127.0.0.1:0",), peers=(await _listening(a),),
            ),
            Identity.generate(),
        )  # fmt: skip
        nodes.append(b)
        c = await Node.open(
            NodeConfig(data_dir=tmp_path / "c", backend="embedded", peers=(await _listening(b),)),
            Identity.generate(),
        )
        nodes.append(c)
        for _ in range(60):
            if (await c.ping(a.address, count=1, timeout=1))[0] is not None:
                break
        else:
            raise AssertionError("C cannot reach A through B")
        yield a, b, c
    finally:
        for node in reversed(nodes):
            await node.close()


async def test_c_and_a_talk_only_through_b(line: tuple[Node, Node, Node]) -> None:
    _, b, c = line
    c_peers = {p.key for p in await c.peers() if p.up}
    assert c_peers == {b.key}  # C has no link to A: B forwards


async def test_thousand_concurrent_connections_through_a_forwarding_node(
    line: tuple[Node, Node, Node],
) -> None:
    a, _, c = line
    open_now = 0
    most = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            writer.write(await reader.read())  # until the client's FIN
            await writer.drain()
        finally:
            open_now -= 1
            writer.close()

    await a.start_server(echo, 9000)
    conns = await asyncio.gather(*(c.open_connection(a.address, 9000) for _ in range(1000)))
    for i, (_, writer) in enumerate(conns):
        writer.write(f"conn {i}".encode())
    await asyncio.gather(*(w.drain() for _, w in conns))
    assert most >= 1
    for _, writer in conns:
        writer.write_eof()
    replies = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in conns)), 240)
    assert replies == [f"conn {i}".encode() for i in range(1000)]
    for _, writer in conns:
        writer.close()
    assert most > 100  # they really were open at the same time


async def test_half_close_both_ways(line: tuple[Node, Node, Node]) -> None:
    a, _, c = line
    server_got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"server first, then EOF")
        writer.write_eof()  # server half-closes while still reading
        server_got.set_result(await reader.read())
        writer.close()

    await a.start_server(serve, 9001)
    reader, writer = await c.open_connection(a.address, 9001)
    assert await asyncio.wait_for(reader.read(), 30) == b"server first, then EOF"
    writer.write(b"client still sends after the server's FIN")
    writer.write_eof()
    assert await asyncio.wait_for(server_got, 30) == b"client still sends after the server's FIN"
    writer.close()


async def test_slow_reader_holds_the_sender_back(line: tuple[Node, Node, Node]) -> None:
    a, _, c = line
    release = asyncio.Event()
    total = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal total
        await release.wait()  # read nothing until told
        while data := await reader.read(65536):
            total += len(data)
        writer.close()

    await a.start_server(slow, 9002)
    _, writer = await c.open_connection(a.address, 9002)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chunk = b"x" * 65536
    sent = 0

    async def push() -> None:
        nonlocal sent
        while sent < 64 * 1024 * 1024:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()

    pusher = asyncio.create_task(push())
    await asyncio.sleep(3)
    stalled_at = sent
    assert not pusher.done()
    assert stalled_at < 16 * 1024 * 1024  # windows + bounded buffers, not 64 MiB
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 64 * 1024  # memory did not swallow what the reader would not take
    pusher.cancel()
    release.set()
    writer.close()
