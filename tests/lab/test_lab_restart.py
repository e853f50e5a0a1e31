"""A daemon killed and restarted mid-test (attach mode): the node notices, finds the new
TUN, rebinds its services, and a peer reaches them again."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator

import pytest

from core.events import Subscription
from tests.lab.fixtures import echo_handler, finish, open_node, two_host_lab
from tests.lab.lab import Lab

PORT = 4400


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from two_host_lab("rst")


async def _wait_for(events: Subscription, kind: str, timeout: float = 30) -> list[str]:
    seen: list[str] = []

    async def run() -> None:
        while kind not in seen:
            event = await events.get()
            assert event is not None
            seen.append(event.kind)

    await asyncio.wait_for(run(), timeout)
    return seen


async def test_attached_node_recovers_from_a_daemon_restart(lab: Lab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert a.daemon and b.daemon
    async with (
        await open_node(a) as na,
        await open_node(b) as nb,
        na.events.subscribe() as events,
    ):
        await na.start_server(echo_handler, PORT)
        tun_before = na.backend.tun_name, na.backend._tun.ifindex  # type: ignore[attr-defined]

        async def roundtrip() -> dict[str, str]:
            reader, writer = await nb.open_connection(na.address, PORT, timeout=20)
            hello = json.loads(await asyncio.wait_for(reader.readline(), 20))
            await finish(reader, writer)
            assert isinstance(hello, dict)
            return hello

        assert (await roundtrip())["peer_key"] == nb.key.hex()
        a.daemon.stop(signal.SIGKILL)
        assert "daemon.unreachable" in await _wait_for(events, "daemon.unreachable")
        a.daemon.start()  # same config: same key, a new TUN
        await _wait_for(events, "daemon.reachable")
        tun_after = na.backend.tun_name, na.backend._tun.ifindex  # type: ignore[attr-defined]
        assert tun_after[0] == tun_before[0] and tun_after[1] != tun_before[1]
        lab.wait_peered(a.daemon, b.daemon)
        assert (await roundtrip())["peer_key"] == nb.key.hex()
