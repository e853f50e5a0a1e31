"""A public listener under a flood: handshakes are bounded in time, connections in number.

Issue 14: stalled TLS handshakes were held 60 s and never freed (asyncio never calls
``connection_lost`` for a protocol whose TLS handshake did not finish), and the
``max_links`` refusal aborted a transport that was not set yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.backends.embedded import EmbeddedBackend
from core.config import load_config
from core.embedded import NetworkConfig, PacketNetwork
from core.errors import UsageError
from core.identity import load_or_create_identity

pytestmark = pytest.mark.timeout(60)

BOUND = 1.0  # handshake_timeout for these tests (the default is yggdrasil-go's 6 s)


def _hostport(uri: str) -> tuple[str, int]:
    host, port = uri.split("://", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


@contextlib.asynccontextmanager
async def _network(uri: str, **config: float) -> AsyncIterator[tuple[PacketNetwork, str]]:
    net = PacketNetwork(os.urandom(32), config=NetworkConfig(**config))  # type: ignore[arg-type]
    await net.start()
    try:
        yield net, await net.listen(uri)
    finally:
        await net.close()


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Read until EOF or ``limit``; (seconds it took, the bytes received)."""
    start = time.monotonic()
    got = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                got += chunk
    return time.monotonic() - start, got


async def _eventually(check: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_stalled_tls_handshakes_are_closed_within_the_bound_and_freed() -> None:
    async with _network("tls://[::1]:0", handshake_timeout=BOUND, max_links_per_source=100) as (
        net,
        uri,
    ):
        conns = [await asyncio.open_connection(*_hostport(uri)) for _ in range(40)]
        await _eventually(lambda: net.inbound_open == 40)
        held = await asyncio.gather(*(_until_closed(r, BOUND + 5) for r, _w in conns))
        for _reader, writer in conns:
            writer.close()
        assert max(t for t, _ in held) < BOUND + 1.0, held
        assert all(got == b"" for _, got in held)  # nothing sent to a silent peer
        await _eventually(lambda: net.pending_count == 0 and net.inbound_open == 0)


async def test_tls_peer_that_never_sends_meta_is_closed_within_the_bound() -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    async with _network("tls://[::1]:0", handshake_timeout=BOUND, max_links_per_source=100) as (
        net,
        uri,
    ):
        reader, writer = await asyncio.open_connection(*_hostport(uri), ssl=client)
        held, got = await _until_closed(reader, BOUND + 5)
        writer.transport.abort()
        assert held < BOUND + 1.0
        assert got.startswith(b"meta")  # the TLS part worked: we sent our handshake
        await _eventually(lambda: net.pending_count == 0 and net.inbound_open == 0)


async def test_garbage_and_resets_during_tls_leave_nothing_pending() -> None:
    async with _network("tls://[::1]:0", handshake_timeout=BOUND, max_links_per_source=100) as (
        net,
        uri,
    ):
        for i in range(30):
            reader, writer = await asyncio.open_connection(*_hostport(uri))
            if i % 2:
                writer.write(os.urandom(300))  # not a ClientHello
                await _until_closed(reader, BOUND + 5)
            writer.transport.abort()
        await _eventually(lambda: net.pending_count == 0 and net.inbound_open == 0)


async def test_inbound_cap_refuses_beyond_max_links_before_any_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="core.embedded")
    async with _network("tcp://[::1]:0", max_links=5, handshake_timeout=10.0) as (net, uri):
        conns = [await asyncio.open_connection(*_hostport(uri)) for _ in range(12)]
        first = [await asyncio.wait_for(r.read(4), 3) for r, _ in conns[:5]]
        assert first == [b"meta"] * 5  # accepted ones get our handshake
        refused = await asyncio.gather(*(_until_closed(r, 3) for r, _ in conns[5:]))
        assert all(got == b"" for _, got in refused)  # refused ones get nothing, at once
        assert net.inbound_open == 5
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]  # once per interval
        for _r, writer in conns:
            writer.close()
        await _eventually(lambda: net.inbound_open == 0)
        # the slots are free again: a real node links
        async with _network("tcp://[::1]:0") as (other, _):
            await other.add_peer(uri)
            await _eventually(lambda: any(p.up for p in net.peers()), 5)


async def test_inbound_cap_per_source_address() -> None:
    async with _network(
        "tcp://[::1]:0", max_links=50, max_links_per_source=3, handshake_timeout=10.0
    ) as (net, uri):
        conns = [await asyncio.open_connection(*_hostport(uri)) for _ in range(6)]
        got = [await _until_closed(r, 0.5) for r, _ in conns]
        assert [data[:4] for _, data in got] == [b"meta"] * 3 + [b""] * 3
        assert net.inbound_open == 3
        for _r, writer in conns:
            writer.close()


def test_listener_limits_come_from_mesh_toml(tmp_path: Path) -> None:
    (tmp_path / "mesh.toml").write_text(
        "[embedded]\nhandshake_timeout = 2.5\nmax_links = 100\nmax_links_per_source = 4\n"
    )
    identity, _ = load_or_create_identity(tmp_path)
    backend = EmbeddedBackend(load_config(tmp_path), identity)
    net = backend.ygg.network
    assert isinstance(net, PacketNetwork)
    assert (net.config.handshake_timeout, net.config.max_links) == (2.5, 100)
    assert net.config.max_links_per_source == 4
    assert NetworkConfig().handshake_timeout == 6.0  # the default is yggdrasil-go's


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("max_link = 3", "unknown keys max_link"),
        ("max_links = 0", "at least 1"),
        ("max_links = 2.5", "whole number"),
        ('handshake_timeout = "6s"', "must be a number"),
        ("handshake_timeout = 0", "positive"),
    ],
)
def test_bad_listener_limits_in_mesh_toml_say_what_is_wrong(
    tmp_path: Path, table: str, error: str
) -> None:
    (tmp_path / "mesh.toml").write_text(f"[embedded]\n{table}\n")
    identity, _ = load_or_create_identity(tmp_path)
    with pytest.raises(UsageError, match=error):
        EmbeddedBackend(load_config(tmp_path), identity)
