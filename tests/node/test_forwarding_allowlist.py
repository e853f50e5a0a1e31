"""Exposed ports serve only the keys in the allowlist (checked against peer_key)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.config import NodeConfig
from core.forwarding import Expose, ForwardingConfig, ForwardingService
from core.identity import Identity
from core.node import Node


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"local says: " + await r.read(100))
        await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _exchange(b: Node, a: Node, port: int) -> bytes:
    for _ in range(40):  # the first packets may wait for the path lookup
        try:
            reader, writer = await asyncio.wait_for(b.open_connection(a.address, port), 5)
        except (TimeoutError, OSError):
            continue
        writer.write(b"hi")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data
    raise AssertionError("no connection")


async def test_allowlist_admits_listed_key_and_refuses_others(tmp_path: Path) -> None:
    local, local_port = await _echo_server()
    ia, ib = Identity.generate(), Identity.generate()
    a = await Node.open(
        NodeConfig(data_dir=tmp_path / "a", backend="embedded", listen=("tcp://127.0.0.1:0",)), ia
    )
    listen = (await a.status())["backend_status"]["listening"][0]
    b = await Node.open(
        NodeConfig(data_dir=tmp_path / "b", backend="embedded", peers=(listen,)), ib
    )
    stranger = Identity.generate().public_key
    only_stranger = ForwardingService(
        a,
        ForwardingConfig(expose=(Expose(local_port, 2200),), allow=frozenset({stranger})),
        tmp_path / "a",
    )
    only_b = ForwardingService(
        a,
        ForwardingConfig(expose=(Expose(local_port, 2201),), allow=frozenset({ib.public_key})),
        tmp_path / "a",
    )
    try:
        await only_stranger.start()
        await only_b.start()
        assert await _exchange(b, a, 2201) == b"local says: hi"
        assert await _exchange(b, a, 2200) == b""  # closed without reaching the local port
    finally:
        await only_b.close()
        await only_stranger.close()
        await b.close()
        await a.close()
        local.close()
        await local.wait_closed()
