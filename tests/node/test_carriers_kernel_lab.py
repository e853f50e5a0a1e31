"""quic:// and ws:// between the embedded node and a real yggdrasil 0.5.12 daemon, both
ways, with a ping and a kernel TCP stream across the link.

Lab: host ``a`` is a network namespace running the daemon with a TUN, listening on
quic:// and ws:// on its end of a veth to this (root) namespace, where the embedded
node runs in-process. "embedded dials": the node peers with the daemon's listener;
"daemon dials": the node listens and the daemon's ``addPeer`` dials it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.lab.fixtures import require_lab
from tests.lab.lab import Daemon, Host, Lab, LabError, free_port

pytestmark = pytest.mark.lab

QUIC_PORT = 7011
WS_PORT = 7012


@dataclass
class CLab:
    lab: Lab
    host: Host
    daemon: Daemon
    daemon_side: str  # the daemon's end of the veth
    our_side: str  # ours


@pytest.fixture(scope="module")
def clab() -> Iterator[CLab]:
    require_lab()
    with Lab("cq") as lab:
        a = lab.host("a")
        root = a.link_root(0xC2)
        daemon = a.start_daemon(
            listen=[f"quic://[{root.host_addr}]:{QUIC_PORT}", f"ws://[{root.host_addr}]:{WS_PORT}"]
        )
        try:
            yield CLab(lab, a, daemon, root.host_addr, root.root_addr)
        finally:
            root.close()


@pytest.fixture(params=["quic-embedded", "quic-daemon", "ws-embedded", "ws-daemon"])
async def linked(
    request: pytest.FixtureRequest, clab: CLab, tmp_path: Path
) -> AsyncIterator[tuple[Node, str]]:
    """An embedded node linked with the daemon over one scheme, dialled by one side."""
    scheme, dialler = str(request.param).split("-")
    port = {"quic": QUIC_PORT, "ws": WS_PORT}[scheme]
    if dialler == "embedded":
        config = NodeConfig(
            data_dir=tmp_path,
            backend="embedded",
            peers=(f"{scheme}://[{clab.daemon_side}]:{port}",),
        )
    else:
        listen = f"{scheme}://[{clab.our_side}]:{free_port()}"
        config = NodeConfig(data_dir=tmp_path, backend="embedded", listen=(listen,))
    node = await Node.open(config, Identity.generate())
    uri = ""
    try:
        if dialler == "daemon":
            uri = config.listen[0]
            with contextlib.suppress(LabError):  # it answers {} on success
                await clab.daemon.actl("addPeer", uri=uri)
        for _ in range(200):
            if any(p.up for p in await node.peers()):
                break
            await asyncio.sleep(0.05)
        [peer] = [p for p in await node.peers() if p.up]
        assert peer.uri.startswith(f"{scheme}://") and peer.inbound == (dialler == "daemon")
        yield node, dialler
    finally:
        await node.close()
        if uri:
            with contextlib.suppress(LabError):  # it answers {} on success
                await clab.daemon.actl("removePeer", uri=uri)


async def _ping_until_answered(node: Node, address: object) -> float:
    for _ in range(40):  # the first probes may wait for the path lookup
        [rtt] = await node.ping(address, count=1, timeout=1)  # type: ignore[arg-type]
        if rtt is not None:
            return rtt
    raise AssertionError("no ping reply across the link")


async def test_ping_and_a_kernel_tcp_stream_cross_the_link(
    clab: CLab, linked: tuple[Node, str]
) -> None:
    node, _dialler = linked
    await _ping_until_answered(node, clab.daemon.address)
    listener = clab.host.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind((str(clab.daemon.address), 0))
    listener.listen(4)
    listener.setblocking(False)
    payload = bytes(range(256)) * 1024  # 256 KiB: many link frames each way

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.read())
        await w.drain()
        w.close()

    server = await asyncio.start_server(echo, sock=listener)
    try:
        reader, writer = await node.open_connection(clab.daemon.address, listener.getsockname()[1])
        assert writer.get_extra_info("peer_key") == bytes.fromhex(clab.daemon.key)
        writer.write(payload)
        writer.write_eof()
        async with asyncio.timeout(60):
            assert await reader.read() == payload
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
