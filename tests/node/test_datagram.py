"""Datagrams carry the authenticated sender, and its key is known, on both backends;
``create_server(port=0)`` reports the port it bound."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.node import Node
from core.testing import mem_mesh

pytestmark = pytest.mark.timeout(60)


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[Any, ...]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queue.put_nowait((data, addr))

    async def next(self, timeout: float = 10) -> tuple[bytes, tuple[Any, ...]]:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def endpoint(node: Node, port: int = 0) -> tuple[asyncio.DatagramTransport, Inbox]:
    transport, protocol = await node.create_datagram_endpoint(Inbox, local_port=port)
    assert isinstance(protocol, Inbox)
    return transport, protocol


async def send_until_received(
    src: asyncio.DatagramTransport, inbox: Inbox, data: bytes, to: tuple[Any, int]
) -> tuple[bytes, tuple[Any, ...]]:
    """Datagrams may be lost: resend (bounded) until one arrives."""
    for _ in range(20):
        src.sendto(data, to)
        try:
            return await inbox.next(0.5)
        except TimeoutError:
            continue
    raise AssertionError(f"no datagram from {src.get_extra_info('sockname')} arrived")


async def check_sender_and_key(a: Node, b: Node) -> None:
    ta, ia = await endpoint(a)
    tb, ib = await endpoint(b, 6010)
    try:
        data, addr = await send_until_received(ta, ib, b"ring", (str(b.address), 6010))
        assert data == b"ring"
        assert ipaddress.IPv6Address(addr[0]) == a.address
        assert addr[1] == ta.get_extra_info("sockname")[1]
        assert await b.key_for_address(addr[0]) == a.key
        # and the answer back carries the callee's address and key
        tb.sendto(b"pong", addr)
        data, back = await ia.next()
        assert data == b"pong" and ipaddress.IPv6Address(back[0]) == b.address
        assert await a.key_for_address(back[0]) == b.key
    finally:
        ta.close()
        tb.close()


async def test_embedded_datagrams_name_the_sender_and_its_key(tmp_path: Path) -> None:
    async with mem_mesh(2, tmp_path) as mesh:
        a, b = mesh
        await check_sender_and_key(a, b)


async def test_embedded_datagrams_through_a_forwarder_name_the_origin(tmp_path: Path) -> None:
    async with mem_mesh(3, tmp_path, topology="chain") as mesh:
        a, b, c = mesh
        await check_sender_and_key(a, c)
        assert await c.key_for_address(a.address) != b.key


async def test_embedded_key_for_an_unseen_address_is_none(tmp_path: Path) -> None:
    async with mem_mesh(1, tmp_path) as mesh:
        assert await mesh[0].key_for_address("200:1234::1") is None
        assert await mesh[0].key_for_address(mesh[0].address) == mesh[0].key


async def serve_port_zero(a: Node, b: Node) -> None:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    first = await b.start_server(hello, 0)
    second = await b.start_server(hello, 0)
    try:
        assert first.port > 0 and second.port > 0 and first.port != second.port
        reader, writer = await a.open_connection(b.address, first.port, timeout=10)
        assert await asyncio.wait_for(reader.readexactly(2), 10) == b"hi"
        writer.close()
    finally:
        first.close()
        second.close()


async def test_embedded_create_server_port_0_reports_the_bound_port(tmp_path: Path) -> None:
    async with mem_mesh(2, tmp_path) as mesh:
        await serve_port_zero(*mesh)


# -- the daemon backend (real yggdrasil in network namespaces) ------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    from tests.lab.fixtures import two_host_lab

    yield from two_host_lab("kndg")


@pytest.mark.lab
async def test_daemon_datagrams_name_the_sender_and_its_key(lab: Any) -> None:
    from tests.lab.fixtures import open_node

    async with await open_node(lab.hosts["a"]) as a, await open_node(lab.hosts["b"]) as b:
        assert a.backend.name == "yggdrasil"
        await check_sender_and_key(a, b)


@pytest.mark.lab
async def test_daemon_create_server_port_0_reports_the_bound_port(lab: Any) -> None:
    from tests.lab.fixtures import open_node

    async with await open_node(lab.hosts["a"]) as a, await open_node(lab.hosts["b"]) as b:
        await serve_port_zero(a, b)
