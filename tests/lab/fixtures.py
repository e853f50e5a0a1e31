"""Lab building blocks for test modules: module-scoped labs and node helpers.

A test module makes its lab once::

    @pytest.fixture(scope="module")
    def lab() -> Iterator[Lab]:
        yield from two_host_lab("two")

(``require`` fails under CI and skips elsewhere when the lab cannot run.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

from core.identity import Identity
from core.node import Node
from tests.conftest import require
from tests.lab.lab import YGG_05, Host, Lab, lab_available

__all__ = [
    "LINK_PORT",
    "echo_handler",
    "finish",
    "line_lab",
    "open_node",
    "require_lab",
    "two_host_lab",
]

LINK_PORT = 7001


def require_lab(binary: str = YGG_05) -> None:
    ok, why = lab_available(binary)
    require(ok, why)


def two_host_lab(name: str, binary: str = YGG_05) -> Iterator[Lab]:
    """Hosts a and b on one veth link; a listens, b dials; both daemons peered."""
    require_lab(binary)
    with Lab(name) as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b)
        da = a.start_daemon(listen=[a.listen_uri(b, LINK_PORT)], binary=binary)
        db = b.start_daemon(peers=[a.peer_uri(b, LINK_PORT)], binary=binary)
        lab.wait_peered(da, db)
        yield lab


def line_lab(name: str, binary: str = YGG_05) -> Iterator[Lab]:
    """A - B - C in a line. A and B listen; C has no listener and only dials B,
    so C is hidden (nothing can dial it), and A reaches C only through B."""
    require_lab(binary)
    with Lab(name) as lab:
        a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
        lab.link(a, b)
        lab.link(b, c)
        da = a.start_daemon(listen=[a.listen_uri(b, LINK_PORT)], binary=binary)
        db = b.start_daemon(
            listen=[b.listen_uri(c, LINK_PORT)], peers=[a.peer_uri(b, LINK_PORT)], binary=binary
        )
        dc = c.start_daemon(peers=[b.peer_uri(c, LINK_PORT)], binary=binary)
        lab.wait_peered(da, dc)
        lab.wait_peered(db, count=2)
        lab.wait_reachable(a, dc.address)
        yield lab


async def open_node(host: Host, identity: Identity | None = None, **overrides: Any) -> Node:
    """A node in the test process whose sockets live in ``host``'s namespace."""
    return await Node.open(host.node_config(**overrides), identity)


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Says who the peer is (address and key as the node saw them), then echoes."""
    peer = writer.get_extra_info("peername")
    key = writer.get_extra_info("peer_key")
    hello = {"peer": peer[0] if peer else None, "peer_key": key.hex() if key else None}
    writer.write(json.dumps(hello).encode() + b"\n")
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, wait until the echo service closed its side (its handler is done:
    nothing is left running when the test's loop ends), then close."""
    writer.write_eof()
    while await asyncio.wait_for(reader.read(65536), 20):
        pass
    writer.close()
    await writer.wait_closed()
