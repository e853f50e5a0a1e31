"""Two hosts on yggdrasil 0.4.7 (its admin replies differ): the same node API works."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.lab.fixtures import echo_handler, finish, open_node, two_host_lab
from tests.lab.lab import YGG_04, Lab

PORT = 4500


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from two_host_lab("v047", YGG_04)


async def test_echo_peer_key_status_and_ping_on_0_4_7(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.daemon and b.daemon
    async with await open_node(a) as na, await open_node(b) as nb:
        await na.start_server(echo_handler, PORT)
        reader, writer = await nb.open_connection(na.address, PORT, timeout=20)
        hello = json.loads(await asyncio.wait_for(reader.readline(), 20))
        assert hello == {"peer": str(nb.address), "peer_key": nb.key.hex()}
        writer.write(b"0.4.7")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"0.4.7"
        await finish(reader, writer)
        status = await na.status()
        assert status["backend_status"]["daemon"]["generation"] == "0.4"
        (peer,) = status["peers"]
        assert peer["key"] == b.daemon.key and peer["up"] is True
        rtts = await nb.ping(na.address, count=2, interval=0.1, timeout=5)
        assert all(r is not None for r in rtts)
