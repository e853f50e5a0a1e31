"""Three hosts in a line, A - B - C: A and C are not linked and reach each other only
through B; C is hidden (it only dials out to B, nothing can dial it), yet A reaches a
service on C's mesh address. C's node runs as its own process inside C."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.lab.fixtures import LINK_PORT, finish, line_lab, open_node
from tests.lab.lab import Lab, NodeProcess

PORT = 4300


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from line_lab("line")


@pytest.fixture(scope="module")
def c_service(lab: Lab) -> Iterator[NodeProcess]:
    c = lab.hosts["c"]
    assert c.daemon
    node = c.node_process("--admin", c.daemon.admin, "--echo", str(PORT))
    yield node
    node.stop()


def test_topology_is_a_line_with_a_hidden_end(lab: Lab) -> None:
    a, b, c = (lab.hosts[n] for n in "abc")
    assert a.daemon and b.daemon and c.daemon
    assert {p["key"] for p in a.daemon.peers_up()} == {b.daemon.key}
    assert {p["key"] for p in c.daemon.peers_up()} == {b.daemon.key}
    (c_seen_by_b,) = [p for p in b.daemon.peers_up() if p["key"] == c.daemon.key]
    assert c_seen_by_b["inbound"] is True  # C dialled B
    listening = c.run("ss", "-Hltn").stdout
    assert f":{LINK_PORT}" not in listening and listening.strip() == ""  # nothing to dial on C
    assert "c" not in a.links  # no link between A and C


async def test_a_reaches_a_service_on_hidden_c_through_b(lab: Lab, c_service: NodeProcess) -> None:
    a, c = lab.hosts["a"], lab.hosts["c"]
    assert c.daemon
    assert c_service.info["key"] == c.daemon.key
    async with await open_node(a) as na:
        reader, writer = await na.open_connection(f"{c.daemon.key}@mesh", PORT, timeout=20)
        hello = json.loads(await asyncio.wait_for(reader.readline(), 20))
        assert hello == {"peer": str(na.address), "peer_key": na.key.hex()}
        assert writer.get_extra_info("peer_key").hex() == c.daemon.key
        writer.write(b"x" * 100_000)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(100_000), 20) == b"x" * 100_000
        await finish(reader, writer)
        rtts = await na.ping(c.daemon.address, count=2, interval=0.1, timeout=5)
        assert all(r is not None for r in rtts)


async def test_session_keys_are_learnt_from_the_daemon(lab: Lab, c_service: NodeProcess) -> None:
    """The address→key mapping comes from getSessions: after traffic, C's node knows A."""
    a, c = lab.hosts["a"], lab.hosts["c"]
    assert a.daemon and c.daemon
    async with await open_node(c) as nc:
        rtts = await nc.ping(a.daemon.address, count=1, timeout=5)
        assert rtts[0] is not None
        assert (await nc.key_for_address(a.daemon.address)) == bytes.fromhex(a.daemon.key)
        status = await nc.status()
        sessions = {s["key"] for s in status["backend_status"]["sessions"]}
        assert a.daemon.key in sessions
