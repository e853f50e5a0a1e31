"""The public surface is what it claims, and the asyncio objects are the standard
library's kinds (so any asyncio protocol accepts them)."""

from __future__ import annotations

import asyncio
import types

import pytest

import core.netstack as netstack
from tests.netstack._link import B_ADDR, stack_pair


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(netstack).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - {"annotations"}
    assert set(netstack.__all__) == public
    for name in netstack.__all__:
        assert getattr(netstack, name) is not None


async def test_transport_and_server_are_asyncio_kinds() -> None:
    a, b = stack_pair()
    async with a, b:
        server = await b.create_server(asyncio.Protocol, 0)
        assert isinstance(server, asyncio.AbstractServer) and server.port >= 49152
        transport, protocol = await a.create_connection(asyncio.Protocol, B_ADDR, server.port)
        assert isinstance(transport, asyncio.Transport)
        assert transport.get_protocol() is protocol
        assert transport.can_write_eof() and not transport.is_closing()
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        transport.close()
        assert transport.is_closing()
        transport.write(b"after close is ignored, as with asyncio")
        dt, _ = await a.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(None, 0))
        assert isinstance(dt, asyncio.DatagramTransport)
        dt.close()
        server.close()
        await server.wait_closed()
        assert not server.is_serving()


async def test_serve_forever_until_closed() -> None:
    a, b = stack_pair()
    async with a, b:
        server = await b.create_server(asyncio.Protocol, 8443, start_serving=False)
        assert not server.is_serving()
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        _, w = await a.open_connection(B_ADDR, 8443)
        w.close()
        server.close()
        await server.wait_closed()
        await asyncio.gather(task, return_exceptions=True)
        assert task.done() and not server.is_serving()
        other = await b.create_server(asyncio.Protocol, 8444)
        assert other.is_serving()
    assert not other.is_serving()  # the stack closed under it


async def test_connect_timeout_cancels_cleanly() -> None:
    a, b = stack_pair()
    b.close()  # a black hole: SYNs go unanswered
    async with a:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.open_connection(B_ADDR, 80), 0.05)
        await asyncio.sleep(0.01)
        assert a.connection_count == 0  # the half-open connection was aborted
