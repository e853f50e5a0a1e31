"""EmbeddedYggdrasil against a REAL yggdrasil 0.5.12 daemon with a TUN in a namespace.

The daemon runs in a lab host (its own network namespace, :mod:`tests.lab.lab`) with a
TUN and listens on its end of a veth to the root namespace (:meth:`Host.link_root`); our
node runs in the test process and peers with it over that veth. The
kernel in the namespace then pings our node (``ping -6``) and answers our pings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from core.address import address_for_key
from core.embedded import ipv6 as v6
from core.embedded.node import EmbeddedYggdrasil
from core.embedded.proto import split_keys
from core.identity import Identity
from tests.lab.fixtures import poll, root_linked_daemon
from tests.lab.lab import Daemon, Host

pytestmark = pytest.mark.lab
PORT = 14700


@dataclass
class Setup:
    host: Host
    daemon: Daemon
    node: EmbeddedYggdrasil

    @property
    def daemon_address(self) -> ipaddress.IPv6Address:
        return address_for_key(self.daemon.public_key)

    async def run(self, *cmd: str, check: bool = True) -> str:
        """A command in the daemon's host, off the event loop; its output."""
        done = await self.host.arun(*cmd, check=check)
        return done.stdout + done.stderr


async def peered(node: EmbeddedYggdrasil, key: bytes) -> bool:
    return any(p.up and p.key == key for p in node.peers())


async def ask_until(daemon: Daemon, command: str, key: bytes, timeout: float = 30) -> object:
    """A daemon admin request about ``key``, repeated while routing converges."""

    async def attempt() -> object:
        try:
            return await daemon.actl(command, key=key.hex())
        except RuntimeError:
            return None

    return await poll(attempt, timeout)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    with root_linked_daemon("e2nd", 0xE2, PORT) as lab:
        node = EmbeddedYggdrasil(Identity.generate().seed)
        await node.start()
        try:
            await node.add_peer(lab.uri)
            await poll(lambda: peered(node, lab.daemon.public_key), 15)
            yield Setup(lab.host, lab.daemon, node)
        finally:
            await node.close()


async def test_kernel_ping_from_daemon_namespace_gets_replies(setup: Setup) -> None:
    target = str(setup.node.address)

    async def replies() -> bool:
        out = await setup.run("ping", "-6", "-c", "3", "-i", "0.3", "-W", "2", target, check=False)
        return " 0% packet loss" in out

    await poll(replies, 40, interval=0.5)
    out = await setup.run("ping", "-6", "-c", "3", "-i", "0.3", "-W", "3", target)
    assert "3 received" in out, out
    rtts = [float(m) for m in re.findall(r"time=([0-9.]+) ms", out)]
    assert len(rtts) == 3
    # Bigger than the minimum MTU, still one session packet each way (no fragments).
    big = await setup.run("ping", "-6", "-c", "2", "-i", "0.3", "-s", "8000", "-W", "3", target)
    assert "2 received" in big, big
    # The daemon's session is with our key, and it maps our address to it.
    sessions = (await setup.daemon.actl("getSessions"))["sessions"]
    assert any(s["key"] == setup.node.public_key.hex() for s in sessions)


async def test_embedded_ping_gets_daemon_kernel_replies(setup: Setup) -> None:
    async def answered() -> bool:
        return (await setup.node.ping(setup.daemon_address, 1, 0.1, 2.0))[0] is not None

    await poll(answered, 40, interval=0.2)
    rtts = await setup.node.ping(setup.daemon_address, count=3, interval=0.2, timeout=3.0)
    assert all(r is not None and 0 < r < 3.0 for r in rtts), rtts
    assert setup.node.key_for_address(setup.daemon_address) == setup.daemon.public_key
    assert any(s.key == setup.daemon.public_key for s in setup.node.sessions())


async def test_proto_answers_for_daemon_admin_requests(setup: Setup) -> None:
    key = setup.node.public_key
    address = str(setup.node.address)
    info = await ask_until(setup.daemon, "getNodeInfo", key)
    assert isinstance(info, dict) and info[key.hex()]["buildname"] == "meshsuite"
    got_self = await ask_until(setup.daemon, "debug_remoteGetSelf", key)
    assert isinstance(got_self, dict) and got_self[address]["key"] == key.hex()
    assert int(got_self[address]["routing_entries"]) >= 2  # us and the daemon
    peers = await ask_until(setup.daemon, "debug_remoteGetPeers", key)
    assert isinstance(peers, dict)
    assert peers[address]["keys"] == [setup.daemon.public_key.hex()]
    tree = await ask_until(setup.daemon, "debug_remoteGetTree", key)
    assert isinstance(tree, dict)
    assert setup.daemon.public_key.hex() in tree[address]["keys"]
    # And the other way: we ask the daemon.
    d_key = setup.daemon.public_key

    async def their_nodeinfo() -> object:
        try:
            return await setup.node.remote_nodeinfo(d_key, timeout=3.0)
        except TimeoutError:
            return None

    theirs = await poll(their_nodeinfo, 30)
    assert theirs["buildname"] == "yggdrasil" and theirs["buildversion"] == "0.5.12"
    assert split_keys(await setup.node.request_remote("peers", d_key)) == [key]


async def test_udp_from_daemon_kernel_reaches_ipv6_handler(setup: Setup) -> None:
    """A kernel UDP datagram arrives source-checked; a spoofed reply is refused locally."""
    received: list[bytes] = []
    setup.node.set_ipv6_handler(received.append)
    target = str(setup.node.address)
    script = (
        "import socket,sys; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM);"
        f"s.sendto(b'hello-e2', ('{target}', 9999))"
    )

    async def got() -> bool:
        await setup.run("python3", "-c", script)
        await asyncio.sleep(0.2)
        return any(p[6] == 17 and p.endswith(b"hello-e2") for p in received)

    await poll(got, 40, interval=0.3)
    packet = next(p for p in received if p.endswith(b"hello-e2"))
    assert packet[8:24] == setup.daemon_address.packed
    assert packet[24:40] == setup.node.address.packed
    spoofed = bytearray(packet)
    spoofed[8:24], spoofed[24:40] = setup.daemon_address.packed, setup.daemon_address.packed
    with pytest.raises(ValueError, match="source"):
        setup.node.send_ipv6(bytes(spoofed))
    assert v6.IPv6Header.parse(packet).payload_length == 8 + len(b"hello-e2")
