"""The SOCKS5 proxy: RFC 1928/1929 with real clients, mesh destinations only."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.address import address_for_key
from core.socks import SocksError, SocksParser, SocksProxy, resolve_mesh_host
from tests.conftest import require

KEY = bytes(range(32))
MESH = address_for_key(KEY)


def test_resolves_key_and_address_host_names() -> None:
    assert resolve_mesh_host(f"{KEY.hex()}.mesh") == MESH
    assert resolve_mesh_host(str(MESH)) == MESH
    assert resolve_mesh_host(f"[{MESH}]") == MESH
    assert resolve_mesh_host(str(MESH).replace(":", "-") + ".mesh") == MESH
    assert resolve_mesh_host("example.org") is None
    assert resolve_mesh_host("fd00::1") is None


def test_parser_walks_greeting_auth_request() -> None:
    p = SocksParser()
    out, ev = p.feed(b"\x05\x01\x02")
    assert out == b"\x05\x02" and ev is None
    out, ev = p.feed(b"\x01\x04mesh\x03pwd")
    assert ev == ("auth", "mesh", "pwd")
    host = f"{KEY.hex()}.mesh".encode()
    _, ev = p.feed(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack("!H", 22))
    assert ev is not None and ev[0] == "request"
    assert ev[1].host == host.decode() and ev[1].port == 22  # type: ignore[attr-defined]


def test_parser_refuses_no_auth_clients() -> None:
    out, ev = SocksParser().feed(b"\x05\x01\x00")
    assert out == b"\x05\xff" and ev == ("no-auth",)


def test_parser_refuses_ipv4_and_bind() -> None:
    p = SocksParser()
    p.feed(b"\x05\x01\x02\x01\x01u\x01p")
    with pytest.raises(SocksError, match="IPv4"):
        p.feed(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x16")
    p = SocksParser()
    p.feed(b"\x05\x01\x02\x01\x01u\x01p")
    with pytest.raises(SocksError, match="CONNECT"):
        p.feed(b"\x05\x02\x00\x04" + bytes(18))


@given(st.binary(max_size=2000))
def test_parser_never_crashes_on_garbage(data: bytes) -> None:
    p = SocksParser()
    try:
        for i in range(0, len(data), 7):
            p.feed(data[i : i + 7])
    except (SocksError, UnicodeDecodeError):
        pass


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[SocksProxy, int, list[Any]]]:
    """A proxy whose dialer reaches a real HTTP-ish server on loopback for MESH only."""
    dialed: list[Any] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await w.drain()
        w.close()

    target = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]

    async def dial(addr: ipaddress.IPv6Address, p: int) -> Any:
        dialed.append((addr, p))
        if addr != MESH:
            raise ConnectionRefusedError
        return await asyncio.open_connection("127.0.0.1", port)

    px = SocksProxy(dial, "mesh", "s3cret")
    _, bound = await px.start("127.0.0.1", 0)
    yield px, bound, dialed
    await px.close()
    target.close()
    await target.wait_closed()


async def _curl(*args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "--max-time", "10", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out


async def test_curl_reaches_a_mesh_host_by_key_name(proxy: Any) -> None:
    require(shutil.which("curl") is not None, "curl is not installed")
    _, port, dialed = proxy
    rc, out = await _curl(
        "--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", "mesh:s3cret",
        f"http://{KEY.hex()}.mesh:8080/",
    )  # fmt: skip
    assert rc == 0 and out == b"hello"
    assert dialed == [(MESH, 8080)]


async def test_wrong_password_is_refused(proxy: Any) -> None:
    require(shutil.which("curl") is not None, "curl is not installed")
    _, port, dialed = proxy
    rc, _ = await _curl(
        "--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", "mesh:wrong",
        f"http://{KEY.hex()}.mesh:8080/",
    )  # fmt: skip
    assert rc != 0 and dialed == []


async def test_non_mesh_destination_is_not_allowed(proxy: Any) -> None:
    _, port, dialed = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01\x02\x01\x04mesh\x06s3cret")
    writer.write(b"\x05\x01\x00\x03\x0bexample.org\x00\x50")
    assert await reader.readexactly(2) == b"\x05\x02"
    assert await reader.readexactly(2) == b"\x01\x00"
    rep = await reader.readexactly(22)
    assert rep[1] == 0x02  # connection not allowed by ruleset
    assert dialed == []
    writer.close()
