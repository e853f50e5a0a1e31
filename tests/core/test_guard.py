"""Mesh services refuse peers outside 200::/7 before the service sees a byte."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from core.guard import GuardProtocol
from core.node import parse_target


async def test_guard_refuses_loopback_peer_before_service_runs() -> None:
    made: list[object] = []

    class Service(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)

    async def resolve(addr: ipaddress.IPv6Address) -> bytes | None:
        return b"k" * 32

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: GuardProtocol(Service, resolve, "test"), "::1", 0, family=socket.AF_INET6
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("::1", port)
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed on us
    writer.close()
    server.close()
    await server.wait_closed()
    assert made == []


def test_parse_target_accepts_address_key_and_mail_address() -> None:
    key = "ab" * 32
    addr = parse_target(key)
    assert parse_target(f"{key}@mesh") == addr
    assert parse_target(f"[{addr}]") == addr


@pytest.mark.parametrize("bad", ["fd00::1", "10.0.0.1", "zz", "x@example.org"])
def test_parse_target_refuses_non_mesh(bad: str) -> None:
    from core.errors import UsageError

    with pytest.raises(UsageError):
        parse_target(bad)
