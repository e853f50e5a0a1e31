"""Lab building blocks for test modules: module-scoped labs and node helpers.

A test module makes its lab once::

    @pytest.fixture(scope="module")
    def lab() -> Iterator[Lab]:
        yield from two_host_lab("two")

(``require`` fails under CI and skips elsewhere when the lab cannot run.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.identity import Identity
from core.node import Node
from tests.conftest import require
from tests.lab.lab import YGG_05, Daemon, Host, Lab, RootLink, lab_available

__all__ = [
    "LINK_PORT",
    "RootLinked",
    "echo_handler",
    "finish",
    "line_lab",
    "open_node",
    "poll",
    "require_lab",
    "root_linked_daemon",
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


@dataclass(frozen=True)
class RootLinked:
    """A lab host whose daemon listens on its end of a veth to the test process."""

    lab: Lab
    host: Host
    daemon: Daemon
    link: RootLink
    uri: str  # what an in-process node peers with


@contextlib.contextmanager
def root_linked_daemon(name: str, subnet: int, port: int = LINK_PORT) -> Iterator[RootLinked]:
    """Lab ``name`` with host ``a``: its daemon (TUN ``lb-tun``) listens on
    ``tcp://[fd6c:62<subnet>::2]:port``, the host's end of a veth from this process's
    namespace (:meth:`Host.link_root`). Blocks while it starts; all removed on exit."""
    require_lab()
    with Lab(name) as lab:
        host = lab.host("a")
        link = host.link_root(subnet)
        try:
            uri = f"tcp://[{link.host_addr}]:{port}"
            daemon = host.start_daemon(listen=[uri])
            yield RootLinked(lab, host, daemon, link, uri)
        finally:
            link.close()


async def open_node(host: Host, identity: Identity | None = None, **overrides: Any) -> Node:
    """A node in the test process whose sockets live in ``host``'s namespace."""
    return await Node.open(host.node_config(**overrides), identity)


async def poll(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    """Await ``predicate()`` (sync or async) until truthy; return it or raise TimeoutError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


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
